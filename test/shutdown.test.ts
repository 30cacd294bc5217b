import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import WebSocket from 'ws'
import websocket from '@fastify/websocket'
import { once } from 'node:events'
import rooms from '../src/index.js'
import { TestSocket } from './helpers/socket.js'
import { until } from './helpers/until.js'

function resources (): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const name of process.getActiveResourcesInfo()) counts[name] = (counts[name] ?? 0) + 1
  return counts
}

t.test('app.close(): every client gets 1001, every member is removed, no handle stays open', async (t) => {
  const before = resources()
  const app = Fastify()
  await app.register(rooms, { heartbeatMs: 50 })
  let roomsAtClose: unknown
  app.addHook('onClose', async () => { roomsAtClose = await app.rooms.list() })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const url = `ws://127.0.0.1:${(app.server.address() as { port: number }).port}/ws`
  const clients = await Promise.all([1, 2, 3].map(async () => await TestSocket.open(url)))
  for (const c of clients) await c.join('r')
  await clients[0]!.join('s')

  await app.close()
  for (const c of clients) t.equal((await c.closed).code, 1001)
  t.same(roomsAtClose, { rooms: [], next: null }, 'no member was left in any room')
  t.equal(app.rooms.connections, 0)
  for (const kind of ['TCPServerWrap', 'TCPSocketWrap', 'Timeout']) {
    // Node releases a closed handle a turn or two after its close callback: no event says so, so this is polled.
    await until(() => (resources()[kind] ?? 0) <= (before[kind] ?? 0), `no ${kind} is left open`)
    t.equal(resources()[kind] ?? 0, before[kind] ?? 0, `no ${kind} left open`)
  }
})

t.test('app.close() with @fastify/websocket registered by the app, then two registrations (plugin.md\'s two-registrations): every rooms client gets 1001, the app\'s own sockets are closed as before', async (t) => {
  const codes: number[] = []
  const app = Fastify()
  await app.register(websocket)
  for (const name of ['support', 'sales']) {
    await app.register(async (context) => {
      await context.register(rooms, { path: `/${name}/ws`, prefix: `/${name}/rooms`, onDisconnect: ({ code }) => { codes.push(code) } })
    })
  }
  app.get('/echo', { websocket: true }, (socket) => { socket.on('message', (data) => socket.send(data)) })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const base = `ws://127.0.0.1:${(app.server.address() as { port: number }).port}`
  const clients = [await TestSocket.open(`${base}/support/ws`), await TestSocket.open(`${base}/sales/ws`)]
  for (const c of clients) await c.join('r')
  const own = new WebSocket(`${base}/echo`)
  await once(own, 'open')
  t.equal(app.websocketServer.clients.size, 1, 'app.websocketServer.clients lists the app\'s own socket (and, since this fix, none of the plugin\'s)')
  const ownClosed = once(own, 'close')
  let serverCloses = 0
  app.websocketServer.on('close', () => { serverCloses++ })
  await app.close()
  for (const c of clients) t.same(await c.closed, { code: 1001, reason: 'Server shutting down' }, 'a rooms client gets 1001')
  // ws tells of its server's close on the next tick of the last listed socket's close.
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(serverCloses, 1, 'app.websocketServer emits close once')
  t.same(codes, [1001, 1001], 'onDisconnect hears 1001 at shutdown')
  const [code] = await ownClosed
  t.equal(code, 1005, '@fastify/websocket closed the app\'s own socket itself (with no code, as it always has)')
})

/** An app this test file closes itself (no teardown close), and its socket URL. */
/** An app with the plugin, registered inside a context with Fastify's `prefix` when one is given. */
async function listening (closeTimeoutMs: number, prefix = ''): Promise<{ app: FastifyInstance, url: string }> {
  const app = Fastify()
  if (prefix === '') await app.register(rooms, { closeTimeoutMs })
  else await app.register(async (context) => { await context.register(rooms, { closeTimeoutMs }) }, { prefix })
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, url: `ws://127.0.0.1:${(app.server.address() as { port: number }).port}${prefix.replace(/\/$/, '')}/ws` }
}

t.test('close finishes within closeTimeoutMs even when a client never answers the close', async (t) => {
  const { app, url } = await listening(200)
  const stuck = await TestSocket.open(url)
  // The client never sees the close frame, so it never answers it.
  stuck.stopReading()
  const started = Date.now()
  await app.close()
  const took = Date.now() - started
  t.ok(took < 5_000, `closed in ${took} ms, bounded by closeTimeoutMs rather than ws's 30 s`)
  stuck.ws.terminate()
})

for (const prefix of ['', '/chat', '/chat/', '/']) {
  t.test(`upgrades during shutdown get 503 SHUTTING_DOWN in Fastify's error shape${prefix === '' ? '' : ', also under a Fastify prefix'}`, async (t) => {
    const { app, url } = await listening(5_000, prefix)
    // The holder never answers the close, so shutdown waits for it; the watcher
    // sees its 1001, which says shutdown has begun.
    const holder = await TestSocket.open(url)
    const watcher = await TestSocket.open(url)
    holder.stopReading()
    const closing = app.close()
    t.equal((await watcher.closed).code, 1001)
    const refused = await TestSocket.refused(url)
    t.same(refused, { status: 503, body: { statusCode: 503, code: 'SHUTTING_DOWN', error: 'Service Unavailable', message: 'The server is shutting down; reconnect to another instance.' } })
    const other = await TestSocket.refused(url.replace('/ws', '/elsewhere')).catch((err: Error) => err.message)
    t.not(other, 'upgrade was accepted', 'an upgrade to another path is not accepted either')
    holder.ws.terminate()
    await closing
  })
}

t.test('an upgrade whose credentials are still being checked when app.close() begins gets 503 SHUTTING_DOWN, never a connection', async (t) => {
  const SHUTTING_DOWN = { statusCode: 503, code: 'SHUTTING_DOWN', error: 'Service Unavailable', message: 'The server is shutting down; reconnect to another instance.' }
  /** An app whose `authenticate` holds one upgrade until shutdown has begun. */
  async function checking (t: Test, withHolder: boolean): Promise<void> {
    let release = (): void => {}
    const released = new Promise<void>((resolve) => { release = resolve })
    let entered = (): void => {}
    const checked = new Promise<void>((resolve) => { entered = resolve })
    const app = Fastify()
    await app.register(rooms, {
      closeTimeoutMs: 5_000,
      authenticate: async (request) => {
        if (request.headers['x-hold'] === undefined) return { id: 'u-holder', name: 'holder' }
        entered()
        await released
        return { id: 'u-late', name: 'late' }
      }
    })
    // Registered after the plugin's: runs once the plugin's own shutdown has begun (and, with no connection open, ended).
    app.addHook('preClose', async () => { release() })
    await app.listen({ port: 0, host: '127.0.0.1' })
    const url = `ws://127.0.0.1:${(app.server.address() as { port: number }).port}/ws`
    // The holder never answers the close, so the plugin's preClose waits for
    // it; the watcher's 1001 then says shutdown has begun.
    const [holder, watcher] = withHolder ? [await TestSocket.open(url), await TestSocket.open(url)] : []
    holder?.stopReading()
    const refused = TestSocket.refused(url, { headers: { 'x-hold': '1' } })
    await checked
    const closing = app.close()
    if (watcher !== undefined) {
      t.equal((await watcher.closed).code, 1001)
      release()
    }
    t.same(await refused, { status: 503, body: SHUTTING_DOWN })
    t.equal(app.rooms.connections, withHolder ? 1 : 0, 'the late upgrade never became a connection')
    holder?.ws.terminate()
    await closing
  }
  t.test('with no connection open', async (t) => { await checking(t, false) })
  t.test('while another client holds the shutdown', async (t) => { await checking(t, true) })
})

t.test('an upgrade held in the app\'s own hooks past the start of app.close() gets 503 SHUTTING_DOWN, never a connection', async (t) => {
  let release = (): void => {}
  const released = new Promise<void>((resolve) => { release = resolve })
  let entered = (): void => {}
  const waiting = new Promise<void>((resolve) => { entered = resolve })
  const app = Fastify()
  app.addHook('preHandler', async (request) => {
    if (request.headers['x-hold'] === undefined) return
    entered()
    await released
  })
  await app.register(rooms, { closeTimeoutMs: 5_000 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const url = `ws://127.0.0.1:${(app.server.address() as { port: number }).port}/ws`
  // The holder never answers the close, so the plugin's shutdown waits for it
  // (and @fastify/websocket's server stays open); the watcher's 1001 says it began.
  const holder = await TestSocket.open(url)
  const watcher = await TestSocket.open(url)
  holder.stopReading()
  const late = TestSocket.refused(url, { headers: { 'x-hold': '1' } })
  await waiting
  const closing = app.close()
  t.equal((await watcher.closed).code, 1001)
  release()
  t.same(await late, { status: 503, body: { statusCode: 503, code: 'SHUTTING_DOWN', error: 'Service Unavailable', message: 'The server is shutting down; reconnect to another instance.' } })
  holder.ws.terminate()
  await closing
})
