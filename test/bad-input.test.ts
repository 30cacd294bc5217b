import t, { type Test } from 'tap'
import Type from 'typebox'
import type { Socket } from 'node:net'
import { serverSocketOf, serverSockets, startApp } from './helpers/server.js'
import { TestSocket, writeAtOnce } from './helpers/socket.js'
import { guard } from './helpers/until.js'

/** Send something bad, expect exactly this error, then prove the connection still works. */
async function expectError (t: Test, socket: TestSocket, bad: unknown, expected: Record<string, unknown>): Promise<void> {
  socket.send(bad)
  const error = await socket.next((f) => f.type === 'error', `an error for ${String(bad).slice(0, 60)}`)
  t.match(error, { type: 'error', ...expected }, `${expected.code as string} for ${typeof bad === 'string' ? bad.slice(0, 60) : JSON.stringify(bad).slice(0, 60)}`)
  t.type(error.message, 'string')
  t.ok(error.message.length > 10, 'the message is a sentence')
  await socket.sync()
}

t.test('INVALID_FRAME for anything that is not a well-typed frame; the connection stays usable', async (t) => {
  const { wsUrl } = await startApp(t)
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  const cases: Array<[unknown, Record<string, unknown>]> = [
    ['not json', {}],
    ['{"type":"join",', {}],
    ['42', {}],
    ['"join"', {}],
    ['null', {}],
    ['[{"type":"join","room":"r"}]', {}],
    [{ room: 'r' }, {}],
    [{ type: 7 }, {}],
    [{ type: 'join' }, {}],
    [{ type: 'join', room: 'r', id: 1.5 }, {}],
    [{ type: 'join', room: 'r', id: '' }, {}],
    [{ type: 'join', room: 'r', id: 'x'.repeat(65) }, {}],
    [{ type: 'join', room: 'r', since: { offset: -1, epoch: 'e' }, id: 'a' }, { id: 'a' }],
    [{ type: 'join', room: 'r', since: { offset: 1 }, id: 2 }, { id: 2 }],
    [{ type: 'publish', room: 'r', id: 'no-data' }, { id: 'no-data' }],
    [{ type: 'leave', id: 'x' }, { id: 'x' }]
  ]
  for (const [bad, extra] of cases) await expectError(t, a, bad, { code: 'INVALID_FRAME', ...extra })
  const error = a.frames.find((f) => f.type === 'error' && f.id === 'no-data')
  t.match(error?.message, /data/, 'the message names the missing field')
})

t.test('a binary frame is INVALID_FRAME and the connection stays open', async (t) => {
  const { wsUrl } = await startApp(t)
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  a.ws.send(Buffer.from(JSON.stringify({ type: 'ping' })), { binary: true })
  t.match(await a.next((f) => f.type === 'error'), { code: 'INVALID_FRAME', message: /Binary/ })
  await a.sync()
})

t.test('UNKNOWN_TYPE for a type outside the contract, with the id echoed', async (t) => {
  const { wsUrl } = await startApp(t)
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  await expectError(t, a, { type: 'subscribe', room: 'r', id: 9 }, { code: 'UNKNOWN_TYPE', id: 9 })
  await expectError(t, a, { type: '__proto__' }, { code: 'UNKNOWN_TYPE' })
  await expectError(t, a, { type: 'toString' }, { code: 'UNKNOWN_TYPE' })
})

t.test('INVALID_ROOM for names outside 1-128 of A-Z a-z 0-9 _ - . :', async (t) => {
  const { wsUrl } = await startApp(t)
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  for (const room of ['', 'has space', 'x'.repeat(129), 'é', 'a/b', 7, null]) {
    await expectError(t, a, { type: 'join', room, id: 'j' }, { code: 'INVALID_ROOM', id: 'j' })
  }
  await expectError(t, a, { type: 'publish', room: 'no#hash', data: 1 }, { code: 'INVALID_ROOM' })
  const ok = await a.join('A-z_0.9:' + 'x'.repeat(120))
  t.equal(ok.type, 'joined', 'every allowed character and 128 characters are accepted')
})

t.test('NOT_IN_ROOM for publish and leave outside a room', async (t) => {
  const { wsUrl } = await startApp(t)
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  await expectError(t, a, { type: 'publish', room: 'r', data: 1, id: 1 }, { code: 'NOT_IN_ROOM', id: 1, room: 'r' })
  await expectError(t, a, { type: 'leave', room: 'r', id: 2 }, { code: 'NOT_IN_ROOM', id: 2, room: 'r' })
  await a.join('r')
  await a.request({ type: 'leave', room: 'r' })
  await expectError(t, a, { type: 'publish', room: 'r', data: 1, id: 3 }, { code: 'NOT_IN_ROOM', id: 3 })
})

t.test('PAYLOAD_TOO_LARGE for data over maxMessageBytes; nothing is published', async (t) => {
  const { wsUrl, app } = await startApp(t, { maxMessageBytes: 1000, maxFrameBytes: 4000 })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  await a.join('r')
  await expectError(t, a, { type: 'publish', room: 'r', id: 1, data: 'x'.repeat(1000) }, { code: 'PAYLOAD_TOO_LARGE', id: 1, room: 'r' })
  t.equal((await app.rooms.get('r'))?.offset, 0, 'nothing was published')
  const ack = await a.request({ type: 'publish', room: 'r', data: 'x'.repeat(990) })
  t.equal(ack.offset, 1, 'data just under the limit goes through')
})

t.test('a frame over maxFrameBytes closes with 1009', async (t) => {
  const { wsUrl } = await startApp(t, { maxMessageBytes: 1000, maxFrameBytes: 4000 })
  const a = await TestSocket.open(wsUrl)
  a.send({ type: 'publish', room: 'r', data: 'x'.repeat(5000) })
  t.equal((await a.closed).code, 1009)
})

t.test('a text frame that is not valid UTF-8 closes with 1007; the member leaves; the process carries on', async (t) => {
  const { wsUrl, app } = await startApp(t)
  const a = await TestSocket.open(wsUrl)
  const b = await TestSocket.open(wsUrl)
  t.teardown(() => b.close())
  await a.join('r')
  await b.join('r')
  a.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false })
  t.equal((await a.closed).code, 1007)
  t.match(await b.next((f) => f.type === 'presence' && f.leaves.length > 0), { leaves: [{ id: a.welcome.user.id }] })
  t.equal((await app.rooms.get('r'))?.count, 1)
})

// ws refuses these before the plugin sees them, and queues its close frame behind the replies of the same turn.
t.test('frames ws refuses, read with good ones in one turn: the good ones are answered, then the close has its code', async (t) => {
  const { wsUrl } = await startApp(t, { maxMessageBytes: 1000, maxFrameBytes: 4000 })
  const tooLarge = { type: 'publish', room: 'elsewhere', data: 'x'.repeat(5000) }
  const notUtf8 = Buffer.from([0x7b, 0xff, 0xfe, 0x7d])
  for (const [bad, code] of [[tooLarge, 1009], [notUtf8, 1007]] as const) {
    const a = await TestSocket.open(wsUrl)
    const b = await TestSocket.open(wsUrl)
    t.teardown(() => b.close())
    const room = `r${code}`
    await a.join(room)
    await b.join(room)
    // A ping (a reply) and a publish (an ack and a fan-out to a and b), then the refused frame: one TCP write.
    writeAtOnce(a.ws, [{ type: 'ping', id: 'p' }, { type: 'publish', room, id: 'm', data: 'before' }, bad])
    const closed = await a.closed
    t.equal(closed.code, code, `closed ${code}`)
    t.match(a.frames.find((f) => f.id === 'p'), { type: 'pong' }, `${code}: the ping before it was answered`)
    t.match(a.frames.find((f) => f.id === 'm'), { type: 'ack', offset: 1 }, `${code}: the publish before it was acked`)
    t.match(a.frames.find((f) => f.type === 'message'), { data: 'before' }, `${code}: and delivered to the sender`)
    t.match(await b.next((f) => f.type === 'message'), { data: 'before' }, `${code}: and to the other member`)
  }
})

t.test('a peer that does not answer the close of a refused frame is cut after closeTimeoutMs, not ws\'s 30 s; the close frame was sent', async (t) => {
  const { wsUrl, app } = await startApp(t, { maxMessageBytes: 1000, maxFrameBytes: 4000, closeTimeoutMs: 200 })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.ws.terminate())
  const [server] = serverSockets(app)
  // Not events.once: that rejects on the socket's 'error', which ws emits for the refused frame.
  const cut = new Promise<void>((resolve) => server!.once('close', () => resolve()))
  // It reads nothing more for now: neither the close frame nor the end of the connection.
  const client = (a.ws as unknown as { _socket: Socket })._socket
  client.pause()
  const sent = Date.now()
  writeAtOnce(a.ws, [{ type: 'publish', room: 'r', data: 'x'.repeat(5000) }])
  await guard(cut, 'the server to cut the socket')
  t.ok(Date.now() - sent >= 190, 'the server waited for the peer before it cut the socket')
  client.resume()
  t.equal((await a.closed).code, 1009, 'what the peer reads then is the close frame')
})

for (const when of ['its token', 'a refresh of its token'] as const) {
  t.test(`a frame ws refuses while verifyToken checks ${when}: the connection is still cut after closeTimeoutMs, and not welcomed`, async (t) => {
    let release = (): void => {}
    let checking = (): void => {}
    const checked = new Promise<void>((resolve) => { checking = resolve })
    let calls = 0
    const { wsUrl, app } = await startApp(t, {
      maxMessageBytes: 1000,
      maxFrameBytes: 4000,
      closeTimeoutMs: 200,
      verifyToken: async (token: string) => {
        calls++
        if (calls === (when === 'its token' ? 1 : 2)) {
          checking()
          await new Promise<void>((resolve) => { release = resolve })
        }
        return { user: { id: token, name: token } }
      }
    })
    const a = await TestSocket.connect(wsUrl)
    t.teardown(() => a.ws.terminate())
    const server = serverSocketOf(app, a)
    if (when === 'a refresh of its token') await a.authenticate('ada')
    a.send({ type: 'auth', token: 'ada' })
    await checked
    const cut = new Promise<void>((resolve) => server.once('close', () => resolve()))
    // The server has refused the frame once ws reports it (after the plugin's own listener).
    const refused = new Promise<void>((resolve) => server.once('error', () => resolve()))
    const client = (a.ws as unknown as { _socket: Socket })._socket
    client.pause()
    writeAtOnce(a.ws, [{ type: 'publish', room: 'r', data: 'x'.repeat(5000) }])
    await refused
    release()
    await guard(cut, 'the server to cut the socket')
    client.resume()
    await a.closed
    t.equal(a.frames.filter((f) => f.type === 'welcome').length, when === 'its token' ? 0 : 1, 'no welcome after the refusal')
    t.equal(app.rooms.connections, 0)
  })
}

t.test('INVALID_DATA names the failing path', async (t) => {
  const dataSchema = Type.Object({ text: Type.String({ maxLength: 10 }), tags: Type.Optional(Type.Array(Type.String())) })
  const { wsUrl } = await startApp(t, { dataSchema })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  await a.join('r')
  await expectError(t, a, { type: 'publish', room: 'r', id: 1, data: { text: 5 } }, { code: 'INVALID_DATA', id: 1, room: 'r', message: /\/data\/text/ })
  await expectError(t, a, { type: 'publish', room: 'r', id: 2, data: { text: 'ok', tags: ['a', 3] } }, { code: 'INVALID_DATA', message: /\/data\/tags\/1/ })
  await expectError(t, a, { type: 'publish', room: 'r', id: 3, data: {} }, { code: 'INVALID_DATA', message: /text/ })
  await expectError(t, a, { type: 'publish', room: 'r', id: 4, data: 'str' }, { code: 'INVALID_DATA', message: /\/data/ })
  t.equal((await a.request({ type: 'publish', room: 'r', data: { text: 'fine' } })).offset, 1)
})

t.test('TOO_MANY_ROOMS past maxRoomsPerConnection', async (t) => {
  const { wsUrl } = await startApp(t, { maxRoomsPerConnection: 2 })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  await a.join('r1')
  await a.join('r2')
  await expectError(t, a, { type: 'join', room: 'r3', id: 3 }, { code: 'TOO_MANY_ROOMS', id: 3, room: 'r3' })
  t.equal((await a.join('r2')).type, 'joined', 'rejoining a room one is in does not count')
  await a.request({ type: 'leave', room: 'r1' })
  t.equal((await a.join('r3')).type, 'joined', 'after a leave there is room again')
})

t.test('ROOM_FULL past maxMembersPerRoom; a second tab of a member still gets in', async (t) => {
  const { wsUrl, app } = await startApp(t, {
    maxMembersPerRoom: 1,
    authenticate: (request) => ({ id: String(request.headers['x-user']), name: String(request.headers['x-user']) })
  })
  const a1 = await TestSocket.open(wsUrl, { headers: { 'x-user': 'a' } })
  const a2 = await TestSocket.open(wsUrl, { headers: { 'x-user': 'a' } })
  const b = await TestSocket.open(wsUrl, { headers: { 'x-user': 'b' } })
  t.teardown(() => Promise.all([a1.close(), a2.close(), b.close()]))
  await a1.join('r')
  await expectError(t, b, { type: 'join', room: 'r', id: 1 }, { code: 'ROOM_FULL', id: 1, room: 'r' })
  t.equal((await a2.join('r')).type, 'joined')
  await expectError(t, b, { type: 'publish', room: 'r', data: 1 }, { code: 'NOT_IN_ROOM' })
  t.same((await app.rooms.get('r'))?.members, [{ id: 'a', name: 'a' }], 'the refused join left no trace')
})

t.test('data nested deeper than JSON can encode is INVALID_DATA and takes no offset', async (t) => {
  const { wsUrl, app } = await startApp(t, { maxMessageBytes: 200_000, maxFrameBytes: 400_000 })
  const a = await TestSocket.open(wsUrl)
  const b = await TestSocket.open(wsUrl)
  t.teardown(() => Promise.all([a.close(), b.close()]))
  await a.join('r')
  await b.join('r')
  const depth = 50_000
  await expectError(t, a, `{"type":"publish","room":"r","id":"deep","data":${'['.repeat(depth)}${']'.repeat(depth)}}`, { code: 'INVALID_DATA', id: 'deep', room: 'r' })
  t.equal((await app.rooms.get('r'))?.offset, 0, 'no offset was taken')
  t.equal((await a.request({ type: 'publish', room: 'r', data: 'next' })).offset, 1, 'the next publish gets offset 1: no hole')
  t.equal((await b.next((f) => f.type === 'message')).offset, 1)
})

t.test('prototype keys are plain data: no pollution, rooms named like Object members work', async (t) => {
  const { wsUrl, app } = await startApp(t)
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  a.send('{"type":"join","room":"__proto__","id":1,"__proto__":{"admin":true}}')
  t.match(await a.next((f) => f.id === 1), { type: 'joined', room: '__proto__' })
  await a.join('constructor')
  const ack = await a.request({ type: 'publish', room: '__proto__', data: JSON.parse('{"__proto__":{"polluted":true}}') })
  t.equal(ack.offset, 1)
  t.same((await a.next((f) => f.type === 'message')).data, JSON.parse('{"__proto__":{"polluted":true}}'), 'delivered as sent')
  t.equal(({} as Record<string, unknown>).polluted, undefined)
  t.equal(({} as Record<string, unknown>).admin, undefined)
  t.same((await app.rooms.list()).rooms.map((r) => r.name), ['__proto__', 'constructor'])
})

t.test('undefined data from the server API is INVALID_DATA', async (t) => {
  const { app } = await startApp(t)
  await t.rejects(app.rooms.broadcast('r', undefined), { code: 'INVALID_DATA' })
  await t.rejects(app.rooms.broadcast('r', { n: 1n }), { code: 'INVALID_DATA' })
})
