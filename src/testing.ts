import { randomBytes } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import type {} from '@fastify/websocket'
import type { WebSocket } from 'ws'
import { connectionOf } from './connection.js'
import type { ClientFrame, ErrorFrame, JoinedFrame, ServerFrame, WelcomeFrame } from './protocol.js'

/** A server frame of one `type`. */
export type FrameOf<T extends ServerFrame['type']> = Extract<ServerFrame, { type: T }>

export interface InjectOptions {
  /** The plugin's `path` (default `/ws`). */
  path?: string
  /** Query parameters of the upgrade, for example `{ name: 'ada' }` for an anonymous connection. */
  query?: Record<string, string>
  /** Headers of the upgrade: the cookie or header your `authenticate` reads. */
  headers?: Record<string, string>
  /** With `verifyToken`: sent as the first frame (`auth`), in band as a browser would. */
  token?: string
  /** The longest any wait of this socket takes before it rejects, ms (default 5000). */
  timeoutMs?: number
}

/** What a closed socket ended with. */
export interface CloseInfo {
  code: number
  reason: string
}

/**
 * A connection to the plugin through `app.injectWS`: no port, no network.
 * Every frame the server sends is kept in order; `next` takes the first
 * unread one of a type. Every wait rejects when the socket closes or after
 * `timeoutMs`, so a test fails with the reason instead of hanging.
 */
export interface RoomsTestSocket {
  /** The socket itself (a `ws` WebSocket), for what the wrapper does not cover. */
  readonly ws: WebSocket
  /** The `welcome` the server greeted this connection with. */
  readonly welcome: WelcomeFrame
  /** Settles with the close code and reason once the socket has closed. */
  readonly closed: Promise<CloseInfo>
  /** Send a frame as it is: a string goes out unchanged (to test bad input). */
  send: (frame: ClientFrame | Record<string, unknown> | string) => void
  /**
   * Wait for (or take) the first unread frame of `type` that `match` accepts.
   * Never a reply to this socket's own `request` or `join`: those go to the call.
   */
  next: <T extends ServerFrame['type']>(type: T, match?: (frame: FrameOf<T>) => boolean) => Promise<FrameOf<T>>
  /** Unread frames, optionally of one type, without consuming them. */
  pending: <T extends ServerFrame['type']>(type?: T) => Array<FrameOf<T>>
  /** Send a frame with a fresh `id` and resolve with the reply carrying it: its success reply or an `error`. */
  request: (frame: ClientFrame | Record<string, unknown>) => Promise<ServerFrame>
  /** Join a room; rejects with a RoomsTestError carrying the server's `code` when refused. */
  join: (room: string, options?: { history?: number }) => Promise<JoinedFrame>
  /** Close (1000 by default) and resolve once closed. */
  close: (code?: number, reason?: string) => Promise<CloseInfo>
}

/** An `error` frame that answered a helper call, as an Error. */
export class RoomsTestError extends Error {
  readonly code: ErrorFrame['code']
  readonly room: string | undefined
  constructor (frame: ErrorFrame) {
    super(`${frame.code}: ${frame.message}`)
    this.name = 'RoomsTestError'
    this.code = frame.code
    this.room = frame.room
  }
}

interface Waiter {
  match: (frame: ServerFrame) => boolean
  resolve: (frame: ServerFrame) => void
  reject: (error: Error) => void
  timer: ReturnType<typeof setTimeout>
  what: string
}

/** What a wait is for: `what` reads after "waiting for" ("a message frame"), `none` opens its timeout ("No message frame"). */
interface Wanted {
  what: string
  none: string
  /** Said after the timeout's first clause, when there is more to say about why. */
  why?: () => string | undefined
}

/** The most characters of unread frames a timeout message lists; whole frames only. */
const UNREAD_SHOWN = 500

/**
 * Open a connection to fastify-rooms on `app` without a port, through
 * @fastify/websocket's `injectWS`, and resolve once `welcome` came. The
 * frame listener goes on in `injectWS`'s `onInit`, before the upgrade
 * completes, so `welcome` (sent at once) is never missed. Awaits
 * `app.ready()`. Rejects when the upgrade is refused (`Unexpected server
 * response: 401`) or the server closes first (with the close reason).
 */
export async function injectRooms (app: FastifyInstance, options: InjectOptions = {}): Promise<RoomsTestSocket> {
  const timeoutMs = options.timeoutMs ?? 5000
  await app.ready()
  const query = options.query === undefined ? '' : `?${new URLSearchParams(options.query).toString()}`
  const unread: ServerFrame[] = []
  const waiters: Waiter[] = []
  let closedWith: CloseInfo | undefined
  let connectionId: string | undefined
  let onClosed!: (info: CloseInfo) => void
  const closed = new Promise<CloseInfo>((resolve) => { onClosed = resolve })

  const wait = async ({ what, none, why }: Wanted, match: (frame: ServerFrame) => boolean): Promise<ServerFrame> => {
    const i = unread.findIndex(match)
    if (i !== -1) return unread.splice(i, 1)[0] as ServerFrame
    if (closedWith !== undefined) throw new Error(`The socket closed (${show(closedWith)}) before ${what} came.`)
    return await new Promise((resolve, reject) => {
      const waiter: Waiter = {
        match,
        resolve,
        reject,
        what,
        timer: setTimeout(() => {
          waiters.splice(waiters.indexOf(waiter), 1)
          const reason = why?.()
          reject(new Error(`${none} within ${timeoutMs} ms${reason === undefined ? '' : `: ${reason}`}; ${describeUnread(unread)}`))
        }, timeoutMs)
      }
      waiters.push(waiter)
    })
  }

  // The server's end of this socket, to cut it when the connection fails before `welcome`.
  let serverSocket: WebSocket | undefined
  const upgradeContext = { headers: options.headers ?? {}, [kServerSocket]: (socket: WebSocket) => { serverSocket = socket } }
  watchServerSockets(app)
  const url = `${options.path ?? '/ws'}${query}`
  const upgrade = app.injectWS(url, upgradeContext, {
    onInit (ws) {
      ws.on('message', (data) => {
        const frame = JSON.parse(data.toString()) as ServerFrame
        // A `match` that throws rejects its own wait with the error; it must not throw in
        // ws's listener, where it would break the socket's reading and leave every wait to time out.
        for (const waiter of [...waiters]) {
          let matched: boolean
          try {
            matched = waiter.match(frame)
          } catch (err) {
            waiters.splice(waiters.indexOf(waiter), 1)
            clearTimeout(waiter.timer)
            waiter.reject(err instanceof Error ? err : new Error(String(err)))
            continue
          }
          if (!matched) continue
          waiters.splice(waiters.indexOf(waiter), 1)
          clearTimeout(waiter.timer)
          waiter.resolve(frame)
          return
        }
        unread.push(frame)
      })
      ws.on('close', (code, reason) => {
        // Let the server see the close now: over injectWS's in-memory streams its socket learns of the end of the
        // closing handshake only at ws's close timeout (30 s), and the connection would stay in its rooms until then.
        // The close frames have been exchanged (this end saw the close), so the cut reports the code the server got.
        if (connectionId !== undefined) serverSocket?.terminate()
        closedWith = { code, reason: reason.toString() }
        for (const waiter of waiters.splice(0)) {
          clearTimeout(waiter.timer)
          waiter.reject(new Error(`The socket closed (${show(closedWith)}) while waiting for ${waiter.what}.`))
        }
        onClosed(closedWith)
      })
    }
  })
  const ws = await bounded(upgrade, timeoutMs, () => new Error(`The upgrade of ${url} got no answer within ${timeoutMs} ms: ` +
    'an authenticate or a hook (onRequest, preValidation...) that never finishes, or an app already closed?'), (late) => {
    // Answered after all: cut both ends, so nothing stays open behind the rejection.
    late.terminate()
    serverSocket?.terminate()
  })
  const send = (frame: ClientFrame | Record<string, unknown> | string): void => ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame))
  if (options.token !== undefined) send({ type: 'auth', token: options.token })
  let welcome: WelcomeFrame | ErrorFrame
  try {
    const why = (): string | undefined => options.token === undefined && awaitsToken(serverSocket)
      ? 'the server is waiting for an auth frame (verifyToken is configured and the upgrade carried no credentials): pass injectRooms a `token`'
      : undefined
    welcome = await wait({ what: 'the welcome', none: 'No welcome from the server', why }, (f) => f.type === 'welcome' || f.type === 'error') as WelcomeFrame | ErrorFrame
  } catch (err) {
    ws.terminate()
    serverSocket?.terminate()
    throw err
  }
  if (welcome.type === 'error') {
    // Cut both ends at once: the server's own close would wait for ws's close timeout
    // (closeTimeoutMs) here, and app.close() with it.
    ws.terminate()
    serverSocket?.terminate()
    throw new RoomsTestError(welcome)
  }
  connectionId = welcome.connectionId

  let nextId = 1
  // The ids `request` made up. A frame carrying one is the answer to that call, never an
  // event for `next`: a pending `next('left')` must not take the reply to `leave`. A prefix
  // no test writes by hand, so that a frame the test sends itself with an id of its own
  // (`id: 't1'`) is still the test's to read with `next`.
  const idPrefix = `injectRooms-${randomBytes(4).toString('hex')}-`
  const requestIds = new Set<string>()
  const isReply = (f: ServerFrame): boolean => 'id' in f && typeof f.id === 'string' && requestIds.has(f.id)
  const request = async (frame: ClientFrame | Record<string, unknown>): Promise<ServerFrame> => {
    const id = `${idPrefix}${nextId++}`
    requestIds.add(id)
    send({ ...frame, id })
    return await wait({ what: `the reply to ${String(frame.type)}`, none: `No reply to ${String(frame.type)}` }, (f) => 'id' in f && f.id === id)
  }
  return {
    ws,
    welcome,
    closed,
    send,
    next: async (type, match) => await wait({ what: `a ${type} frame`, none: `No ${type} frame${match === undefined ? '' : ' that the match accepts'}` }, (f) => f.type === type && !isReply(f) && (match === undefined || match(f as never))) as never,
    pending: (type) => unread.filter((f) => type === undefined || f.type === type) as never,
    request,
    async join (room, joinOptions = {}) {
      const reply = await request({ type: 'join', room, ...joinOptions })
      if (reply.type === 'error') throw new RoomsTestError(reply)
      return reply as JoinedFrame
    },
    async close (code = 1000, reason = '') {
      if (closedWith === undefined) ws.close(code, reason)
      return await closed
    }
  }
}

/**
 * `promise`, or a rejection with `timedOut()` after `ms`. Whatever it resolves
 * with after that goes to `late`; a rejection after it is dropped.
 */
async function bounded<T> (promise: Promise<T>, ms: number, timedOut: () => Error, late: (value: T) => void): Promise<T> {
  return await new Promise<T>((resolve, reject) => {
    let over = false
    const timer = setTimeout(() => {
      over = true
      reject(timedOut())
    }, ms)
    promise.then((value) => {
      if (over) return late(value)
      clearTimeout(timer)
      resolve(value)
    }, (err: unknown) => {
      if (over) return
      clearTimeout(timer)
      reject(err)
    })
  })
}

/** Marks an injected upgrade's request with the function that takes the server's end of its socket. */
const kServerSocket = Symbol('fastify-rooms.testing.serverSocket')
const watched = new WeakSet<object>()

/**
 * One listener per app hands each injected connection's server socket to the
 * injectRooms call that opened it: injectWS passes the upgrade context's keys
 * on to the request the server's `connection` event carries.
 */
function watchServerSockets (app: FastifyInstance): void {
  const server = app.websocketServer
  if (server === undefined || watched.has(server)) return
  watched.add(server)
  server.on('connection', (socket: WebSocket, request: unknown) => {
    const take = (request as { [kServerSocket]?: (socket: WebSocket) => void } | undefined)?.[kServerSocket]
    if (typeof take === 'function') take(socket)
  })
}

/**
 * True when the server's end of an injected socket is waiting for its `auth`
 * frame: with `verifyToken`, a connection whose upgrade carried no
 * credentials gets no `welcome` until a token comes in band.
 */
function awaitsToken (serverSocket: WebSocket | undefined): boolean {
  return (serverSocket === undefined ? undefined : connectionOf(serverSocket))?.awaitsToken === true
}

/** The unread frames for a timeout message: whole frames, as many as fit in UNREAD_SHOWN characters, then a count by type. */
function describeUnread (unread: readonly ServerFrame[]): string {
  if (unread.length === 0) return 'nothing unread'
  const shown: string[] = []
  let length = 0
  for (const frame of unread) {
    const json = JSON.stringify(frame)
    if (length + json.length > UNREAD_SHOWN) break
    shown.push(json)
    length += json.length
  }
  const rest = unread.slice(shown.length)
  const counts = new Map<string, number>()
  for (const frame of rest) counts.set(frame.type, (counts.get(frame.type) ?? 0) + 1)
  const more = [...counts].map(([type, n]) => `${n} ${type} frame${n === 1 ? '' : 's'}`).join(', ')
  if (shown.length === 0) return `unread: ${more}, too long to list here; see pending()`
  return `unread: [${shown.join(',')}]${rest.length === 0 ? '' : ` and ${rest.length} more (${more}); see pending()`}`
}

function show ({ code, reason }: CloseInfo): string {
  return reason === '' ? `code ${code}` : `code ${code}: ${reason}`
}
