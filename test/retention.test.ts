import t from 'tap'
import v8 from 'node:v8'
import { runInNewContext } from 'node:vm'
import websocket from '@fastify/websocket'
import type { FastifyInstance } from 'fastify'
import { TestSocket } from './helpers/socket.js'
import { serverClosed, serverSocketOf, serverSocketsClosed, startApp } from './helpers/server.js'
import { until } from './helpers/until.js'
import { logSink } from './helpers/log.js'

// tap runs this file through node without --expose-gc: turn it on for a new context.
v8.setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as (() => void) | undefined

interface Upgrade {
  request: WeakRef<object>
  response: WeakRef<object>
  reply: WeakRef<object>
  fastifyRequest: WeakRef<object>
}

/** Weak references to what Fastify built for each WebSocket upgrade, taken by a root hook. */
function watchUpgrades (app: FastifyInstance, into: Upgrade[]): void {
  app.addHook('onRequest', async (request, reply) => {
    if (request.headers.upgrade === undefined) return
    into.push({ request: new WeakRef(request.raw), response: new WeakRef(reply.raw), reply: new WeakRef(reply), fastifyRequest: new WeakRef(request) })
  })
}

/** Collect, turn by turn (a WeakRef target lives to the end of the job that made it), until `gone` holds. */
async function collectedUntil (gone: () => boolean, what: string): Promise<void> {
  // Polled: no event says an object was collected (a FinalizationRegistry callback, too, comes only after a gc() that found it unreachable).
  await until(() => {
    (gc as () => void)()
    return gone()
  }, what)
}

t.test('gc is available, and collects', async (t) => {
  t.equal(typeof gc, 'function', 'v8 --expose-gc took effect: without it the retention tests would prove nothing')
  let control: object | undefined = { big: Buffer.alloc(1024) }
  const ref = new WeakRef(control)
  control = undefined
  await collectedUntil(() => ref.deref() === undefined, 'an unreferenced object is collected')
  t.equal(ref.deref(), undefined)
})

t.test('without hooks, an idle member in a room holds nothing of its upgrade: request, reply, IncomingMessage, ServerResponse', async (t) => {
  const upgrades: Upgrade[] = []
  const { app, wsUrl } = await startApp(t, {}, (app) => watchUpgrades(app, upgrades))
  const member = await TestSocket.open(wsUrl)
  const listener = await TestSocket.open(wsUrl)
  t.teardown(async () => { await member.close(); await listener.close() })
  await member.join('lobby')
  await listener.join('lobby')
  t.equal(upgrades.length, 2)

  await collectedUntil(() => upgrades.every((u) => Object.values(u).every((ref: WeakRef<object>) => ref.deref() === undefined)), 'the upgrades are collected')
  t.pass('everything of both upgrades collected while the sockets are open')

  // The connection works as before: a publish reaches the other member, errors still have a listener.
  await member.request({ type: 'publish', room: 'lobby', data: 'after gc' })
  t.match(await listener.next((f) => f.type === 'message'), { type: 'message', room: 'lobby', data: 'after gc' })
  t.equal(app.rooms.connections, 2)
})

t.test('with an onJoin hook, the request stays for it, and only the ServerResponse and reply go', async (t) => {
  const upgrades: Upgrade[] = []
  const agents: unknown[] = []
  const { wsUrl } = await startApp(t, { onJoin: ({ request }) => { agents.push(request.headers['user-agent']) } }, (app) => watchUpgrades(app, upgrades))
  const member = await TestSocket.open(wsUrl, { headers: { 'user-agent': 'retention-test' } })
  t.teardown(async () => await member.close())
  await member.join('lobby')
  await collectedUntil(() => upgrades.every((u) => u.response.deref() === undefined && u.reply.deref() === undefined), 'the response and reply are collected')
  t.ok(upgrades.every((u) => u.fastifyRequest.deref() !== undefined && u.request.deref() !== undefined), 'the request stays, for the hook')
  await member.join('hall')
  t.same(agents, ['retention-test', 'retention-test'], 'the hook gets the request, headers and all, after a gc')
})

t.test('once a connection closes, nothing of its upgrade is left', async (t) => {
  const upgrades: Upgrade[] = []
  const { app, wsUrl } = await startApp(t, { onPublish: () => true }, (app) => watchUpgrades(app, upgrades))
  const member = await TestSocket.open(wsUrl)
  await member.join('lobby')
  await member.close()
  // Not by a handle on the server's socket: held by the test, it would keep what is checked below from being collected.
  await serverSocketsClosed(app, 'the server to see the close')
  t.equal(app.rooms.connections, 0)
  await collectedUntil(() => upgrades.every((u) => Object.values(u).every((ref: WeakRef<object>) => ref.deref() === undefined)), 'the whole upgrade is collected')
  t.pass('request, reply, IncomingMessage and ServerResponse collected')
})

/** A frame the server must refuse at the protocol level: clients must mask, this one is not masked. */
const UNMASKED_TEXT = Buffer.from([0x81, 0x02, 0x68, 0x69])

t.test('a socket error is logged with the request\'s logger and the socket terminated, as @fastify/websocket does (a peer\'s protocol violation at info)', async (t) => {
  const { stream, line } = logSink()
  const { app, wsUrl } = await startApp(t, {}, undefined, { logger: { level: 'info', stream } })
  const member = await TestSocket.open(wsUrl)
  const onServer = serverSocketOf(app, member)
  await member.join('lobby')
  ;(member.ws as unknown as { _socket: { write: (b: Buffer) => void } })._socket.write(UNMASKED_TEXT)
  const closed = await member.closed
  t.equal(closed.code, 1002, 'ws refuses the frame with 1002')
  await serverClosed(onServer, 'the server to let go of the connection')
  t.equal(app.rooms.connections, 0)
  const logged = await line((l) => l.err?.code === 'WS_ERR_EXPECTED_MASK', 'the error is logged')
  // The peer's doing, like a 4xx: at error level any client could fill the app's error log (see logs.test).
  t.equal(logged.level, 30, 'logged at info')
  t.match(logged.reqId, /.+/, 'with the request\'s logger')
})

t.test('an application\'s own @fastify/websocket errorHandler still runs, with the request and reply', async (t) => {
  const seen: Array<{ code: unknown, request: boolean, reply: boolean }> = []
  const { app, wsUrl } = await startApp(t, {}, async (app) => {
    await app.register(websocket, {
      errorHandler (error, socket, request, reply) {
        seen.push({ code: (error as { code?: unknown }).code, request: typeof request.log?.error === 'function', reply: typeof reply?.hijack === 'function' })
        socket.terminate()
      }
    })
  })
  const member = await TestSocket.open(wsUrl)
  const onServer = serverSocketOf(app, member)
  await member.join('lobby')
  ;(member.ws as unknown as { _socket: { write: (b: Buffer) => void } })._socket.write(UNMASKED_TEXT)
  await member.closed
  await serverClosed(onServer, 'the server to let go of the connection')
  t.equal(app.rooms.connections, 0)
  t.same(seen, [{ code: 'WS_ERR_EXPECTED_MASK', request: true, reply: true }], 'the custom errorHandler ran once')
})
