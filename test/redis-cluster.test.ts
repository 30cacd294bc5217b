import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { Redis } from 'ioredis'
import WebSocket from 'ws'
import { redisAdapter } from '../src/index.js'
import { connect } from '../src/client/index.js'
import { serverClosed, serverSockets, startApp, type Started } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { firstDiff } from './helpers/presence.js'
import { eventually, skipRedis, startRedis, type RedisServer } from './helpers/redis.js'
import { guard, until } from './helpers/until.js'
import { nextEvent } from './helpers/client.js'
import { childInstance } from './helpers/child-instance.js'

const named = { authenticate: (r: { headers: Record<string, unknown> }) => ({ id: String(r.headers['x-user']), name: String(r.headers['x-user']) }) }
const as = (user: string): WebSocket.ClientOptions => ({ headers: { 'x-user': user } })

async function cluster (t: { teardown: Test['teardown'] }, redis: RedisServer, n: number, extra: Record<string, unknown> = {}): Promise<Started[]> {
  const nodes: Started[] = []
  for (let i = 0; i < n; i++) {
    nodes.push(await startApp(t, { ...named, maxFramesPerSecond: 1e6, frameBurst: 10_000, adapter: redisAdapter({ url: redis.url, leaseMs: 1000 }), ...extra }))
  }
  return nodes
}

t.test('redis scale-out', { skip: skipRedis }, async (t) => {
  const redis = await startRedis(t)

  t.test('cross-node delivery in offset order under concurrent publishers on different nodes', async (t) => {
    const nodes = await cluster(t, redis, 3)
    const clients = await Promise.all(nodes.map(async (node, i) => await TestSocket.open(node.wsUrl, as(`u${i}`))))
    t.teardown(() => Promise.all(clients.map(async (c) => await c.close())))
    for (const c of clients) await c.join('order')
    const each = 200
    const total = each * clients.length
    const seen = clients.map(() => [] as number[])
    const done = clients.map((c, i) => new Promise<void>((resolve) => c.ws.on('message', (raw) => {
      const f = JSON.parse(raw.toString())
      if (f.type === 'message' && f.room === 'order' && seen[i]!.push(f.offset) === total) resolve()
    })))
    await Promise.all(clients.map(async (c, p) => {
      const window: Array<Promise<unknown>> = []
      for (let n = 0; n < each; n++) {
        window.push(c.request({ type: 'publish', room: 'order', data: { p, n } }))
        if (window.length >= 20) await window.shift()
      }
      await Promise.all(window)
    }))
    await guard(Promise.all(done), `every client to get all ${total} messages`, { ms: 30_000, abort: clients.map((c) => c.closed) })
    for (const [i, list] of seen.entries()) t.same(list, Array.from({ length: total }, (_, k) => k + 1), `node ${i}'s client: 1..${total}, once each, in order`)
  })

  t.test('presence, listing and counts are cluster-wide and exact on every node', async (t) => {
    const [a, b, c] = await cluster(t, redis, 3) as [Started, Started, Started]
    const ada = await TestSocket.open(a.wsUrl, as('ada'))
    const bob = await TestSocket.open(b.wsUrl, as('bob'))
    const bobTab2 = await TestSocket.open(c.wsUrl, as('bob'))
    t.teardown(() => Promise.all([ada.close(), bob.close(), bobTab2.close()]))
    await ada.join('p:room')
    const joined = await bob.join('p:room')
    t.same(joined.members.map((m: { id: string }) => m.id), ['ada', 'bob'])
    // Ada is her node's first member: its diff of bob may name her own join too (see firstDiff).
    t.match(await firstDiff(ada), { joins: [{ id: 'bob' }], leaves: [], count: 2 }, 'presence crosses nodes')
    await bobTab2.join('p:room')
    // A barrier: cy joins through node c after bob's second tab did. A wrong
    // join of bob would have gone through Redis before cy's, so it would come
    // to ada before (or in one diff with) cy's; ada's next diff is cy's alone.
    const cy = await TestSocket.open(c.wsUrl, as('cy'))
    t.teardown(() => cy.close())
    await cy.join('p:room')
    t.same(await ada.next((f) => f.type === 'presence', 'cy joining'), { type: 'presence', room: 'p:room', joins: [{ id: 'cy', name: 'cy' }], leaves: [], count: 3 }, 'bob\'s second tab on a third node is not a new member')
    await cy.request({ type: 'leave', room: 'p:room' })
    t.same(await ada.next((f) => f.type === 'presence', 'cy leaving'), { type: 'presence', room: 'p:room', joins: [], leaves: [{ id: 'cy', name: 'cy' }], count: 2 })
    for (const node of [a, b, c]) {
      t.same(await (await fetch(`${node.url}/rooms?prefix=p:`)).json(), { rooms: [{ name: 'p:room', count: 2 }], next: null }, 'listing from any node')
      t.match(await (await fetch(`${node.url}/rooms/p:room`)).json(), { count: 2, members: [{ id: 'ada' }, { id: 'bob' }] })
    }
    // Node b has handled the close once its server-side socket's close event
    // ran; then dee joins through node b. A wrong leave of bob would have gone
    // to Redis before dee's join, so ada's next diff is dee's join alone.
    const [bobOnB] = serverSockets(b.app)
    const bobClosedOnB = serverClosed(bobOnB!, 'node b to see bob\'s tab close')
    await bob.close()
    await bobClosedOnB
    const dee = await TestSocket.open(b.wsUrl, as('dee'))
    t.teardown(() => dee.close())
    await dee.join('p:room')
    t.same(await ada.next((f) => f.type === 'presence', 'dee joining'), { type: 'presence', room: 'p:room', joins: [{ id: 'dee', name: 'dee' }], leaves: [], count: 3 }, 'closing one of bob\'s tabs is not a leave')
    await dee.request({ type: 'leave', room: 'p:room' })
    t.same(await ada.next((f) => f.type === 'presence', 'dee leaving'), { type: 'presence', room: 'p:room', joins: [], leaves: [{ id: 'dee', name: 'dee' }], count: 2 })
    await bobTab2.request({ type: 'leave', room: 'p:room' })
    t.match(await ada.next((f) => f.type === 'presence'), { joins: [], leaves: [{ id: 'bob' }], count: 1 })
    t.equal((await a.app.rooms.list({ prefix: 'p:' })).rooms[0]?.count, 1)
  })

  t.test('recovery works whichever node the client comes back to', async (t) => {
    const [a, b] = await cluster(t, redis, 2) as [Started, Started]
    const ada = await TestSocket.open(a.wsUrl, as('ada'))
    const { epoch } = await ada.join('rec')
    await b.app.rooms.broadcast('rec', 1)
    await ada.next((f) => f.type === 'message')
    ada.ws.terminate()
    for (let i = 2; i <= 5; i++) await b.app.rooms.broadcast('rec', i)
    const back = await TestSocket.open(b.wsUrl, as('ada'))
    t.teardown(() => back.close())
    t.match(await back.join('rec', { since: { offset: 1, epoch } }), { recovered: true, offset: 5, epoch })
    await back.sync()
    t.same(back.take('message').map((m) => m.data), [2, 3, 4, 5])
    t.same((await (await fetch(`${a.url}/rooms/rec/messages?after=3`)).json()).messages.map((m: { data: number }) => m.data), [4, 5], 'REST history from another node')
  })

  t.test('direct frames reach a connection on another node', async (t) => {
    const [a, b] = await cluster(t, redis, 2) as [Started, Started]
    const ada = await TestSocket.open(a.wsUrl, as('ada'))
    t.teardown(() => ada.close())
    t.equal(await b.app.rooms.send(ada.welcome.connectionId, { hi: 'from b' }), true)
    t.same((await ada.next((f) => f.type === 'direct')).data, { hi: 'from b' })
  })

  t.test('ROOM_FULL counts members across nodes', async (t) => {
    const [a, b] = await cluster(t, redis, 2, { maxMembersPerRoom: 1 }) as [Started, Started]
    const ada = await TestSocket.open(a.wsUrl, as('ada'))
    const bob = await TestSocket.open(b.wsUrl, as('bob'))
    t.teardown(() => Promise.all([ada.close(), bob.close()]))
    await ada.join('full')
    t.match(await bob.join('full'), { type: 'error', code: 'ROOM_FULL' })
  })

  /** A cluster node in a child process, so it can be killed or paused for real. */
  async function childNode (t: Test): Promise<{ child: ChildProcess, wsUrl: string }> {
    return await childInstance(t, { REDIS_URL: redis.url, LEASE_MS: '1000' })
  }

  t.test('a node killed without cleanup disappears within its lease time', async (t) => {
    const [a] = await cluster(t, redis, 1) as [Started]
    const { child, wsUrl } = await childNode(t)
    const watcher = await TestSocket.open(a.wsUrl, as('watcher'))
    t.teardown(() => watcher.close())
    await watcher.join('lease')
    const doomed = await TestSocket.open(wsUrl)
    await doomed.join('lease')
    await doomed.join('lease-2')
    await watcher.next((f) => f.type === 'presence' && f.joins.length > 0)
    const killedAt = Date.now()
    child.kill('SIGKILL')
    const leave = await watcher.next((f) => f.type === 'presence' && f.leaves.length > 0)
    const took = Date.now() - killedAt
    t.match(leave, { room: 'lease', leaves: [{ id: doomed.welcome.user.id }], count: 1 })
    // The guarantee is lease + one reap interval (1.5 s here); the margin is for a loaded CI machine.
    t.ok(took < 3000, `gone ${took} ms after the kill (lease 1000 ms, reaped every 500 ms)`)
    t.equal(await a.app.rooms.get('lease-2'), null, 'gone from every room')
  })

  t.test('a node that comes back after a pause longer than its lease does not resurrect its members', async (t) => {
    const [a] = await cluster(t, redis, 1) as [Started]
    const { child, wsUrl } = await childNode(t)
    const watcher = await TestSocket.open(a.wsUrl, as('watcher'))
    t.teardown(() => watcher.close())
    await watcher.join('stale')
    const paused = await TestSocket.open(wsUrl)
    await paused.join('stale')
    await watcher.next((f) => f.type === 'presence' && f.joins.length > 0)
    child.kill('SIGSTOP')
    await watcher.next((f) => f.type === 'presence' && f.leaves.length > 0)
    t.equal((await a.app.rooms.get('stale'))?.count, 1, 'the paused node\'s member was reaped')
    child.kill('SIGCONT')
    t.equal((await paused.closed).code, 1012, 'on waking, the node saw its lease was reaped and disconnected its clients so they rejoin')
    // A barrier: a member joins through the woken node itself. Whatever that
    // node did to the room on waking went to Redis before this join, so a
    // resurrected member would come to the watcher before (or with) it.
    const barrier = await TestSocket.open(wsUrl)
    t.teardown(() => barrier.close())
    await barrier.join('stale')
    const { id, name } = barrier.welcome.user as { id: string, name: string }
    t.same(await watcher.next((f) => f.type === 'presence', 'the barrier joining'), { type: 'presence', room: 'stale', joins: [{ id, name }], leaves: [], count: 2 }, 'no presence join: the member did not come back by itself')
    await barrier.request({ type: 'leave', room: 'stale' })
    await watcher.next((f) => f.type === 'presence' && f.leaves.length > 0, 'the barrier leaving')
    t.equal((await a.app.rooms.get('stale'))?.count, 1)
  })

  t.test('Redis killed and restarted mid-traffic: UNAVAILABLE while down, then recovery by itself', async (t) => {
    const [a, b] = await cluster(t, redis, 2) as [Started, Started]
    const client = await connect(a.wsUrl, { WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 100 } })
    t.teardown(() => client.close())
    let reconnects = 0
    client.on('state', (state) => { if (state === 'reconnecting') reconnects++ })
    const room = await client.join('outage')
    let gaps = 0
    room.on('gap', () => { gaps++ })
    const bob = await TestSocket.open(b.wsUrl, as('bob'))
    t.teardown(() => bob.close())
    await bob.join('outage')
    await room.publish('before')
    await redis.kill()
    const refused = await bob.request({ type: 'publish', room: 'outage', data: 'during' })
    t.match(refused, { type: 'error', code: 'UNAVAILABLE', message: /retry/ })
    t.equal(bob.ws.readyState, WebSocket.OPEN, 'connections stay open while Redis is down')
    const gap = nextEvent((h) => room.on('gap', h), undefined, { client, room, what: 'the gap after Redis restarted' })
    await redis.restart()
    // The restarted Redis is empty: the rooms' epochs changed, so members are told to rejoin (1012).
    t.equal((await bob.closed).code, 1012)
    t.match(await gap, { room: 'outage' }, 'the SDK client rejoined and learned of the gap')
    const bob2 = await TestSocket.open(b.wsUrl, as('bob'))
    t.teardown(() => bob2.close())
    await bob2.join('outage')
    const received: unknown[] = []
    const got = nextEvent((h) => room.on('message', h), (m: { data: unknown }) => received.push(m.data) === 2, { client, room, what: 'the two messages after the restart' }).then(() => received)
    await bob2.request({ type: 'publish', room: 'outage', data: 'after' })
    await bob2.request({ type: 'publish', room: 'outage', data: 'again' })
    t.same(await got, ['after', 'again'], 'cross-node traffic flows again')
    await bob2.sync()
    // A round trip on the SDK client's own connection to node a, after a room
    // history read there through Redis: a close node a sent before its answers
    // has reached the client (and been counted) by then.
    await room.history()
    await client.ping()
    t.equal(reconnects, 1, 'the SDK client was closed once, not again by stale room state')
    t.equal(gaps, 1)
    t.equal(bob2.closedWith, undefined, 'a member who joined after the restart stays')
    t.same(bob2.take('message').map((m) => m.data), ['after', 'again'])
    // Once everyone left, no instance is still subscribed to the room.
    const inspect = new Redis(redis.url)
    // Its reconnect attempts while a test has Redis down are expected: not unhandled errors.
    inspect.on('error', () => {})
    t.teardown(() => inspect.disconnect())
    client.close()
    await bob2.close()
    await eventually(async () => await inspect.pubsub('NUMSUB', 'fastify-rooms:c:outage'), (reply) => reply[1] === 0, 'no instance is subscribed to the room')
    t.equal(await a.app.rooms.get('outage'), null)
  })

  t.test('the demo runs clustered: two `npm start` instances on one Redis share rooms, presence, listing and history', async (t) => {
    const start = async (): Promise<string> => {
      const child = spawn(process.execPath, ['dist/demo.js'], { env: { ...process.env, REDIS_URL: redis.url, PORT: '0' }, stdio: ['ignore', 'pipe', 'inherit'] })
      // Its exit awaited: a late lease write of a dying demo would land after the next test's flushall.
      const exited = once(child, 'exit').catch(() => {})
      t.teardown(async () => { if (child.exitCode === null && child.signalCode === null) { child.kill(); await exited } })
      return await new Promise<string>((resolve, reject) => {
        let out = ''
        child.stdout!.on('data', (chunk: Buffer) => { out += chunk.toString(); const m = /open (http:\/\/\S+?)\/ \(rooms shared through Redis/.exec(out); if (m !== null) resolve(m[1]!) })
        // dist/ is built by `npm test` (npm run build); a missing build fails here at once rather than at the timeout.
        child.once('exit', (code) => reject(new Error(`the demo exited with ${code} before listening: ${out}`)))
      })
    }
    const [one, two] = await Promise.all([start(), start()])
    t.not(one, two)
    const ada = await TestSocket.open(`${one!.replace('http', 'ws')}/ws?name=ada`)
    const bob = await TestSocket.open(`${two!.replace('http', 'ws')}/ws?name=bob`)
    t.teardown(() => Promise.all([ada.close(), bob.close()]))
    await ada.join('demo-lobby')
    await bob.join('demo-lobby')
    // With the demo's batching, ada's first diff may also name ada herself (she joined while it was open).
    const presence = await ada.next((f) => f.type === 'presence')
    t.ok(presence.joins.some((m: { name: string }) => m.name === 'bob'), 'bob joined')
    t.equal(presence.count, 2)
    await bob.request({ type: 'publish', room: 'demo-lobby', data: { text: 'hello from instance two' } })
    t.match(await ada.next((f) => f.type === 'message'), { data: { text: 'hello from instance two' }, from: { name: 'bob' } })
    for (const base of [one, two]) {
      t.same((await (await fetch(`${base}/rooms?prefix=demo-`)).json()).rooms, [{ name: 'demo-lobby', count: 2 }])
      t.equal((await (await fetch(`${base}/rooms/demo-lobby/messages`)).json()).messages.length, 1)
    }
  })

  t.test('no keys are left behind once everyone left and the nodes stopped, except history within its TTL', async (t) => {
    const inspect = new Redis(redis.url)
    // Its reconnect attempts while a test has Redis down are expected: not unhandled errors.
    inspect.on('error', () => {})
    t.teardown(() => inspect.disconnect())
    await inspect.flushall()
    const nodes = await cluster({ teardown: () => {} }, redis, 2)
    const clients = await Promise.all(nodes.map(async (n, i) => await TestSocket.open(n.wsUrl, as(`k${i}`))))
    for (const c of clients) { await c.join('keys-a'); await c.join('keys-quiet') }
    await clients[0]!.request({ type: 'publish', room: 'keys-a', data: 1 })
    for (const c of clients) await c.close()
    for (const n of nodes) await n.app.close()
    const keys = (await inspect.keys('*')).sort()
    t.same(keys, ['fastify-rooms:history', 'fastify-rooms:history:bytes', 'fastify-rooms:r:keys-a:epoch', 'fastify-rooms:r:keys-a:hist', 'fastify-rooms:r:keys-a:seq', 'fastify-rooms:secret'])
    for (const key of keys) t.ok(await inspect.pttl(key) > 0, `${key} expires`)
  })
})
