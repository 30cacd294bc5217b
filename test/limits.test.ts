import t from 'tap'
import type { Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import WebSocket from 'ws'
import { serverClosed, serverSocketOf, startApp } from './helpers/server.js'
import { TestSocket, writeAtOnce } from './helpers/socket.js'
import { eachAdapter } from './helpers/deployment.js'

// Memory only: maxConnections counts the connections of one instance.
t.test('maxConnections: the next upgrade gets 503, and a slot frees when one leaves', async (t) => {
  const { app, wsUrl } = await startApp(t, { maxConnections: 2 })
  const a = await TestSocket.open(wsUrl)
  const aOnServer = serverSocketOf(app, a)
  const b = await TestSocket.open(wsUrl)
  t.teardown(() => b.close())
  const refused = await TestSocket.refused(wsUrl)
  t.equal(refused.status, 503)
  t.match(refused.body, { statusCode: 503, code: 'TOO_MANY_CONNECTIONS', message: /maximum of 2 connections/ })
  // The server counts a connection until it has seen it close: wait for that (its socket's close event), not for a time.
  const aClosed = serverClosed(aOnServer, 'the server to see the first connection close')
  await a.close()
  await aClosed
  const c = await TestSocket.open(wsUrl)
  t.equal(c.welcome.type, 'welcome', 'a slot freed')
  await c.close()
})

// Memory only: each instance checks the Origin of its own upgrades.
t.test('allowedOrigins: other origins get 403 before the upgrade; a client that sends none (no browser) is let in', async (t) => {
  const { wsUrl } = await startApp(t, { allowedOrigins: ['https://chat.example'] })
  const ok = await TestSocket.open(wsUrl, { origin: 'https://chat.example' })
  t.teardown(() => ok.close())
  t.equal(ok.welcome.type, 'welcome')
  const none = await TestSocket.open(wsUrl)
  t.teardown(() => none.close())
  t.equal(none.welcome.type, 'welcome')
  for (const origin of ['https://evil.example', 'https://chat.example.evil.example', 'null']) {
    const refused = await TestSocket.refused(wsUrl, { origin })
    t.equal(refused.status, 403, String(origin))
    t.equal(refused.body.code, 'ORIGIN_NOT_ALLOWED')
  }
})

// Memory only: the rate limit is per connection, kept by the instance that holds it.
t.test('rate limit: frames past the burst get RATE_LIMITED and are not handled; the connection recovers', async (t) => {
  const { wsUrl, app } = await startApp(t, { maxFramesPerSecond: 1, frameBurst: 5 })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  a.send({ type: 'join', room: 'r', id: 'j' })
  for (let i = 0; i < 6; i++) a.send({ type: 'publish', room: 'r', data: i, id: i })
  await a.next((f) => f.id === 'j')
  const replies = [] as Array<Record<string, unknown>>
  for (let i = 0; i < 6; i++) replies.push(await a.next((f) => f.id === i))
  t.same(replies.map((r) => r.type), ['ack', 'ack', 'ack', 'ack', 'error', 'error'], 'the burst of 5 (join + 4 publishes) passes, the rest are refused')
  t.match(replies[4], { code: 'RATE_LIMITED', message: /at most 1 per second/ })
  t.equal((await app.rooms.get('r'))?.offset, 4, 'refused publishes were not published')
  t.equal(a.ws.readyState, a.ws.OPEN, 'the connection stays open')
})

// Memory only: as above, per connection.
t.test('rate limit: sustained flooding closes the connection with 1008', async (t) => {
  const { wsUrl } = await startApp(t, { maxFramesPerSecond: 1, frameBurst: 10 })
  const a = await TestSocket.open(wsUrl)
  for (let i = 0; i < 100; i++) a.send({ type: 'ping' })
  t.equal((await a.closed).code, 1008)
  t.equal(a.frames.filter((f) => f.type === 'error' && f.code === 'RATE_LIMITED').length, 10, 'warned once per refused frame first')
})

// Memory only: maxConnections is per instance; ROOM_FULL across instances is the next test.
t.test('a member\'s second connection counts against maxConnections but not against ROOM_FULL', async (t) => {
  const { wsUrl, app } = await startApp(t, { maxConnections: 3, maxMembersPerRoom: 1, authenticate: () => ({ id: 'same', name: 'same' }) })
  const tabs = [await TestSocket.open(wsUrl), await TestSocket.open(wsUrl), await TestSocket.open(wsUrl)]
  t.teardown(() => Promise.all(tabs.map(async (s) => await s.close())))
  for (const tab of tabs) t.equal((await tab.join('r')).type, 'joined')
  t.equal((await app.rooms.get('r'))?.count, 1)
  t.equal((await TestSocket.refused(wsUrl)).status, 503)
})

eachAdapter(t, 'ROOM_FULL counts members, not connections, across every instance; a slot frees when the member leaves', async (t, deploy) => {
  const d = await deploy({ maxMembersPerRoom: 1, authenticate: (request) => ({ id: String(request.headers['x-user']), name: String(request.headers['x-user']) }) })
  const as = (user: string) => ({ headers: { 'x-user': user } })
  const tabs = [await TestSocket.open(d.node(0).wsUrl, as('ada')), await TestSocket.open(d.node(1).wsUrl, as('ada'))]
  const bob = await TestSocket.open(d.node(1).wsUrl, as('bob'))
  t.teardown(() => Promise.all([...tabs, bob].map(async (s) => await s.close())))
  for (const tab of tabs) t.match(await tab.join('r'), { type: 'joined', room: 'r', members: [{ id: 'ada' }] }, 'every tab of the one member gets in')
  t.equal((await d.node(1).app.rooms.get('r'))?.count, 1)
  t.same(await bob.join('r'), { type: 'error', id: 1, code: 'ROOM_FULL', room: 'r', message: 'Room "r" is full (1 members): try again later.' }, 'another user is refused, on any instance')
  t.equal(bob.ws.readyState, bob.ws.OPEN, 'the connection stays open')
  for (const tab of tabs) await tab.request({ type: 'leave', room: 'r' })
  t.match(await bob.join('r'), { type: 'joined', room: 'r', members: [{ id: 'bob' }] }, 'once the member left, the slot is free')
})

t.test('frames waiting behind a slow hook are capped at maxBufferedBytes; past it RATE_LIMITED, in order after that', async (t) => {
  let release!: () => void
  const gate = new Promise<void>((resolve) => { release = resolve })
  const { wsUrl } = await startApp(t, { maxBufferedBytes: 64 * 1024, onJoin: async ({ room }) => { if (room === 'slow') await gate } })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  a.send({ type: 'join', room: 'slow', id: 'j' })
  const pad = 'x'.repeat(20 * 1024)
  for (let i = 1; i <= 4; i++) a.send({ type: 'publish', room: 'slow', id: i, data: pad })
  const refused = await a.next((f) => f.id === 4)
  t.match(refused, { type: 'error', code: 'RATE_LIMITED', message: /waiting/ }, 'the fourth 20 KiB frame does not fit behind the hook')
  release()
  t.match(await a.next((f) => f.id === 'j'), { type: 'joined', room: 'slow' })
  for (let i = 1; i <= 3; i++) t.match(await a.next((f) => f.id === i), { type: 'ack', offset: i }, `queued publish ${i} handled in order`)
})

t.test('rate limit: a client that backed off after a refusal is not closed at its next one, also with a burst of 1', async (t) => {
  const { wsUrl } = await startApp(t, { maxFramesPerSecond: 20, frameBurst: 1 })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  for (const round of [1, 2, 3]) {
    // In one TCP write, so that no refill comes between them: the second is past the burst of 1.
    writeAtOnce(a.ws, [{ type: 'ping', id: `${round}a` }, { type: 'ping', id: `${round}b` }])
    t.match(await a.next((f) => f.id === `${round}b`), { type: 'error', code: 'RATE_LIMITED' }, `round ${round}: the second is refused`)
    t.match(await a.next((f) => f.id === `${round}a`), { type: 'pong' })
    // Not a synchronisation: the client backs off, three refills' worth, before its next frames.
    await sleep(150)
  }
  t.equal(a.ws.readyState, a.ws.OPEN, 'still open: it backed off after each refusal')
})

t.test('a small frame waiting behind a slow hook holds its own bytes, not the whole TCP read it came in', async (t) => {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  let entered!: () => void
  const reached = new Promise<void>((resolve) => { entered = resolve })
  let release!: () => void
  const gate = new Promise<void>((resolve) => { release = resolve })
  const { wsUrl } = await startApp(t, { maxFramesPerSecond: 1e6, frameBurst: 1e6, onJoin: async ({ room }) => { if (room === 'slow') { entered(); await gate } } })
  const a = await TestSocket.open(wsUrl)
  t.teardown(async () => { release(); await a.close() })
  a.send({ type: 'join', room: 'slow', id: 'j' })
  await reached
  // V8 frees an ArrayBuffer's memory on a background thread after a collection: let several turns pass.
  const settled = async (): Promise<number> => {
    for (let i = 0; i < 5; i++) {
      gc()
      await new Promise((resolve) => setImmediate(resolve))
    }
    return process.memoryUsage().arrayBuffers
  }
  const before = await settled()
  const { Sender } = WebSocket as unknown as { Sender: { frame: (data: Buffer, options: object) => Buffer[] } }
  const framed = (opcode: number, data: Buffer): Buffer[] => Sender.frame(data, { fin: true, opcode, mask: true, readOnly: false, rsv1: false })
  const N = 60
  for (let i = 0; i < N; i++) {
    // In one TCP write: a ping, which waits behind the hook, and 60 KB of binary frame, refused at once.
    ;(a.ws as unknown as { _socket: Socket })._socket.write(Buffer.concat([...framed(1, Buffer.from(JSON.stringify({ type: 'ping', id: i }))), ...framed(2, Buffer.alloc(60_000))]))
    t.match(await a.next((f) => f.type === 'error' && f.code === 'INVALID_FRAME'), { code: 'INVALID_FRAME' })
  }
  const grew = await settled() - before
  t.ok(grew < 1024 * 1024, `${N} waiting pings hold ${Math.round(grew / 1024)} KiB of buffers (their reads: ${Math.round(N * 60_000 / 1024)} KiB)`)
  release()
  t.match(await a.next((f) => f.id === 'j'), { type: 'joined' })
  for (let i = 0; i < N; i++) t.match(await a.next((f) => f.id === i), { type: 'pong' })
})

t.test('rate limit: with a burst of 2, a client that never lets its bucket fill is closed with 1008', async (t) => {
  const { wsUrl } = await startApp(t, { maxFramesPerSecond: 1, frameBurst: 2 })
  const a = await TestSocket.open(wsUrl)
  writeAtOnce(a.ws, [{ type: 'ping', id: 1 }, { type: 'ping', id: 2 }, { type: 'ping', id: 3 }])
  t.match(await a.next((f) => f.id === 3), { code: 'RATE_LIMITED' }, 'the third is refused')
  // Not a synchronisation: about one frame's refill (1 s), not the whole burst's (2 s).
  await sleep(1200)
  // One accepted (the bucket was not full: no reset), then two refused: three refusals in all, past the burst.
  writeAtOnce(a.ws, [{ type: 'ping', id: 4 }, { type: 'ping', id: 5 }, { type: 'ping', id: 6 }])
  const sixth = await a.next((f) => f.id === 6).then((f) => f, () => undefined)
  t.equal(sixth, undefined, 'the sixth is not answered: the connection closed first')
  t.equal((await a.closed).code, 1008)
})

t.test('rate limit: with a burst of 3, half of it back (1.5 frames) counts as backed off', async (t) => {
  const { wsUrl } = await startApp(t, { maxFramesPerSecond: 1, frameBurst: 3 })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  writeAtOnce(a.ws, [1, 2, 3, 4, 5].map((n) => ({ type: 'ping', id: `p${n}` })))
  t.match(await a.next((f) => f.id === 'p5'), { code: 'RATE_LIMITED' }, 'two refused')
  // Not a synchronisation: more than half the burst refills (1.5 s), less than all of it (3 s).
  await sleep(1700)
  // The first is accepted with half the burst back: the count starts again, so the two refusals after it
  // are answered (four in all would have closed the connection instead of answering the last).
  writeAtOnce(a.ws, [6, 7, 8].map((n) => ({ type: 'ping', id: `p${n}` })))
  t.match(await a.next((f) => f.id === 'p6'), { type: 'pong' })
  t.match(await a.next((f) => f.id === 'p8'), { code: 'RATE_LIMITED' })
  t.equal(a.ws.readyState, a.ws.OPEN)
})
