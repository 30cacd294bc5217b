import t from 'tap'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'

t.test('welcome is the first frame, with connection id, user, protocol and heartbeat', async (t) => {
  const { wsUrl } = await startApp(t, { heartbeatMs: 30_000 })
  const a = await TestSocket.open(`${wsUrl}?name=ada`)
  t.teardown(() => a.close())
  t.equal(a.frames[0]?.type, 'welcome')
  t.match(a.welcome, { type: 'welcome', protocol: 1, heartbeatMs: 30_000, user: { name: 'ada' } })
  t.type(a.welcome.connectionId, 'string')
  t.type(a.welcome.user.id, 'string')
  const b = await TestSocket.open(wsUrl)
  t.teardown(() => b.close())
  t.match(b.welcome.user.name, /^guest-[0-9a-f]{4}$/, 'anonymous without a name gets a guest name')
  t.not(b.welcome.user.id, a.welcome.user.id, 'each anonymous connection is its own user')
  t.not(b.welcome.connectionId, a.welcome.connectionId)
})

t.test('join replies joined with members, offset and epoch; leave replies left', async (t) => {
  const { wsUrl } = await startApp(t)
  const a = await TestSocket.open(`${wsUrl}?name=ada`)
  t.teardown(() => a.close())
  const joined = await a.join('lobby')
  t.match(joined, { type: 'joined', id: 1, room: 'lobby', offset: 0, members: [{ id: a.welcome.user.id, name: 'ada' }] })
  t.type(joined.epoch, 'string')
  t.notOk('recovered' in joined, 'recovered only comes with since')
  const left = await a.request({ type: 'leave', room: 'lobby' })
  t.same(left, { type: 'left', id: 2, room: 'lobby' })
})

t.test('join and leave reply even without an id', async (t) => {
  const { wsUrl } = await startApp(t)
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  a.send({ type: 'join', room: 'r1' })
  const joined = await a.next((f) => f.type === 'joined')
  t.notOk('id' in joined)
  t.equal(joined.room, 'r1')
  a.send({ type: 'leave', room: 'r1' })
  t.same(await a.next((f) => f.type === 'left'), { type: 'left', room: 'r1' })
})

t.test('joining a room one is already in replies joined again, not an error', async (t) => {
  const { wsUrl } = await startApp(t)
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  const first = await a.join('r')
  await a.request({ type: 'publish', room: 'r', data: 1 })
  const again = await a.join('r')
  t.match(again, { type: 'joined', room: 'r', epoch: first.epoch, offset: 1, members: [{ id: a.welcome.user.id }] })
  await a.sync()
  t.equal(a.pending('message').length, 1, 'the message came once; the second join replayed nothing')
})

t.test('publish delivers message to every member, publisher included, then ack', async (t) => {
  const { wsUrl } = await startApp(t)
  const a = await TestSocket.open(`${wsUrl}?name=ada`)
  const b = await TestSocket.open(`${wsUrl}?name=bob`)
  t.teardown(() => Promise.all([a.close(), b.close()]))
  await a.join('room-1')
  await b.join('room-1')
  const before = Date.now()
  const ack = await a.request({ type: 'publish', room: 'room-1', data: { text: 'hello' } })
  t.same(ack, { type: 'ack', id: 2, room: 'room-1', offset: 1 })
  const toA = await a.next((f) => f.type === 'message')
  const toB = await b.next((f) => f.type === 'message')
  t.same(toA, toB, 'everyone gets the same frame')
  t.match(toA, { type: 'message', room: 'room-1', data: { text: 'hello' }, offset: 1, from: { id: a.welcome.user.id, name: 'ada' } })
  t.ok(toA.ts >= before && toA.ts <= Date.now(), 'ts is server epoch ms')
})

t.test('publish without id gets no ack; a string id is echoed as is', async (t) => {
  const { wsUrl } = await startApp(t)
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  await a.join('r')
  a.send({ type: 'publish', room: 'r', data: 'no-id' })
  await a.next((f) => f.type === 'message')
  await a.sync()
  t.equal(a.pending('ack').length, 0, 'no ack without id')
  a.send({ type: 'publish', room: 'r', id: 'req-7', data: null })
  t.same(await a.next((f) => f.type === 'ack'), { type: 'ack', id: 'req-7', room: 'r', offset: 2 })
  t.match(await a.next((f) => f.type === 'message'), { offset: 2, data: null })
})

t.test('members not in the room get nothing; messages are per room', async (t) => {
  const { wsUrl } = await startApp(t)
  const a = await TestSocket.open(wsUrl)
  const b = await TestSocket.open(wsUrl)
  t.teardown(() => Promise.all([a.close(), b.close()]))
  await a.join('x')
  await b.join('y')
  await a.request({ type: 'publish', room: 'x', data: 1 })
  const ack = await b.request({ type: 'publish', room: 'y', data: 2 })
  t.equal(ack.offset, 1, 'offsets are per room')
  await a.sync()
  await b.sync()
  t.same(a.take('message').map((m) => m.room), ['x'])
  t.same(b.take('message').map((m) => m.room), ['y'])
})

t.test('ping replies pong, with and without id', async (t) => {
  const { wsUrl } = await startApp(t)
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  t.same(await a.request({ type: 'ping' }), { type: 'pong', id: 1 })
  a.send({ type: 'ping' })
  t.same(await a.next((f) => f.type === 'pong'), { type: 'pong' })
})

t.test('after leave, no more messages from the room', async (t) => {
  const { wsUrl } = await startApp(t)
  const a = await TestSocket.open(wsUrl)
  const b = await TestSocket.open(wsUrl)
  t.teardown(() => Promise.all([a.close(), b.close()]))
  await a.join('r')
  await b.join('r')
  await a.request({ type: 'leave', room: 'r' })
  await b.request({ type: 'publish', room: 'r', data: 'after' })
  await a.sync()
  t.equal(a.pending('message').length, 0)
})

t.test('fan-out frames of every header length arrive intact (7-bit, 16-bit and 64-bit lengths)', async (t) => {
  const { wsUrl, app } = await startApp(t, { maxMessageBytes: 200_000, maxFrameBytes: 400_000 })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  await a.join('sizes')
  const overhead = '{"type":"message","room":"sizes","data":"","offset":1,"ts":1795516225414}'.length
  for (const total of [125, 126, 65_535, 65_536, 150_000]) {
    const text = 'x'.repeat(total - overhead)
    const offset = await app.rooms.broadcast('sizes', text)
    const message = await a.next((f) => f.type === 'message' && f.offset === offset)
    t.equal(message.data, text, `a ${total}-byte frame payload`)
  }
})

t.test('many messages to one member in one turn of the event loop arrive complete and in order', async (t) => {
  const { wsUrl, app } = await startApp(t)
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  await a.join('burst')
  await Promise.all(Array.from({ length: 500 }, async (_, i) => await app.rooms.broadcast('burst', i)))
  const got = []
  for (let i = 1; i <= 500; i++) got.push((await a.next((f) => f.type === 'message')).offset)
  t.same(got, Array.from({ length: 500 }, (_, i) => i + 1))
})
