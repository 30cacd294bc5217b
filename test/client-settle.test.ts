import t, { type Test } from 'tap'
import { createServer, type Socket } from 'node:net'
import { once } from 'node:events'
import WebSocket from 'ws'
import Fastify, { type FastifyInstance } from 'fastify'
import rooms from '../src/index.js'
import { connect, type StateChange } from '../src/client/index.js'
import { startApp } from './helpers/server.js'
import { until } from './helpers/until.js'
import { dropConnection, gate, nextEvent, nextState } from './helpers/client.js'

/** The data of a room's stored messages, as REST shows them. */
async function stored (app: FastifyInstance, room: string): Promise<unknown[]> {
  const response = await app.inject(`/rooms/${room}/messages`)
  return response.statusCode === 404 ? [] : (response.json() as { messages: Array<{ data: unknown }> }).messages.map((m) => m.data)
}

/** The plugin on a given port (startApp picks a free one): a server coming back where it was. */
async function listenOn (t: Test, port: number): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(rooms)
  await app.listen({ port, host: '127.0.0.1' })
  t.teardown(async () => await app.close())
  return app
}

/** A TCP server that accepts connections and never answers: a hung proxy or a firewall that swallows. */
async function blackHole (t: Test, port = 0): Promise<{ port: number, accepted: Socket[], close: () => Promise<void> }> {
  const accepted: Socket[] = []
  const server = createServer((socket) => {
    accepted.push(socket)
    // Read and drop the request, so that the peer's close is seen.
    socket.resume()
  })
  server.listen(port, '127.0.0.1')
  await once(server, 'listening')
  const close = async (): Promise<void> => {
    for (const socket of accepted) socket.destroy()
    if (server.listening) await new Promise((resolve) => server.close(resolve))
  }
  t.teardown(close)
  return { port: (server.address() as { port: number }).port, accepted, close }
}

t.test('a join made while reconnecting that the server refuses rejects with its code and sentence, and leaves no handle', async (t) => {
  const { wsUrl, app } = await startApp(t, { onJoin: ({ room }) => room !== 'private' })
  const client = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const joining = new Promise<{ join: Promise<unknown> }>((resolve) => {
    const off = client.on('state', (state) => { if (state === 'reconnecting') { off(); resolve({ join: client.join('private') }) } })
  })
  for (const socket of app.websocketServer.clients) socket.terminate()
  const { join } = await joining
  await t.rejects(join, { name: 'RoomsClientError', code: 'FORBIDDEN', message: 'You may not join room "private".', room: 'private' })
  t.equal(client.room('private'), undefined)
  t.equal(client.state, 'open')
})

t.test('a join whose connection drops before the reply is sent again after the reconnect and resolves', async (t) => {
  const { wsUrl, app } = await startApp(t)
  const client = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const join = client.join('r')
  // In the same turn: the server has not read the join yet, and never will on this socket.
  for (const socket of app.websocketServer.clients) socket.terminate()
  const [room, again] = await Promise.all([join, client.join('r')])
  t.equal(again, room, 'a second join while the first is pending gets the same handle')
  t.equal(room.status, 'joined')
  t.ok((await app.rooms.get('r'))?.members.some((m) => m.id === client.user?.id), 'the new connection is in the room')
})

t.test('publish on a handle that has left rejects with NOT_IN_ROOM at once, connected or not', async (t) => {
  const g = gate()
  const { wsUrl, app } = await startApp(t, {}, g.setup)
  const client = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const room = await client.join('r')
  await room.leave()
  await t.rejects(room.publish('after leave'), { code: 'NOT_IN_ROOM', room: 'r' })
  const again = await client.join('r')
  t.not(again, room, 'joining again gives a new handle')
  await t.rejects(room.publish('old handle'), { code: 'NOT_IN_ROOM' })
  t.equal(await again.publish('new handle'), 1)

  // Disconnected: a queued publish is settled by the leave, and the room is not rejoined.
  g.closed = true
  await dropConnection(app, client)
  const queued = again.publish('queued')
  await again.leave()
  await t.rejects(queued, { code: 'NOT_IN_ROOM', message: /before the publish could be sent/ })
  await t.rejects(again.publish('after leave'), { code: 'NOT_IN_ROOM' })
  g.closed = false
  const open = nextState(client, 'open')
  client.reconnect()
  await open
  await client.ping()
  t.notOk((await app.rooms.get('r'))?.members.some((m) => m.id === client.user?.id), 'the left room was not rejoined')
  t.same(await stored(app, 'r'), ['new handle'], 'nothing queued was published')
})

t.test('a publish queued while disconnected rejects with TIMEOUT after requestTimeoutMs, and was not published', async (t) => {
  const g = gate()
  const { wsUrl, app } = await startApp(t, {}, g.setup)
  const client = await connect(wsUrl, { WebSocket, requestTimeoutMs: 1000, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const room = await client.join('r')
  g.closed = true
  await dropConnection(app, client)
  const started = Date.now()
  const err = await room.publish('queued').catch((e: unknown) => e)
  t.match(err, { code: 'TIMEOUT', room: 'r', message: /the publish was not sent, so it was not applied/ })
  t.ok(Date.now() - started >= 990, 'after the request timeout')
  g.closed = false
  const rejoined = nextEvent((h) => room.on('joined', h), undefined, { client, room, what: 'the rejoin' })
  client.reconnect()
  await rejoined
  await client.ping()
  t.same(await stored(app, 'r'), [], 'not sent late either')
  t.equal(await room.publish('now'), 1, 'the handle still works')
})

t.test('a join waiting for the connection rejects with TIMEOUT and is not sent later', async (t) => {
  const g = gate()
  const { wsUrl, app } = await startApp(t, {}, g.setup)
  const client = await connect(wsUrl, { WebSocket, requestTimeoutMs: 1000, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  g.closed = true
  await dropConnection(app, client)
  await t.rejects(client.join('later'), { code: 'TIMEOUT', room: 'later', message: /the join was not sent/ })
  t.equal(client.room('later'), undefined)
  g.closed = false
  const open = nextState(client, 'open')
  client.reconnect()
  await open
  await client.ping()
  t.equal(await app.rooms.get('later'), null, 'never joined')
})

t.test('connect() to a server that never answers rejects with TIMEOUT and closes its socket', async (t) => {
  const hole = await blackHole(t)
  const started = Date.now()
  const err = await connect(`ws://127.0.0.1:${hole.port}/ws`, { WebSocket, requestTimeoutMs: 150 }).catch((e: unknown) => e)
  t.match(err, { name: 'RoomsClientError', code: 'TIMEOUT', message: /No welcome from the server within 150 ms/, close: { code: 1006, byClient: true } })
  t.ok(Date.now() - started >= 140)
  t.equal(hole.accepted.length, 1)
  const socket = hole.accepted[0]!
  if (!socket.destroyed) await once(socket, 'close')
})

t.test('a reconnect attempt that never gets a welcome is abandoned and retried', async (t) => {
  const { app, wsUrl } = await startApp(t)
  const port = (app.server.address() as { port: number }).port
  const client = await connect(wsUrl, { WebSocket, requestTimeoutMs: 1000, reconnect: { initialDelayMs: 10, maxDelayMs: 50 } })
  t.teardown(() => client.close())
  const room = await client.join('r')
  const shutDown = nextState(client, 'reconnecting')
  await app.close()
  t.match(await shutDown, { code: 1001, reason: 'Server shutting down', byClient: false })
  const hole = await blackHole(t, port)
  const abandoned = await nextEvent<StateChange>((h) => client.on('state', (_s, c) => h(c)), (c) => c.state === 'reconnecting' && c.byClient, { client, what: 'the client abandoning its connection' })
  t.match(abandoned, { code: 1006, reason: /No welcome from the server within 1000 ms/ })
  await hole.close()
  const rejoined = nextEvent((h) => room.on('joined', h), undefined, { client, room, what: 'the rejoin' })
  await listenOn(t, port)
  await rejoined
  t.equal(client.state, 'open')
  t.equal(await room.publish('back'), 1)
})

t.test('aborting the signal while connecting rejects connect() with CLOSED; an aborted signal at once', async (t) => {
  const hole = await blackHole(t)
  const controller = new AbortController()
  const connecting = connect(`ws://127.0.0.1:${hole.port}/ws`, { WebSocket, signal: controller.signal })
  await until(() => hole.accepted.length === 1, 'the connection is accepted')
  controller.abort()
  await t.rejects(connecting, { code: 'CLOSED', message: /signal was aborted/ })
  await t.rejects(connect(`ws://127.0.0.1:${hole.port}/ws`, { WebSocket, signal: AbortSignal.abort() }), { code: 'CLOSED' })
})

t.test('close() settles everything with CLOSED: a request in flight, a queued publish, a join waiting for the connection', async (t) => {
  const g = gate()
  const { wsUrl, app } = await startApp(t, { onPublish: async ({ data }) => data === 'hang' ? await new Promise<undefined>(() => {}) : undefined }, g.setup)
  const client = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
  const room = await client.join('r')
  const inFlight = room.publish('hang')
  const closing = nextState(client, 'closed')
  client.close()
  await t.rejects(inFlight, { code: 'CLOSED' })
  t.match(await closing, { state: 'closed', code: 1000, reason: 'client closed', byClient: true })

  const other = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
  const otherRoom = await other.join('r')
  g.closed = true
  await dropConnection(app, other)
  const queued = otherRoom.publish('queued')
  const waiting = other.join('elsewhere')
  other.close()
  await t.rejects(queued, { code: 'CLOSED' })
  await t.rejects(waiting, { code: 'CLOSED', room: 'elsewhere' })
  await t.rejects(other.ping(), { code: 'CLOSED' })
})

t.test('ping() and leave() without a reply reject with TIMEOUT; the handle is gone either way', async (t) => {
  const { wsUrl, app } = await startApp(t)
  const client = await connect(wsUrl, { WebSocket, requestTimeoutMs: 1000 })
  t.teardown(() => client.close())
  const room = await client.join('r')
  // The server stops reading this connection: a stalled event loop or a full pipe.
  const [server] = app.websocketServer.clients
  ;(server as unknown as { _socket: { pause: () => void } })._socket.pause()
  await t.rejects(client.ping(), { code: 'TIMEOUT', message: /the ping may or may not have been applied/ })
  await t.rejects(room.leave(), { code: 'TIMEOUT', room: 'r' })
  t.equal(client.room('r'), undefined)
  t.equal(room.status, 'left')
})

t.test('a rejoin the server does not answer makes the client reconnect, and the next attempt rejoins', async (t) => {
  const { wsUrl, app } = await startApp(t)
  const client = await connect(wsUrl, { WebSocket, requestTimeoutMs: 1000, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const room = await client.join('r')
  await room.publish('kept in history, so the epoch stays')
  // The next connection is not read after its welcome, so its rejoin gets no reply.
  app.websocketServer.once('connection', (socket: WebSocket) => {
    ;(socket as unknown as { _socket: { pause: () => void } })._socket.pause()
  })
  const abandoned = nextEvent<StateChange>((h) => client.on('state', (_s, c) => h(c)), (c) => c.state === 'reconnecting' && c.byClient, { client, what: 'the client abandoning its connection' })
  for (const socket of app.websocketServer.clients) socket.terminate()
  t.match(await abandoned, { code: 1006, reason: 'No reply to the rejoin of room "r" within 1000 ms' })
  const rejoined = await nextEvent((h) => room.on('joined', h), undefined, { client, room, what: 'the rejoin' })
  t.same(rejoined, { recovered: true })
  t.equal(client.room('r'), room)
})

t.test('requestTimeoutMs must be a usable number; ackTimeoutMs still works as its alias', async (t) => {
  const { wsUrl } = await startApp(t, { onPublish: async () => await new Promise<undefined>(() => {}) })
  for (const requestTimeoutMs of [0, -1, Number.NaN, Infinity, 2 ** 31]) {
    await t.rejects(connect(wsUrl, { WebSocket, requestTimeoutMs }), { name: 'TypeError', message: /requestTimeoutMs must be a number of ms above 0/ })
  }
  const client = await connect(wsUrl, { WebSocket, ackTimeoutMs: 1000 })
  t.teardown(() => client.close())
  const room = await client.join('r')
  await t.rejects(room.publish('never acked'), { code: 'TIMEOUT', message: 'No reply within 1000 ms: the publish may or may not have been applied.' })
})

