import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import WebSocket from 'ws'
import websocket from '@fastify/websocket'
import rooms, { type RoomsOptions } from '../src/index.js'
import { injectRooms, RoomsTestError } from '../src/testing.js'

/** An app as an app's own test builds it: registered, never listening. */
async function build (t: { teardown: (fn: () => unknown) => void }, options: RoomsOptions = {}): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(rooms, { presenceIntervalMs: 0, ...options })
  t.teardown(async () => await app.close())
  return app
}

t.test('injectRooms: welcome, join, publish, messages and presence between two sockets, without a port', async (t) => {
  const app = await build(t)
  const ada = await injectRooms(app, { query: { name: 'ada' } })
  const bob = await injectRooms(app, { query: { name: 'bob' } })
  t.equal(app.server.listening, false, 'no port was opened')
  t.match(ada.welcome, { type: 'welcome', protocol: 2, user: { name: 'ada' } })
  t.match(await ada.join('lobby'), { type: 'joined', room: 'lobby', count: 1 })
  t.match(await bob.join('lobby', { history: 0 }), { count: 2 })
  t.ok(await ada.next('presence', (p) => p.joins.some((m) => m.name === 'bob')), 'ada sees bob join')
  t.match(await bob.request({ type: 'publish', room: 'lobby', data: 'hi' }), { type: 'ack', offset: 1 })
  const message = await ada.next('message', (m) => m.offset === 1)
  t.equal(message.data, 'hi')
  t.equal(message.from?.name, 'bob')
  await app.rooms.broadcast('lobby', { from: 'server' })
  t.match(await bob.next('message', (m) => m.offset === 2), { data: { from: 'server' } })
  t.equal(bob.pending('message').length, 1, 'its own message is still unread')
  t.same(await bob.close(), { code: 1000, reason: '' })
  t.ok(await ada.next('presence', (p) => p.leaves.some((m) => m.name === 'bob')), 'and leave at once: the server saw the close')
  await ada.close()
})

t.test('injectRooms: the same when the app registered @fastify/websocket itself: a close reaches the server at once', async (t) => {
  const app = Fastify()
  await app.register(websocket)
  await app.register(rooms, { presenceIntervalMs: 0 })
  t.teardown(async () => await app.close())
  const ada = await injectRooms(app, { query: { name: 'ada' } })
  const bob = await injectRooms(app, { query: { name: 'bob' } })
  await ada.join('lobby')
  await bob.join('lobby')
  t.same(await bob.close(), { code: 1000, reason: '' })
  t.ok(await ada.next('presence', (p) => p.leaves.some((m) => m.name === 'bob')), 'ada sees bob leave at once: the server saw the close')
  await ada.close()
})

t.test('injectRooms: refusals reject with the server\'s code or status; waits end when the socket closes', async (t) => {
  const app = await build(t, {
    authenticate: (request) => {
      if (request.headers['x-user'] === undefined) throw new Error('no user')
      return { id: String(request.headers['x-user']), name: String(request.headers['x-user']) }
    },
    onJoin: ({ room }) => room !== 'staff'
  })
  await t.rejects(injectRooms(app), /Unexpected server response: 401/, 'a refused upgrade')
  const ada = await injectRooms(app, { headers: { 'x-user': 'ada' } })
  t.equal(ada.welcome.user.id, 'ada')
  await t.rejects(ada.join('staff'), new RoomsTestError({ type: 'error', code: 'FORBIDDEN', message: 'You may not join room "staff".', room: 'staff' }))
  await t.rejects(ada.join('bad room'), { name: 'RoomsTestError', code: 'INVALID_ROOM' })
  ada.send('not json')
  t.match(await ada.next('error'), { code: 'INVALID_FRAME' })
  const waiting = ada.next('message')
  t.equal(await app.rooms.disconnect(ada.welcome.connectionId, 'bye'), true)
  await t.rejects(waiting, /The socket closed \(code 4003: bye\) while waiting for a message frame/)
  t.same(await ada.closed, { code: 4003, reason: 'bye' })
  await t.rejects(ada.next('pong'), /The socket closed \(code 4003: bye\) before a pong frame came/)
})

t.test('injectRooms: a token in band with verifyToken; a bad one rejects with UNAUTHORIZED', async (t) => {
  const app = await build(t, {
    verifyToken: async (token) => {
      if (token !== 'good') throw new Error('bad token')
      return { user: { id: 'ada', name: 'ada' } }
    }
  })
  const ada = await injectRooms(app, { token: 'good' })
  t.equal(ada.welcome.user.id, 'ada')
  await t.rejects(injectRooms(app, { token: 'forged' }), { name: 'RoomsTestError', code: 'UNAUTHORIZED' })
  await t.rejects(injectRooms(app, { timeoutMs: 100 }), /closed \(code 4001|No welcome from the server within 100 ms/)
  await ada.close()
})

t.test('injectRooms: a match that throws rejects its wait with the error; the socket goes on reading and closes', async (t) => {
  const app = await build(t)
  const ada = await injectRooms(app, { query: { name: 'ada' } })
  await ada.join('lobby')
  const thrown = ada.next('message', (m) => (m.data as { text: string }).text === 'hi')
  const fine = ada.next('message', (m) => m.offset === 2)
  await app.rooms.broadcast('lobby', null)
  await t.rejects(thrown, TypeError, 'the match threw on data: null; its wait rejects with what it threw')
  await app.rooms.broadcast('lobby', { text: 'hi' })
  t.match(await fine, { data: { text: 'hi' } }, 'frames after it still arrive, to other waits')
  t.match(ada.pending('message'), [{ offset: 1, data: null }], 'the frame the match threw on is kept unread')
  await t.rejects(ada.next('message', () => { throw new Error('picky') }), /picky/, 'on an unread frame too')
  t.same(await ada.close(), { code: 1000, reason: '' })
})

t.test('injectRooms: a refused token, or no welcome in time, cuts the server\'s end too, so app.close() does not wait for closeTimeoutMs', async (t) => {
  // A close timeout far longer than any guard here: a server socket left open would show.
  const app = await build(t, {
    closeTimeoutMs: 60_000,
    verifyToken: async (token) => {
      if (token !== 'good') throw new Error('bad token')
      return { user: { id: 'ada', name: 'ada' } }
    }
  })
  await app.ready()
  const serverSockets: WebSocket[] = []
  app.websocketServer.on('connection', (socket) => serverSockets.push(socket))
  /** The server socket's close, or a rejection after a guard far below closeTimeoutMs. */
  const serverClosed = async (i: number): Promise<void> => await new Promise<void>((resolve, reject) => {
    const socket = serverSockets[i] as WebSocket
    if (socket.readyState === WebSocket.CLOSED) return resolve()
    const timer = setTimeout(() => reject(new Error('the server kept its end of the socket open')), 10_000)
    socket.once('close', () => { clearTimeout(timer); resolve() })
  })

  await t.rejects(injectRooms(app, { token: 'forged' }), { name: 'RoomsTestError', code: 'UNAUTHORIZED' })
  t.equal(serverSockets.length, 1)
  await serverClosed(0)
  t.pass('the refused connection is closed on the server at once')

  await t.rejects(injectRooms(app, { timeoutMs: 100 }), /No welcome from the server within 100 ms/)
  t.equal(serverSockets.length, 2)
  await serverClosed(1)
  t.pass('so is one that got no welcome in time')
})

t.test('injectRooms: a frame the test sends with an id of its own is the test\'s to read with next()', async (t) => {
  const app = await build(t)
  const ada = await injectRooms(app, { query: { name: 'ada' }, timeoutMs: 2000 })
  await ada.join('a')
  // The ids a test writes by hand (t1, 1, ...) are not the helper's.
  ada.send({ type: 'join', room: 'b', id: 't1' })
  t.match(await ada.next('joined'), { type: 'joined', room: 'b', id: 't1' })
  ada.send({ type: 'join', room: 'c', id: 1 })
  t.match(await ada.next('joined'), { type: 'joined', room: 'c', id: 1 })
})

t.test('injectRooms: a pending next() does not take the reply to request() or join(); the event it waits for still comes to it', async (t) => {
  const app = await build(t)
  // Far below tap's timeout: a reply taken by the wrong wait fails here, saying which.
  const ada = await injectRooms(app, { query: { name: 'ada' }, timeoutMs: 2000 })
  const putIn = ada.next('joined')
  t.match(await ada.join('lobby'), { type: 'joined', room: 'lobby', id: /^injectRooms-[0-9a-f]{8}-1$/ }, 'join gets its own reply')
  t.equal(await app.rooms.join(ada.welcome.connectionId, 'vip'), true)
  t.match(await putIn, { type: 'joined', room: 'vip' }, 'next(\'joined\') gets the server\'s join')
  t.notOk('id' in await putIn, 'the unsolicited one, without an id')

  const kicked = ada.next('left')
  t.match(await ada.request({ type: 'leave', room: 'lobby' }), { type: 'left', room: 'lobby', id: /^injectRooms-[0-9a-f]{8}-2$/ }, 'request gets the reply to leave')
  t.equal(await app.rooms.removeFromRoom(ada.welcome.connectionId, 'vip', 'go away'), true)
  t.same(await kicked, { type: 'left', room: 'vip', reason: 'go away' }, 'next(\'left\') gets the removal')

  const refused = ada.next('error')
  await t.rejects(ada.join('bad room'), { name: 'RoomsTestError', code: 'INVALID_ROOM' }, 'join rejects with its error reply')
  ada.send('not json')
  t.match(await refused, { code: 'INVALID_FRAME' }, 'next(\'error\') gets the error no request asked for')
  t.same(ada.pending(), [], 'nothing left over')
  await ada.close()
})

/** `promise` settled, or a clear failure after `ms`: a helper that hangs fails the test rather than stalling it. */
async function settled<T> (promise: Promise<T>, ms: number, what: string): Promise<PromiseSettledResult<T>> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const guard = new Promise<never>((resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms) })
  try {
    return await Promise.race([Promise.allSettled([promise]).then(([result]) => result as PromiseSettledResult<T>), guard])
  } finally {
    clearTimeout(timer)
  }
}

t.test('injectRooms: timeoutMs bounds the upgrade too: a hook or authenticate that never finishes, a closed app', async (t) => {
  const upgradeTimedOut = /The upgrade of \/ws got no answer within 200 ms/
  await t.test('authenticate that does not resolve (authTimeoutMs far longer)', async (t) => {
    // Held until the test ends, not forever: the plugin's authTimeoutMs timer would keep the process up.
    let letIn!: () => void
    const gate = new Promise<void>((resolve) => { letIn = resolve })
    const app = await build(t, { authTimeoutMs: 60_000, authenticate: async () => { await gate; return { id: 'ada', name: 'ada' } } })
    t.teardown(letIn)
    const result = await settled(injectRooms(app, { timeoutMs: 200 }), 5000, 'injectRooms')
    t.match(result, { status: 'rejected', reason: { message: upgradeTimedOut } })
  })
  await t.test('an onRequest hook of the app that does not call done', async (t) => {
    const app = Fastify()
    const held: Array<() => void> = []
    t.teardown(async () => {
      for (const done of held) done()
      await app.close()
    })
    app.addHook('onRequest', (request, reply, done) => { if (request.url.startsWith('/ws')) held.push(done); else done() })
    await app.register(rooms, { presenceIntervalMs: 0 })
    const result = await settled(injectRooms(app, { timeoutMs: 200 }), 5000, 'injectRooms')
    t.match(result, { status: 'rejected', reason: { message: upgradeTimedOut } })
  })
  await t.test('an app already closed', async (t) => {
    const app = Fastify()
    await app.register(rooms, { presenceIntervalMs: 0 })
    await app.close()
    const result = await settled(injectRooms(app, { timeoutMs: 200 }), 5000, 'injectRooms')
    t.match(result, { status: 'rejected', reason: { message: upgradeTimedOut } })
  })
})

t.test('injectRooms: an upgrade answered after timeoutMs is cut at both ends, not left open', async (t) => {
  let letIn!: () => void
  const gate = new Promise<void>((resolve) => { letIn = resolve })
  // A close timeout far longer than any guard here: a server socket left open would show.
  const app = await build(t, {
    closeTimeoutMs: 60_000,
    authTimeoutMs: 60_000,
    authenticate: async () => { await gate; return { id: 'ada', name: 'ada' } }
  })
  await app.ready()
  const opened = new Promise<WebSocket>((resolve) => app.websocketServer.once('connection', resolve))
  const result = await settled(injectRooms(app, { timeoutMs: 200 }), 5000, 'injectRooms')
  t.match(result, { status: 'rejected', reason: { message: /got no answer within 200 ms/ } })
  letIn()
  const serverSocket = await settled(opened, 5000, 'the late upgrade')
  t.equal(serverSocket.status, 'fulfilled', 'the upgrade completed after the rejection')
  const socket = (serverSocket as PromiseFulfilledResult<WebSocket>).value
  const closed = socket.readyState === WebSocket.CLOSED ? Promise.resolve() : new Promise<void>((resolve) => socket.once('close', () => resolve()))
  t.equal((await settled(closed, 5000, 'the server\'s end of the late socket')).status, 'fulfilled', 'the helper cut it')
  t.equal(app.websocketServer.clients.size, 0, 'no connection is left on the server')
})

t.test('injectRooms: a timeout says what it waited for in a sentence, and lists whole unread frames', async (t) => {
  let release!: () => void
  const held = new Promise<void>((resolve) => { release = resolve })
  const app = await build(t, { onPublish: async ({ data }) => { if (data === 'hold') await held } })
  t.teardown(() => release())
  const ada = await injectRooms(app, { query: { name: 'ada' }, timeoutMs: 200 })
  await t.rejects(ada.next('message'), { message: 'No message frame within 200 ms; nothing unread' })
  // In a room of its own: the held publish, once let go, sends ada nothing.
  const carl = await injectRooms(app, { query: { name: 'carl' }, timeoutMs: 200 })
  await carl.join('held')
  await t.rejects(carl.request({ type: 'publish', room: 'held', data: 'hold' }), { message: 'No reply to publish within 200 ms; nothing unread' })
  release()
  await carl.close()
  await ada.join('lobby')

  // Ten frames of about 110 characters: more than the message lists.
  for (let i = 0; i < 10; i++) await app.rooms.broadcast('lobby', { text: 'x'.repeat(40) })
  const flood = await settled(ada.next('message', (m) => m.offset === 99), 5000, 'next')
  t.equal(flood.status, 'rejected')
  const message = (flood as PromiseRejectedResult).reason.message as string
  const parts = /^No message frame that the match accepts within 200 ms; unread: (\[.*\]) and (\d+) more \((\d+) message frames\); see pending\(\)$/.exec(message)
  t.ok(parts, `the message reads as expected: ${message}`)
  const [, listed, more, ofType] = parts ?? []
  const frames = JSON.parse(listed ?? 'null') as unknown[]
  t.ok(frames.length > 0, 'some frames are listed')
  t.same(frames, ada.pending().slice(0, frames.length), 'each listed whole, in order')
  t.equal(frames.length + Number(more), ada.pending().length, 'the rest counted')
  t.equal(more, ofType)

  const bob = await injectRooms(app, { query: { name: 'bob' }, timeoutMs: 200 })
  await bob.join('lobby', { history: 0 })
  await app.rooms.broadcast('lobby', { text: 'y'.repeat(600) })
  await bob.next('message', (m) => (m.data as { text: string }).text.length === 600)
  await app.rooms.broadcast('lobby', { text: 'y'.repeat(600) })
  await t.rejects(bob.next('pong'), { message: 'No pong frame within 200 ms; unread: 1 message frame, too long to list here; see pending()' })
  await Promise.all([ada.close(), bob.close()])
})

t.test('injectRooms: no welcome because no token was given, with verifyToken: the timeout says to pass one', async (t) => {
  let answer!: () => void
  const answered = new Promise<void>((resolve) => { answer = resolve })
  const app = await build(t, {
    authTimeoutMs: 60_000,
    verifyToken: async (token) => {
      if (token === 'slow') await answered
      return { user: { id: token, name: token } }
    }
  })
  t.teardown(() => answer())
  await t.rejects(injectRooms(app, { timeoutMs: 200 }), {
    message: 'No welcome from the server within 200 ms: the server is waiting for an auth frame (verifyToken is configured and the upgrade carried no credentials): pass injectRooms a `token`; nothing unread'
  })
  await t.rejects(injectRooms(app, { token: 'slow', timeoutMs: 200 }), { message: 'No welcome from the server within 200 ms; nothing unread' }, 'not when a token was given')
  await t.rejects(injectRooms(app, { headers: { authorization: 'Bearer slow' }, timeoutMs: 200 }), /^The upgrade of \/ws got no answer within 200 ms/, 'a Bearer header is checked at the upgrade')
})
