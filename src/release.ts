import { ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { WebSocket } from 'ws'

/**
 * The body of @fastify/websocket 11's per-socket `error` listener, an arrow
 * function that closes over the upgrade's request and reply. Matching its
 * source is the feature check: a version that changed it is left alone.
 */
const CAPTURING_ERROR_LISTENER = 'errorHandler.call(this, error, socket, request, reply)'

/** The body of ws 8's per-socket `close` listener that keeps its server's client list. */
const TRACKING_CLOSE_LISTENER = 'this.clients.delete(ws)'

/**
 * Let go of what @fastify/websocket (11.3.6) keeps of an upgrade for the
 * socket's whole life, without forking it: the TCP socket's `_httpMessage`
 * (the ServerResponse of the upgrade, which holds its IncomingMessage) and the
 * per-socket error listener (which holds the Fastify request and reply). Each
 * cut is made only where the shape it expects is found, so a version that
 * fixed either upstream, or changed, keeps working without it.
 * @param socket the upgraded WebSocket, from the route handler
 * @param onError the listener to put in place of @fastify/websocket's: one
 *   shared function that does what its errorHandler does. Undefined to keep
 *   theirs (when the application registered @fastify/websocket, possibly with
 *   an errorHandler of its own that must still run)
 */
export function releaseUpgrade (socket: WebSocket, onError: ((this: WebSocket, error: Error) => void) | undefined): void {
  detachResponse(socket)
  if (onError !== undefined) replaceErrorListener(socket, onError)
}

function detachResponse (socket: WebSocket): void {
  const raw = (socket as unknown as { _socket?: { _httpMessage?: unknown } })._socket
  const response = raw?._httpMessage
  if (response instanceof ServerResponse && typeof response.detachSocket === 'function' && response.socket === raw) {
    response.detachSocket(raw as Socket)
  }
}

function replaceErrorListener (socket: WebSocket, onError: (this: WebSocket, error: Error) => void): void {
  const theirs = socket.listeners('error').filter((listener) => Function.prototype.toString.call(listener).includes(CAPTURING_ERROR_LISTENER))
  if (theirs.length !== 1) return
  socket.removeListener('error', theirs[0] as (...args: unknown[]) => void)
  socket.on('error', onError)
}

/**
 * Take a socket of ours out of the client list of a WebSocket server the
 * application registered. @fastify/websocket's default `preClose`, added
 * before ours, closes every listed client with no code: our clients would
 * get 1005 instead of the contract's 1001, and no reason. Our own `preClose`
 * closes ours. Skipped where the list is not a Set (ws's `clientTracking`
 * off, or a shape this does not know).
 */
export function untrack (server: { clients?: unknown }, socket: WebSocket): void {
  if (!(server.clients instanceof Set) || !server.clients.delete(socket)) return
  // ws's own close listener for the list would still look at it when the socket closes and, the list being empty,
  // tell the server's close once more for each of ours: it goes with the entry, found by its source as above.
  for (const listener of socket.listeners('close')) {
    if (Function.prototype.toString.call(listener).includes(TRACKING_CLOSE_LISTENER)) socket.off('close', listener as () => void)
  }
}
