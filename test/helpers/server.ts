import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { WebSocket } from 'ws'
import { once } from 'node:events'
import rooms, { type RoomsOptions } from '../../src/index.js'
import { guard } from './until.js'

export interface Started {
  app: FastifyInstance
  /** http://127.0.0.1:PORT */
  url: string
  /** ws://127.0.0.1:PORT + path */
  wsUrl: string
}

interface Teardown { teardown: (fn: () => unknown) => void }

/**
 * Presence as the tests expect it unless they say otherwise: diffs sent on
 * the next tick rather than batched for 100 ms, and a dropped connection gone
 * at once rather than after a grace time. Tests of batching and grace set
 * their own values.
 */
const TEST_DEFAULTS: RoomsOptions = { presenceIntervalMs: 0, presenceGraceMs: 0 }

/** Build an app with the plugin, listen on a free port, and close it at teardown. */
export async function startApp (t: Teardown, options: RoomsOptions = {}, setup?: (app: FastifyInstance) => unknown, serverOptions: FastifyServerOptions = {}): Promise<Started> {
  const app = Fastify({ logger: false, routerOptions: { maxParamLength: 256 }, ...serverOptions })
  if (setup !== undefined) await setup(app)
  await app.register(rooms, { ...TEST_DEFAULTS, ...options })
  track(app)
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => await app.close())
  const { port } = app.server.address() as { port: number }
  const url = `http://127.0.0.1:${port}`
  return { app, url, wsUrl: `ws://127.0.0.1:${port}${options.path ?? '/ws'}` }
}

/**
 * The WebSocket server's open sockets, each until its `close` event has run (the listener comes after the plugin's,
 * as ws's own list's does). With @fastify/websocket registered by the app, the plugin's sockets are not in
 * `app.websocketServer.clients`: this sees them all the same.
 */
const accepted = new WeakMap<FastifyInstance, Set<WebSocket>>()
function track (app: FastifyInstance): void {
  const open = new Set<WebSocket>()
  accepted.set(app, open)
  app.websocketServer.on('connection', (socket: WebSocket) => {
    open.add(socket)
    socket.on('close', () => open.delete(socket))
  })
}

/** The server side of every WebSocket open on the app now. */
export function serverSockets (app: FastifyInstance): WebSocket[] {
  return [...(accepted.get(app) ?? app.websocketServer.clients)]
}

/**
 * Resolve once a server-side socket's `close` event has run. The plugin's own
 * close listener was registered when the connection opened, before this one,
 * so by then the node has handled the close (the connection is out of its
 * rooms and its leaves are on their way to the adapter). Fails after 10 s.
 */
export async function serverClosed (socket: WebSocket, what = 'the server side of a socket to close'): Promise<void> {
  if (socket.readyState === socket.CLOSED) return
  await guard(once(socket, 'close'), what)
}

/** The server side of a client's socket: the one whose peer port is the client's local port. */
export function serverSocketOf (app: FastifyInstance, client: { ws: WebSocket }): WebSocket {
  const port = (client.ws as unknown as { _socket: { localPort: number } })._socket.localPort
  const found = serverSockets(app).find((socket) => (socket as unknown as { _socket: { remotePort: number } })._socket.remotePort === port)
  if (found === undefined) throw new Error(`no server-side socket for the client on port ${port}`)
  return found
}

/**
 * Resolve once every WebSocket the app has open now has closed on the
 * server (each one's `close` event, as `serverClosed`). For after the clients
 * closed, or were closed, with no handle on their server sides: a socket
 * whose close has run is out of `serverSockets` already (dropped in the
 * same `close` event as the plugin lets go of its connection), so what is left is exactly what the server has still to see
 * go. Fails after 10 s for a socket that stays open.
 */
export async function serverSocketsClosed (app: FastifyInstance, what = 'the server side of every socket to close'): Promise<void> {
  await Promise.all(serverSockets(app).map(async (socket) => await serverClosed(socket, what)))
}
