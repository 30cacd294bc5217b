import t from 'tap'
import { createServer, connect, type Server, type Socket } from 'node:net'
import { once } from 'node:events'
import { Redis } from 'ioredis'
import { redisAdapter } from '../src/index.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { eventually, skipRedis, startRedis } from './helpers/redis.js'

/**
 * A TCP proxy that plays a failover: its connections go to one Redis until
 * `switchTo` cuts them all and sends the new ones to another, as a Sentinel
 * client or a virtual IP would after promoting a replica.
 */
class Failover {
  readonly server: Server
  private readonly sockets = new Set<Socket>()

  constructor (private port: number) {
    this.server = createServer((client) => {
      const upstream = connect(this.port, '127.0.0.1')
      this.sockets.add(client)
      client.pipe(upstream)
      upstream.pipe(client)
      client.on('close', () => { this.sockets.delete(client); upstream.destroy() }).on('error', () => upstream.destroy())
      upstream.on('close', () => client.destroy()).on('error', () => client.destroy())
    })
  }

  get url (): string {
    return `redis://127.0.0.1:${(this.server.address() as { port: number }).port}`
  }

  switchTo (port: number): void {
    this.port = port
    for (const socket of this.sockets) socket.destroy()
  }
}

t.test('writes lost in a failover, in a room no member holds any more: the epoch that ends them does not stay for good', { skip: skipRedis }, async (t) => {
  const master = await startRedis(t)
  const inspect = new Redis(master.url)
  t.teardown(() => inspect.disconnect())
  // Redis 7 waits 5 s for more replicas before a diskless full sync: there is only one.
  await inspect.call('CONFIG', 'SET', 'repl-diskless-sync-delay', '0')
  const replica = await startRedis(t, { replicaOf: master.port })
  const promoted = new Redis(replica.url)
  t.teardown(() => promoted.disconnect())
  await eventually(async () => await inspect.info('replication'), (info) => /slave0:.*state=online/.test(info), 'the replica is online')
  const failover = new Failover(master.port)
  failover.server.listen(0, '127.0.0.1')
  await once(failover.server, 'listening')
  t.teardown(() => { failover.server.close() })
  const app = await startApp(t, { adapter: redisAdapter({ url: failover.url, keyPrefix: 'lost:', leaseMs: 60_000 }) })

  // Published to a room with no member yet: its epoch and history, which the replica gets.
  t.equal(await app.app.rooms.broadcast('r', 1), 1)
  await eventually(async () => await promoted.get('lost:r:r:seq'), (seq) => seq === '1', 'the replica has the first message')
  // From here the replica gets nothing more: the member's join and message 2 exist only on the master.
  await promoted.call('REPLICAOF', 'NO', 'ONE')
  const member = await TestSocket.open(app.wsUrl)
  t.teardown(() => member.close())
  const joined = await member.join('r')
  t.equal(await app.app.rooms.broadcast('r', 2), 2)
  await member.next((f) => f.type === 'message' && f.offset === 2, 'message 2')

  failover.switchTo(replica.port)
  // Delivered offset 2 is past the promoted replica's last: the room starts a new epoch, and the member rejoins.
  await member.next(() => false, 'its close').catch(() => {})
  t.match(member.closedWith, { code: 1012 }, 'closed to rejoin and learn of the lost write')
  // -1 would be a key with no expiry: nothing would ever remove it.
  t.equal(await promoted.pttl('lost:r:r:epoch'), -2, `no epoch is left behind (the ended one was ${joined.epoch as string})`)
  t.equal(await promoted.exists('lost:r:r:seq', 'lost:r:r:hist', 'lost:r:r:members'), 0, 'nor anything else of the room')
})
