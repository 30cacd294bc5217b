import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import { createServer, connect, type Server, type Socket } from 'node:net'
import { once } from 'node:events'
import { redisAdapter } from '../src/index.js'
import { startApp, type Started } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { clientsNamed, monitorRedis, skipRedis, startRedis } from './helpers/redis.js'
import { childInstance } from './helpers/child-instance.js'

type Frame = Record<string, any>
const ids = (members: Array<{ id: string }>): string[] => members.map((m) => m.id)
const presences = (socket: TestSocket): Frame[] => socket.frames.filter((f) => f.type === 'presence')

/**
 * Redis refusing writes for a while (`min-replicas-to-write` with its replica
 * gone; also a failed save, `maxmemory`) refused a leave with an error that is
 * not a lost connection: the leave was dropped, and the member stayed in the
 * room, in its count and in every other member's list for as long as its
 * instance ran. It is owed now, and done once Redis takes writes again.
 */
t.test('a leave Redis refuses while it refuses writes is done once it takes them again', { skip: skipRedis }, async (t) => {
  const redis = await startRedis(t)
  const admin = new Redis(redis.url)
  t.teardown(() => admin.disconnect())
  // A short lease: the owed leaves are done at each upkeep round, every third of it.
  const adapter = (): ReturnType<typeof redisAdapter> => redisAdapter({ url: redis.url, leaseMs: 1500 })
  const a = await startApp(t, { adapter: adapter() })
  const b = await startApp(t, { adapter: adapter() })
  const ada = await TestSocket.open(a.wsUrl)
  const bob = await TestSocket.open(b.wsUrl)
  t.teardown(() => { ada.close(); bob.close() })
  await ada.join('r')
  await bob.join('r')
  const bobId = bob.welcome.user.id as string
  await ada.next((f) => f.type === 'presence' && ids(f.joins).includes(bobId), 'bob\'s join')

  // No replica is connected: every write command is refused with NOREPLICAS.
  await admin.config('SET', 'min-replicas-to-write', '1')
  t.teardown(async () => await admin.config('SET', 'min-replicas-to-write', '0'))
  const left = await bob.request({ type: 'leave', room: 'r' })
  t.match(left, { type: 'left', room: 'r' }, 'bob is out of the room at once; its leave in Redis is owed')
  const refused = await ada.request({ type: 'publish', room: 'r', data: 'while refused' })
  t.match(refused, { type: 'error', code: 'UNAVAILABLE' }, 'a publish is refused as retryable: the script wrote nothing')

  await admin.config('SET', 'min-replicas-to-write', '0')
  const diff = await ada.next((f) => f.type === 'presence' && ids(f.leaves).includes(bobId), 'bob\'s leave, once Redis takes writes')
  t.equal(diff.count, 1, 'the count has dropped')
  const room = await a.app.rooms.get('r')
  t.same(room === null ? null : { count: room.count, members: ids(room.members) }, { count: 1, members: [ada.welcome.user.id] }, 'Redis no longer holds bob')
})

/**
 * A leave Redis refuses for good (here a key of the wrong type; an ACL or a
 * script error alike) stays owed and is retried, but it must not hold up
 * anything else: it made every recovery of the instance fail, so after any
 * cut of its link the instance answered UNAVAILABLE to every join for good.
 */
t.test('a leave Redis refuses for good does not hold up the instance\'s recovery', { skip: skipRedis }, async (t) => {
  const redis = await startRedis(t)
  const admin = new Redis(redis.url)
  t.teardown(() => admin.disconnect())
  const waiters: Array<{ match: (line: Record<string, any>) => boolean, resolve: () => void }> = []
  const stream = {
    write: (text: string): void => {
      const line = JSON.parse(text) as Record<string, any>
      for (const waiter of waiters.filter((w) => w.match(line))) { waiters.splice(waiters.indexOf(waiter), 1); waiter.resolve() }
    }
  }
  const logged = async (msg: string): Promise<void> => {
    const guard = new Promise<never>((_resolve, reject) => setTimeout(() => reject(new Error(`no log line "${msg}" within 15 s`)), 15_000).unref())
    await Promise.race([new Promise<void>((resolve) => waiters.push({ match: (line) => String(line.msg).includes(msg), resolve })), guard])
  }
  const a = await startApp(t, { adapter: redisAdapter({ url: redis.url, leaseMs: 1500 }) }, undefined, { logger: { level: 'warn', stream } })
  const ada = await TestSocket.open(a.wsUrl)
  t.teardown(() => ada.close())
  await ada.join('x')
  await admin.del('fastify-rooms:r:x:conns')
  await admin.set('fastify-rooms:r:x:conns', 'not a hash')
  t.match(await ada.request({ type: 'leave', room: 'x' }), { type: 'left', room: 'x' }, 'the leave is answered; Redis owes it')

  const nodeId = ada.welcome.connectionId.slice(0, ada.welcome.connectionId.indexOf('-'))
  const cmd = await clientsNamed(admin, `fastify-rooms:${nodeId}:cmd`)
  t.equal(cmd.length, 1, 'one command connection')
  await admin.client('KILL', 'ID', cmd[0]!.id!)
  await logged('the link to Redis is back')
  const bob = await TestSocket.open(a.wsUrl)
  t.teardown(() => bob.close())
  t.match(await bob.join('ok'), { type: 'joined', room: 'ok' }, 'the instance takes joins again')
})

const stallAdapter = (url: string, leaseMs: number): ReturnType<typeof redisAdapter> => redisAdapter({ url, leaseMs, commandTimeoutMs: 500 })

/** Three instances on one Redis, with a member each in room `r`: ada on a, bob on b, cy on a child process the test can kill. */
async function threeInRoom (t: Test, url: string, leaseMs: number): Promise<{ a: Started, b: Started, doomed: Awaited<ReturnType<typeof childInstance>>, ada: TestSocket, bob: TestSocket, cyId: string }> {
  const a = await startApp(t, { adapter: stallAdapter(url, leaseMs), presenceIntervalMs: 0 })
  const b = await startApp(t, { adapter: stallAdapter(url, leaseMs), presenceIntervalMs: 0 })
  const doomed = await childInstance(t, { REDIS_URL: url, LEASE_MS: String(leaseMs) })
  const ada = await TestSocket.open(a.wsUrl)
  const bob = await TestSocket.open(b.wsUrl)
  const cy = await TestSocket.open(doomed.wsUrl)
  t.teardown(() => { ada.close(); bob.close(); cy.close() })
  for (const socket of [ada, bob, cy]) await socket.join('r')
  await ada.next((f) => f.type === 'presence' && f.count === 3, 'all three in the room')
  return { a, b, doomed, ada, bob, cyId: cy.welcome.user.id as string }
}

/**
 * The dead instance's member leaves, and nobody else: ada and bob are still
 * connected and still in Redis (asked through `instance`). The leave is also the
 * barrier: it comes once every reaper has had its rounds.
 */
async function onlyTheDeadLeft (t: Test, instance: Started, { ada, bob, cyId }: { ada: TestSocket, bob: TestSocket, cyId: string }): Promise<Frame> {
  const diff = await ada.next((f) => f.type === 'presence' && ids(f.leaves).includes(cyId), 'the dead instance\'s member leaving')
  t.same(ids(diff.leaves), [cyId], 'only the dead instance\'s member left')
  t.same(presences(ada).flatMap((f) => ids(f.leaves)), [cyId], 'ada saw no other leave')
  t.equal(ada.ws.readyState, ada.ws.OPEN, 'ada\'s connection is open')
  t.equal(bob.ws.readyState, bob.ws.OPEN, 'bob\'s connection is open')
  const room = await instance.app.rooms.get('r')
  t.same(room === null ? null : ids(room.members).sort(), [ada.welcome.user.id, bob.welcome.user.id].sort(), 'Redis holds ada and bob')
  return diff
}

/**
 * Redis paused for longer than the lease, its data kept, every instance
 * alive: no instance could renew its lease, and the first reaper back took
 * the others for dead (their members left and were closed with 1012). After
 * such a silence nobody is reaped for a lease; a really dead instance is
 * reaped after it, which is also what tells the test the reaping ran.
 */
t.test('a Redis stalled for longer than the lease makes no instance reap another', { skip: skipRedis }, async (t) => {
  const redis = await startRedis(t)
  const leaseMs = 1500
  const three = await threeInRoom(t, redis.url, leaseMs)

  const pid = redis.pid()
  if (pid === undefined) throw new Error('redis-server is not running')
  process.kill(pid, 'SIGSTOP')
  let stopped = true
  t.teardown(() => { if (stopped) process.kill(pid, 'SIGCONT') })
  // The doomed instance dies during the pause; the others' leases run out in it too.
  three.doomed.child.kill('SIGKILL')
  await new Promise((resolve) => three.doomed.child.once('exit', resolve))
  // Paused for a lease and a half, timed by a timer: Redis gives no event while it is stopped.
  await new Promise((resolve) => setTimeout(resolve, leaseMs * 1.5))
  process.kill(pid, 'SIGCONT')
  stopped = false

  const diff = await onlyTheDeadLeft(t, three.b, three)
  t.equal(diff.count, 2, 'ada and bob are still counted')
})

/**
 * A TCP proxy to a real Redis that can be cut: then its connections are
 * dropped and new ones refused, as by a network partition, until it is mended.
 */
class Partition {
  readonly server: Server
  private readonly sockets = new Set<Socket>()
  private cut = false

  constructor (redisPort: number) {
    this.server = createServer((client) => {
      if (this.cut) return client.destroy()
      const upstream = connect(redisPort, '127.0.0.1')
      for (const socket of [client, upstream]) {
        this.sockets.add(socket)
        socket.on('close', () => { this.sockets.delete(socket); client.destroy(); upstream.destroy() }).on('error', () => {})
      }
      client.pipe(upstream).pipe(client)
    })
  }

  get url (): string {
    return `redis://127.0.0.1:${(this.server.address() as { port: number }).port}`
  }

  split (): void {
    this.cut = true
    for (const socket of this.sockets) socket.destroy()
  }

  mend (): void {
    this.cut = false
  }
}

/**
 * An instance that registers while the others are cut off from Redis is no
 * sign that their outage is over: a first version of the hold reset Redis'
 * note of the last lease call at a registration, and the new instance then
 * reaped the healthy instances whose leases had run out meanwhile.
 */
t.test('an instance registering while the others are cut off from Redis does not reap them when they come back', { skip: skipRedis }, async (t) => {
  const redis = await startRedis(t)
  const partition = new Partition(redis.port)
  partition.server.listen(0, '127.0.0.1')
  await once(partition.server, 'listening')
  t.teardown(() => { partition.split(); partition.server.close() })
  const leaseMs = 3000
  const three = await threeInRoom(t, partition.url, leaseMs)

  partition.split()
  three.doomed.child.kill('SIGKILL')
  await new Promise((resolve) => three.doomed.child.once('exit', resolve))
  // Cut off for a lease and a half, timed by a timer: nothing tells of a lease running out in Redis.
  await new Promise((resolve) => setTimeout(resolve, leaseMs * 1.5))
  // Its registration is the first lease call Redis sees after the silence. The others come back only after
  // its first round of reaping (any 'dead' call now is the new instance's): a reaper that did not hold reaps them.
  const monitor = await monitorRedis(t, redis.port)
  await startApp(t, { adapter: stallAdapter(redis.url, leaseMs), presenceIntervalMs: 0 })
  await monitor.seen((args) => args[6] === 'dead', 'the new instance\'s first round of reaping')
  partition.mend()

  await onlyTheDeadLeft(t, three.a, three)
})
