import { randomFillSync } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { errorCodes, httpMessages, isRoomsError } from './errors.js'
import type { Credentials, Identity } from './identity.js'
import type { ResolvedOptions } from './options.js'
import type { ResumeTokens } from './resume.js'
import { RESUME_PROTOCOL } from './client/subprotocol.js'

/** 1-32 characters, none of them control or format characters. */
const printableName = /^[^\p{C}]{1,32}$/u

export interface UpgradeState {
  /** Set once `app.close()` starts. */
  closing: boolean
  /** Open connections of this registration, authenticated or not. */
  connections: () => number
}

/**
 * Build the `preValidation` hook of the WebSocket route: everything that can
 * refuse a connection does so here, with an HTTP status, before the upgrade.
 * @returns the hook, `ready` and `release` (see there), and `takeIdentity`, which the route's handler calls: it
 *   hands over (once) the identity settled for a request (undefined when the
 *   connection is to authenticate in band with a token), and the upgrade
 *   stops counting as one on its way, since it is an open connection now
 */
export function upgradeGuard (options: ResolvedOptions, credentials: Credentials, state: UpgradeState, resume: ResumeTokens): {
  hook: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  ready: () => Promise<void>
  release: (request: FastifyRequest) => void
  takeIdentity: (request: FastifyRequest) => Identity | undefined
} {
  const identities = new WeakMap<FastifyRequest, Identity>()
  const allowed = options.allowedOrigins === undefined ? undefined : new Set(options.allowedOrigins)
  // Cookies ride along on a cross-site WebSocket upgrade (no CORS for WebSockets):
  // with cookie auth and no allow-list, only pages of the server's own origin may connect.
  const sameOriginOnly = allowed === undefined && options.authenticate !== undefined
  /**
   * Upgrades that passed the limit below and are not open connections yet:
   * their credentials are being checked, or they wait in the app's
   * preHandler hooks, which may take a while, and upgrades that arrive
   * meanwhile must not all pass the limit. Each counts until the route's
   * handler takes it, it is refused (`release`), or its socket closes (ws
   * refused the handshake itself). Keyed by the raw request: under
   * `injectWS` there is no socket. The value stops watching the socket.
   */
  const admitted = new Map<IncomingMessage, () => void>()

  function admit (raw: IncomingMessage): void {
    const socket = raw.socket as Duplex | undefined
    // Reset by the client while the app's earlier hooks ran: its close event is past, so nothing would
    // ever uncount it, and ws refuses a dead socket without calling the handler that would.
    if (socket?.destroyed === true) return
    const gone = (): void => { admitted.delete(raw) }
    socket?.once('close', gone)
    admitted.set(raw, () => socket?.off('close', gone))
  }

  async function hook (request: FastifyRequest): Promise<void> {
    if (state.closing) throw new errorCodes.SHUTTING_DOWN()
    const origin = request.headers.origin
    // The check keeps other pages in a browser out. A client that sends no
    // Origin is no browser page (browsers always send it on an upgrade; a
    // same-origin fetch of the path, below, has none), and could send any.
    if (allowed !== undefined && origin !== undefined && !allowed.has(origin)) {
      throw new errorCodes.ORIGIN_NOT_ALLOWED(origin)
    }
    if (sameOriginOnly && origin !== undefined && !isSameOrigin(origin, request.host)) {
      throw new errorCodes.ORIGIN_NOT_ALLOWED(origin)
    }
    if (state.connections() + admitted.size >= options.maxConnections) throw new errorCodes.TOO_MANY_CONNECTIONS(options.maxConnections)
    // A plain GET of the path gets the same checks, so that a page can learn
    // why its upgrade was refused (a browser cannot read that answer), then a
    // 426; it is no connection, and never counts as one.
    const upgrade = request.ws
    if (upgrade) admit(request.raw)
    try {
      const identity = await identify(request)
      if (upgrade && identity !== undefined) identities.set(request, identity)
    } catch (err) {
      release(request)
      throw err
    }
  }

  /** The identity an upgrade proves; undefined when it is to authenticate in band. */
  async function identify (request: FastifyRequest): Promise<Identity | undefined> {
    if (!credentials.required) {
      const user = anonymous(request, resume)
      return { user, resume: resume.sign(user) }
    }
    let identity: Identity | null
    try {
      identity = await credentials.identify(request)
    } catch (err) {
      if (isRoomsError(err)) throw new errorCodes.UNAUTHORIZED(httpMessages.upgradeUnauthorized)
      // The app's bug (a malformed user): its details go to the log, not to the client.
      request.log.error({ err }, 'fastify-rooms: checking the credentials of an upgrade failed')
      throw new errorCodes.INTERNAL()
    }
    if (identity === null && !credentials.tokens) throw new errorCodes.UNAUTHORIZED(httpMessages.upgradeUnauthorized)
    return identity ?? undefined
  }

  /**
   * The route's own `preHandler`, the last step before the upgrade (after the
   * app's hooks): `app.close()` may have begun while the credentials were
   * checked or the app's hooks ran, and passed over the open connections.
   */
  async function ready (): Promise<void> {
    if (state.closing) throw new errorCodes.SHUTTING_DOWN()
  }

  /** An upgrade that no longer counts: refused (by this hook, the app's hooks or `ready`), or taken by the handler. */
  function release (request: FastifyRequest): void {
    const unwatch = admitted.get(request.raw)
    if (unwatch === undefined) return
    admitted.delete(request.raw)
    unwatch()
  }

  function takeIdentity (request: FastifyRequest): Identity | undefined {
    release(request)
    const identity = identities.get(request)
    // A request kept for the hooks lives as long as its connection: its entry must not.
    identities.delete(request)
    return identity
  }

  return { hook, ready, release, takeIdentity }
}

/**
 * Let go of the bytes @fastify/websocket keeps on an upgraded request for
 * `handleUpgrade` (its `ws-head` symbol: a Buffer of what followed the
 * headers, holding the whole chunk the request arrived in), for a request
 * that stays for the connection's life. Only a Buffer under that symbol is
 * cut; anything else is left alone.
 */
export function releaseHead (request: FastifyRequest): void {
  const raw = request.raw as unknown as Record<symbol, unknown>
  for (const key of Object.getOwnPropertySymbols(raw)) {
    if (key.description === 'ws-head' && Buffer.isBuffer(raw[key])) raw[key] = undefined
  }
}

/** Origin `scheme://host[:port]` names the host the request was sent to (Host, or X-Forwarded-Host with trustProxy). */
function isSameOrigin (origin: string, host: string): boolean {
  try {
    const url = new URL(origin)
    return url.host === new URL(`${url.protocol}//${host}`).host
  } catch {
    return false
  }
}

/**
 * An anonymous user: the one a valid `resume` token names (a reconnect keeps
 * its id), else a new one. A bad or expired token is not an error, since the
 * token only spares the user a new id: it gets a new one.
 */
function anonymous (request: FastifyRequest, tokens: ResumeTokens): Identity['user'] {
  const query = request.query as Record<string, unknown> | undefined
  const name = query?.name
  const token = resumeToken(request.headers['sec-websocket-protocol'])
  const resumed = token === undefined ? undefined : tokens.verify(token)
  if (name === undefined || name === '') return resumed ?? guest()
  if (typeof name !== 'string' || !printableName.test(name) || name.trim() === '') throw new errorCodes.INVALID_NAME()
  return { id: resumed?.id ?? newId(fresh()), name }
}

/**
 * The resume token a client offers as a WebSocket subprotocol,
 * `fastify-rooms.resume.<token>`, beside `fastify-rooms`. Not in the URL,
 * which access logs and proxies keep: whoever read it there could pose as
 * the guest for a day.
 */
function resumeToken (protocols: string | undefined): string | undefined {
  if (protocols === undefined) return undefined
  for (const protocol of protocols.split(',')) {
    const offered = protocol.trim()
    if (offered.startsWith(RESUME_PROTOCOL)) return offered.slice(RESUME_PROTOCOL.length)
  }
  return undefined
}

/** Random bytes for a new user id: 96 bits. */
const ID_BYTES = 12
/** Ids drawn from the generator at once: it runs once per this many users rather than once each (randomUUID draws 128). */
const IDS_PER_DRAW = 256
const pool = Buffer.allocUnsafeSlow(IDS_PER_DRAW * ID_BYTES)
let pooled = 0

/**
 * A new guest. Its id is 96 random bits as 16 base64url characters; its name's
 * 4 hex digits are the first 2 of those bytes. An id is public (member lists,
 * presence diffs and each message's `from` carry it) and needs only to be
 * unique: past a trillion users the chance that any two share one is still
 * under one in 10^5. A UUID's 36 characters would add 20 bytes to each of
 * those and 24 to the string each connection keeps. Names need not be unique.
 */
function guest (): Identity['user'] {
  const at = fresh()
  return { id: newId(at), name: `guest-${pool.toString('hex', at, at + 2)}` }
}

function newId (at: number): string {
  return pool.toString('base64url', at, at + ID_BYTES)
}

/** Where the next id's random bytes start in `pool`. */
function fresh (): number {
  if (pooled === 0) randomFillSync(pool)
  const at = pooled * ID_BYTES
  pooled = (pooled + 1) % IDS_PER_DRAW
  return at
}
