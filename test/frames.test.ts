import t from 'tap'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { eachAdapter } from './helpers/deployment.js'

eachAdapter(t, 'welcome is the first frame, with connection id, user, protocol and heartbeat', async (t, deploy) => {
  const d = await deploy({ heartbeatMs: 30_000 })
  const a = await TestSocket.open(`${d.node(0).wsUrl}?name=ada`)
  t.teardown(() => a.close())
  t.equal(a.frames[0]?.type, 'welcome')
  t.match(a.welcome, { type: 'welcome', protocol: 2, heartbeatMs: 30_000, user: { name: 'ada' } })
  t.type(a.welcome.connectionId, 'string')
  t.type(a.welcome.user.id, 'string')
  const b = await TestSocket.open(d.node(1).wsUrl)
  t.teardown(() => b.close())
  t.match(b.welcome.user.name, /^guest-[0-9a-f]{4}$/, 'anonymous without a name gets a guest name')
  t.not(b.welcome.user.id, a.welcome.user.id, 'each anonymous connection is its own user')
  t.not(b.welcome.connectionId, a.welcome.connectionId)
})

t.test('anonymous ids are 16 base64url characters, all different, past the 256 drawn at once', async (t) => {
  const { wsUrl } = await startApp(t)
  const users: Array<{ id: string, name: string }> = []
  // 300 connections, 20 at a time: the pool of random bytes is drawn again after 256 ids.
  for (let i = 0; i < 300; i += 20) {
    const sockets = await Promise.all(Array.from({ length: 20 }, async (_, j) => await TestSocket.open(i + j === 299 ? `${wsUrl}?name=zed` : wsUrl)))
    for (const s of sockets) {
      users.push(s.welcome.user)
      s.close()
    }
  }
  t.equal(new Set(users.map((u) => u.id)).size, 300, 'no two ids alike')
  t.ok(users.every((u) => /^[A-Za-z0-9_-]{16}$/.test(u.id)), 'each id is 16 base64url characters')
  const guests = users.filter((u) => u.name !== 'zed')
  t.equal(guests.length, 299)
  t.ok(guests.every((u) => u.name === `guest-${Buffer.from(u.id, 'base64url').toString('hex', 0, 2)}`), 'a guest name shows its id\'s first 2 bytes in hex')
})

eachAdapter(t, 'join replies joined with members, offset and epoch; leave replies left', async (t, deploy) => {
  const d = await deploy()
  const a = await TestSocket.open(`${d.node(0).wsUrl}?name=ada`)
  t.teardown(() => a.close())
  const joined = await a.join('lobby')
  t.match(joined, { type: 'joined', id: 1, room: 'lobby', offset: 0, members: [{ id: a.welcome.user.id, name: 'ada' }] })
  t.type(joined.epoch, 'string')
  t.notOk('recovered' in joined, 'recovered only comes with since')
  const left = await a.request({ type: 'leave', room: 'lobby' })
  t.same(left, { type: 'left', id: 2, room: 'lobby' })
})

eachAdapter(t, 'join and leave reply even without an id', async (t, deploy) => {
  const d = await deploy()
  const a = await TestSocket.open(d.node(0).wsUrl)
  t.teardown(() => a.close())
  a.send({ type: 'join', room: 'r1' })
  const joined = await a.next((f) => f.type === 'joined')
  t.notOk('id' in joined)
  t.equal(joined.room, 'r1')
  a.send({ type: 'leave', room: 'r1' })
  t.same(await a.next((f) => f.type === 'left'), { type: 'left', room: 'r1' })
})

eachAdapter(t, 'joining a room one is already in replies joined again, not an error', async (t, deploy) => {
  const d = await deploy()
  const a = await TestSocket.open(d.node(0).wsUrl)
  t.teardown(() => a.close())
  const first = await a.join('r')
  await a.request({ type: 'publish', room: 'r', data: 1 })
  await a.next((f) => f.type === 'message' && f.offset === 1)
  const again = await a.join('r')
  t.match(again, { type: 'joined', room: 'r', epoch: first.epoch, offset: 1, members: [{ id: a.welcome.user.id }] })
  // A later message is the barrier: a replay of the second join would have come before it.
  await d.node(1).app.rooms.broadcast('r', 2)
  await a.next((f) => f.type === 'message' && f.offset === 2)
  t.same(a.frames.filter((f) => f.type === 'message').map((m) => m.offset), [1, 2], 'the message came once; the second join replayed nothing')
})

eachAdapter(t, 'publish delivers message to every member, publisher included, then ack', async (t, deploy) => {
  const d = await deploy()
  const a = await TestSocket.open(`${d.node(0).wsUrl}?name=ada`)
  const b = await TestSocket.open(`${d.node(1).wsUrl}?name=bob`)
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

eachAdapter(t, 'publish without id gets no ack; a string id is echoed as is', async (t, deploy) => {
  const d = await deploy()
  const a = await TestSocket.open(d.node(0).wsUrl)
  t.teardown(() => a.close())
  await a.join('r')
  a.send({ type: 'publish', room: 'r', data: 'no-id' })
  await a.next((f) => f.type === 'message')
  // Frames of one connection are handled in order: an ack would come before the pong.
  await a.sync()
  t.equal(a.pending('ack').length, 0, 'no ack without id')
  a.send({ type: 'publish', room: 'r', id: 'req-7', data: null })
  t.same(await a.next((f) => f.type === 'ack'), { type: 'ack', id: 'req-7', room: 'r', offset: 2 })
  t.match(await a.next((f) => f.type === 'message'), { offset: 2, data: null })
})

eachAdapter(t, 'members not in the room get nothing; messages are per room', async (t, deploy) => {
  const d = await deploy()
  const a = await TestSocket.open(d.node(0).wsUrl)
  const b = await TestSocket.open(d.node(1).wsUrl)
  // Witnesses: a member of the other room on each one's node, so that on Redis
  // both rooms' traffic reaches both nodes, which must route it by room.
  const yOnA = await TestSocket.open(d.node(0).wsUrl)
  const xOnB = await TestSocket.open(d.node(1).wsUrl)
  t.teardown(() => Promise.all([a, b, yOnA, xOnB].map(async (s) => await s.close())))
  await a.join('x')
  await b.join('y')
  await yOnA.join('y')
  await xOnB.join('x')
  await a.request({ type: 'publish', room: 'x', data: 1 })
  const ack = await b.request({ type: 'publish', room: 'y', data: 2 })
  t.equal(ack.offset, 1, 'offsets are per room')
  await a.next((f) => f.type === 'message')
  await b.next((f) => f.type === 'message')
  // A witness got the other room's message: its node has fanned it out, so a
  // round trip on a (or b) now shows whatever that node wrote to it.
  await yOnA.next((f) => f.type === 'message' && f.room === 'y')
  await xOnB.next((f) => f.type === 'message' && f.room === 'x')
  await a.sync()
  await b.sync()
  t.same(a.frames.filter((f) => f.type === 'message').map((m) => m.room), ['x'])
  t.same(b.frames.filter((f) => f.type === 'message').map((m) => m.room), ['y'])
})

eachAdapter(t, 'ping replies pong, with and without id', async (t, deploy) => {
  const d = await deploy()
  const a = await TestSocket.open(d.node(1).wsUrl)
  t.teardown(() => a.close())
  t.same(await a.request({ type: 'ping' }), { type: 'pong', id: 1 })
  a.send({ type: 'ping' })
  t.same(await a.next((f) => f.type === 'pong'), { type: 'pong' })
})

eachAdapter(t, 'after leave, no more messages from the room', async (t, deploy) => {
  const d = await deploy()
  const a = await TestSocket.open(d.node(0).wsUrl)
  const b = await TestSocket.open(d.node(1).wsUrl)
  t.teardown(() => Promise.all([a.close(), b.close()]))
  await a.join('r')
  await b.join('r')
  await a.request({ type: 'leave', room: 'r' })
  await b.request({ type: 'publish', room: 'r', data: 'after' })
  // Back in the room, a gets only what follows its joined offset; the next
  // message is the barrier: anything of the room sent to a came before it.
  t.match(await a.join('r'), { type: 'joined', offset: 1 })
  await b.request({ type: 'publish', room: 'r', data: 'back' })
  await a.next((f) => f.type === 'message' && f.offset === 2)
  t.same(a.frames.filter((f) => f.type === 'message').map((m) => m.data), ['back'], 'nothing published while a was out')
})

// Memory only: frame headers are written by each node for its own sockets; no adapter is involved.
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

eachAdapter(t, 'many messages to one member in one turn of the event loop arrive complete and in order', async (t, deploy) => {
  const d = await deploy()
  const a = await TestSocket.open(d.node(1).wsUrl)
  t.teardown(() => a.close())
  await a.join('burst')
  await Promise.all(Array.from({ length: 500 }, async (_, i) => await d.app.rooms.broadcast('burst', i)))
  const got = []
  for (let i = 1; i <= 500; i++) got.push((await a.next((f) => f.type === 'message')).offset)
  t.same(got, Array.from({ length: 500 }, (_, i) => i + 1))
})
