import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type { Writable } from 'node:stream'
import type { WebSocket, RawData } from 'ws'
import { directSocket, senderIdle } from './fast-path.js'
import { corkTurn, writeCoalesced, writeText, writeTextString } from './frame.js'
import {
  checkPublish, dataBytesBound, DEFAULT_HISTORY_PAGE, encodeAck, encodedData, isFrameError, parseClientFrame, peekRequestId, PROTOCOL_VERSION,
  type AuthenticatedFrame, type AuthFrame, type ClientFrame, type DataValidator, type EncodedPublish, type ErrorFrame, type FrameError, type JoinFrame, type Member,
  type PublishFrame, type RequestId, type WelcomeFrame
} from './protocol.js'
import { isRoomsError, RoomsError, forbidden, tokensNotEnabled, unauthorized } from './errors.js'
import { publicView, type Credentials, type Identity } from './identity.js'
import { notInRoom, type Peer, type Registry } from './registry.js'
import type { PublishReceipt } from './adapters/adapter.js'
import type { ConnectContext, LeaveCause, ResolvedOptions } from './options.js'
import type { Metrics } from './metrics.js'
import type { RoomList } from './roomlist.js'

/** What every connection of one plugin registration shares. */
export interface ConnectionContext {
  registry: Registry
  options: ResolvedOptions
  log: FastifyBaseLogger
  validateData: DataValidator | undefined
  credentials: Credentials
  /** `publicUserFields` as a set: what other clients see of a user. */
  publicFields: ReadonlySet<string>
  /**
   * Whether a connection keeps its upgrade request for its whole life: only
   * when a hook or `verifyToken` may get it later (its IncomingMessage is
   * about 1.3 KB per connection).
   */
  keepRequest: boolean
  /** Called first as each connection closes: the plugin's count of open connections. */
  onClosed: (connection: Connection) => void
  /** Counts frames, bytes, errors and cuts; absent when metrics are off. */
  metrics?: Metrics | undefined
  /** The live room list (`rooms` frames). */
  roomList: RoomList
  /**
   * Send a connection's publishes to the adapter without waiting for the one
   * before to be answered: the adapter applies them in call order
   * (`Adapter.orderedPublishes`) and no `onPublish` hook has to run first.
   */
  pipelinePublishes: boolean
  /**
   * Whether ws checks that text frames are UTF-8 (its default). An app's own
   * @fastify/websocket may turn that off (`skipUTF8Validation`): a frame's
   * text can then weigh more than its bytes (each bad byte reads as U+FFFD,
   * three bytes), so the frame's length no longer bounds its data's.
   */
  utf8Checked: boolean
}

const OPEN = 1
// Connection.flags
const ALIVE = 1
const BUSY = 2
const CLOSED = 4
const REFRESHING = 8
const noop = (): void => {}
/** The close code ws sends with each of its refusals of a peer's frame (see ws's receiver): too large, not UTF-8, or else a protocol error. */
function refusalCode (code: string): number {
  if (code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' || code === 'WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH') return 1009
  if (code === 'WS_ERR_INVALID_UTF8') return 1007
  if (code === 'WS_ERR_TOO_MANY_BUFFERED_PARTS') return 1008
  return 1002
}

/** The longest wait setTimeout holds (2^31-1 ms, about 24.8 days); longer ones fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1
/** A WebSocket close reason is at most 123 bytes of UTF-8. */
const MAX_REASON_BYTES = 123
/**
 * Milliseconds on the monotonic clock, whole: a small integer for the first
 * 24 days of the process, stored in the connection itself where an epoch time
 * (`Date.now()`) would be a separate 16-byte number object per field.
 */
const clock = (): number => Math.floor(performance.now())
/**
 * A ws socket's Connection, for the listeners every connection shares (as ws
 * finds its WebSocket from its TCP socket): one function per event for all
 * sockets rather than closures per socket.
 */
const kConnection = Symbol('fastify-rooms.connection')

type OwnedSocket = WebSocket & { [kConnection]?: Connection }

/** The Connection a ws socket belongs to, if any. */
export function connectionOf (socket: WebSocket): Connection | undefined {
  return (socket as OwnedSocket)[kConnection]
}

/**
 * Where a connection stands with its credentials: `pending` until its first
 * frame (in-band token auth only), `verifying` while `verifyToken` runs,
 * `done` once `welcome` is sent, `refused` once it is being closed for them.
 */
type AuthState = 'pending' | 'verifying' | 'done' | 'refused'

/**
 * One socket's life: parse and validate each frame, apply limits and hooks,
 * dispatch to the registry, answer, and clean up when it closes. Frames of one
 * connection are handled strictly in order, even when a hook is async.
 */
export class Connection implements Peer {
  // The fields every fan-out reads come first, next to the object's header:
  // a fan-out to thousands of members fetches them from memory for each.
  private readonly socket: WebSocket
  /**
   * The TCP socket under ws, written to directly for pre-framed fan-out, when
   * `directSocket` found that safe (see fast-path.ts); otherwise undefined.
   */
  private readonly raw: Writable | undefined
  private readonly ctx: ConnectionContext
  readonly id: string
  /**
   * The full user: shown to this connection and to the hooks. Set once
   * authenticated. Nothing else of its Identity stays: the resume token is
   * only for `welcome`, the expiry lives in the timer.
   */
  private fullUser: Member | undefined
  /** What other clients see of the user (`publicUserFields`). */
  private publicUser: Member | undefined
  /** The public user as JSON, encoded at the first publish and kept for the next ones. */
  private userJson: string | undefined
  private auth: AuthState = 'pending'
  /**
   * The wait for the `auth` frame until `welcome`, the credentials' expiry
   * after it; once the server closes the connection, the cut of a peer that
   * does not answer the close.
   */
  private timer: NodeJS.Timeout | undefined
  private readonly openedAt = clock()
  /** `ALIVE`, `BUSY`, `CLOSED` and `REFRESHING`: one small integer rather than a field each. */
  private flags = ALIVE
  /** What `bytesRead` counted at the last heartbeat round. */
  private readAtRound = 0
  /** The upgrade request, for the hooks and `verifyToken`; undefined when `ctx.keepRequest` says none will ask. */
  private readonly request: FastifyRequest | undefined
  /** The upgrade request's logger (it carries the reqId). */
  private readonly log: FastifyBaseLogger
  /** Token bucket of the frame rate limit. */
  private tokens: number
  private refilledAt = clock()
  /** Frames refused in the current flood; past `frameBurst` the client is not backing off. */
  private refused = 0
  /** Frames and publishes waiting for earlier ones; made at the first, dropped once none wait. */
  private backlog: Backlog | undefined
  /** The lifecycle hook still running, when one is: the next waits for it (see `tell`). */
  private telling: Promise<void> | undefined

  constructor (socket: WebSocket, request: FastifyRequest, id: string, ctx: ConnectionContext) {
    this.socket = socket
    ;(socket as OwnedSocket)[kConnection] = this
    this.raw = directSocket(socket)
    if (ctx.keepRequest) this.request = request
    this.log = request.log
    this.id = id
    this.ctx = ctx
    this.tokens = ctx.options.frameBurst
  }

  /** Waiting for its first `auth` frame (in-band tokens; the upgrade carried no credentials): read by the test helper's timeout messages. */
  get awaitsToken (): boolean {
    return this.auth === 'pending'
  }

  /** Set by every frame, and by what the peer sent since the last round; cleared by each heartbeat round. */
  get alive (): boolean {
    return (this.flags & ALIVE) !== 0
  }

  set alive (on: boolean) {
    this.flags = on ? this.flags | ALIVE : this.flags & ~ALIVE
  }

  /** A frame's hook or adapter call is running: the next frames wait in the backlog. */
  private get busy (): boolean {
    return (this.flags & BUSY) !== 0
  }

  private set busy (on: boolean) {
    this.flags = on ? this.flags | BUSY : this.flags & ~BUSY
  }

  /**
   * Ended: its socket closed, or the server decided to close it. No frame of
   * it is handled from then on, and it is in no room on this node.
   */
  private get closed (): boolean {
    return (this.flags & CLOSED) !== 0
  }

  /** What other clients see of this connection's user (the registry's view of it). */
  get user (): Member {
    return this.publicUser as Member
  }

  /**
   * Start reading frames. With an identity settled at the upgrade, register
   * and say `welcome` now; without one, wait for an `auth` frame, at most
   * `authTimeoutMs`.
   */
  start (identity: Identity | undefined): void {
    const { socket } = this
    socket.on('message', Connection.onMessage)
    // A pong is bytes read like any other: the heartbeat counts them, where ws
    // exposes its TCP socket, rather than listen for 'pong' (a fourth event
    // name grows each socket's listener table by ~96 bytes).
    const read = bytesRead(socket)
    if (read === undefined) socket.on('pong', Connection.onPong)
    else this.readAtRound = read
    socket.on('close', Connection.onSocketClose)
    if (identity !== undefined) {
      this.begin(identity, undefined)
      return
    }
    this.timer = setTimeout(() => this.refuse(unauthorized('timeout')), this.ctx.options.authTimeoutMs)
  }

  /** Authenticated: register with the registry, say `welcome`, and watch the expiry. */
  private begin (identity: Identity, id: RequestId | undefined): void {
    clearTimeout(this.timer)
    this.auth = 'done'
    this.fullUser = identity.user
    this.publicUser = publicView(identity.user, this.ctx.publicFields)
    this.ctx.registry.add(this)
    const welcome: WelcomeFrame = { type: 'welcome', connectionId: this.id, user: identity.user, protocol: PROTOCOL_VERSION, heartbeatMs: this.ctx.options.heartbeatMs }
    if (identity.expiresAt !== undefined) welcome.expiresAt = identity.expiresAt
    if (identity.resume !== undefined) welcome.resume = identity.resume
    if (id !== undefined) welcome.id = id
    this.sendEncoded(JSON.stringify(welcome))
    this.watchExpiry(identity.expiresAt)
    this.log.info({ connectionId: this.id, userId: identity.user.id, expiresAt: identity.expiresAt }, 'fastify-rooms: connected')
    this.tell('onConnect', {})
  }

  /**
   * The only frame a connection may send before `welcome`: `auth` with a token.
   * Anything else, or a second frame while the token is being verified, is
   * refused, so an unauthenticated peer holds at most one frame of memory.
   */
  private first (buffer: Buffer, isBinary: boolean): void {
    if (this.auth !== 'pending') {
      if (this.auth === 'verifying') this.refuse(unauthorized('early'), isBinary ? undefined : peekRequestId(buffer.toString()))
      return
    }
    const frame = isBinary ? undefined : parseClientFrame(buffer.toString())
    if (frame === undefined || isFrameError(frame) || frame.type !== 'auth') {
      this.refuse(unauthorized('notAuth'), frame?.id)
      return
    }
    this.auth = 'verifying'
    this.ctx.credentials.verify(frame.token, this.request as FastifyRequest).then((identity) => {
      if (this.auth === 'verifying' && !this.closed) this.begin(identity, frame.id)
    }, (err: unknown) => this.authFailed(err, frame.id))
  }

  /** A token refresh: same user, new expiry, answered with `authenticated`. */
  private async refresh (frame: AuthFrame): Promise<void> {
    const { credentials } = this.ctx
    if (!credentials.tokens) throw tokensNotEnabled()
    let identity: Identity
    this.flags |= REFRESHING
    try {
      identity = await credentials.verify(frame.token, this.request as FastifyRequest)
    } catch (err) {
      this.authFailed(err, frame.id)
      return
    } finally {
      this.flags &= ~REFRESHING
    }
    const current = this.fullUser as Member
    if (this.auth !== 'done' || this.closed) return
    if (identity.user.id !== current.id) {
      this.refuse(unauthorized('otherUser'), frame.id)
      return
    }
    this.watchExpiry(identity.expiresAt)
    const reply: AuthenticatedFrame = { type: 'authenticated' }
    if (frame.id !== undefined) reply.id = frame.id
    if (identity.expiresAt !== undefined) reply.expiresAt = identity.expiresAt
    this.sendEncoded(JSON.stringify(reply))
    this.log.info({ connectionId: this.id, userId: current.id, expiresAt: identity.expiresAt }, 'fastify-rooms: token refreshed')
  }

  /** Close with 4001 when the credentials run out, unless a refresh moves the time. */
  private watchExpiry (expiresAt: number | undefined): void {
    clearTimeout(this.timer)
    this.timer = undefined
    if (expiresAt === undefined) return
    this.timer = setTimeout(() => {
      // A refresh sent in time is judged on its token, not on when verifyToken
      // answers (within authTimeoutMs): its verdict closes or extends.
      if (Date.now() < expiresAt) this.watchExpiry(expiresAt)
      else if ((this.flags & REFRESHING) === 0) this.refuse(unauthorized('expired'))
    }, Math.max(0, Math.min(expiresAt - Date.now(), MAX_TIMER_MS)))
  }

  private authFailed (err: unknown, id: RequestId | undefined): void {
    // Closed meanwhile (a refresh checked while the server closed it): nothing to refuse, and its timer is the close's.
    if (this.auth === 'refused' || this.closed) return
    if (isRoomsError(err)) {
      this.refuse(err, id)
      return
    }
    this.auth = 'refused'
    this.stopTimers()
    this.ctx.log.error({ err, connectionId: this.id, code: 'INTERNAL' }, 'fastify-rooms: verifyToken failed')
    this.sendError(new RoomsError('INTERNAL', 'The server failed to check your credentials; it has been logged. Try again later.'), id)
    this.close(1011, 'Server error while checking credentials')
  }

  /** `UNAUTHORIZED`, then close 4001 with the same sentence, so a browser client can show it. */
  private refuse (error: RoomsError, id?: RequestId): void {
    if (this.auth === 'refused' || this.closed) return
    this.auth = 'refused'
    this.stopTimers()
    this.log.info({ connectionId: this.id, userId: this.fullUser?.id, code: error.code, reason: error.message }, 'fastify-rooms: authentication failed')
    this.sendError(error, id)
    this.close(4001, error.message)
  }

  private stopTimers (): void {
    clearTimeout(this.timer)
  }

  /**
   * Send a text frame built once for many members (or several, back to back,
   * with their payloads in order): written straight to the TCP socket when ws
   * allows it and holds nothing back (so it cannot overtake an earlier send),
   * through `WebSocket.send` otherwise, one payload at a time.
   */
  sendFramed (framed: Buffer, payload: Buffer | readonly Buffer[]): void {
    const { raw, socket } = this
    if (raw === undefined || !senderIdle(socket)) {
      if (Array.isArray(payload)) for (const one of payload) this.sendThroughWs(one)
      else this.sendThroughWs(payload as Buffer)
      return
    }
    if (socket.readyState !== OPEN || this.slowDirect(raw)) return
    const { metrics } = this.ctx
    if (metrics !== undefined) {
      if (Array.isArray(payload)) for (const one of payload) metrics.sent(one.length)
      else metrics.sent((payload as Buffer).length)
    }
    writeCoalesced(raw, framed)
  }

  /**
   * Send one encoded frame to this connection: framed here and written
   * straight to the TCP socket under the same conditions as `sendFramed`
   * (replies then share the fan-out's coalesced write), else through
   * `WebSocket.send`.
   */
  sendEncoded (frame: Buffer | string): void {
    const { raw, socket } = this
    if (raw === undefined || !senderIdle(socket)) {
      this.sendThroughWs(frame)
      return
    }
    if (socket.readyState !== OPEN || this.slowDirect(raw)) return
    if (typeof frame === 'string') {
      const bytes = writeTextString(raw, frame)
      this.ctx.metrics?.sent(bytes)
      return
    }
    this.ctx.metrics?.sent(frame.length)
    writeText(raw, frame)
  }

  private sendThroughWs (frame: Buffer | string): void {
    if (this.socket.readyState !== OPEN || this.slow()) return
    this.ctx.metrics?.sent(typeof frame === 'string' ? Buffer.byteLength(frame) : frame.length)
    // Replies of one turn (the acks of publishes answered together) go out with one write, in order with the fan-out.
    if (this.raw !== undefined) corkTurn(this.raw)
    this.socket.send(frame, { binary: false })
  }

  /**
   * A promise while the TCP socket holds more than half of `maxBufferedBytes`
   * unsent, settled once it has written them all (`drain`) or closes: a
   * writer of many frames at once (a join's replay) waits on it, so that what
   * the server sends in bulk never makes a reading member a slow consumer.
   * Undefined when it can take more, and on ws's own path, which cannot tell.
   */
  backlogged (): Promise<void> | undefined {
    const { raw, socket } = this
    // Without writableNeedDrain no `drain` is coming: under the stream's highWaterMark, nothing to wait for.
    if (raw === undefined || socket.readyState !== OPEN || !raw.writableNeedDrain || raw.writableLength <= this.ctx.options.maxBufferedBytes / 2) return undefined
    return new Promise((resolve) => {
      const done = (): void => {
        raw.off('drain', done)
        raw.off('close', done)
        resolve()
      }
      raw.on('drain', done)
      raw.on('close', done)
    })
  }

  /** Close a slow consumer: its unsent data passed maxBufferedBytes. */
  private slow (): boolean {
    return this.socket.bufferedAmount > this.ctx.options.maxBufferedBytes && this.closeSlow()
  }

  /**
   * `slow` on the direct path, per message of a fan-out: ws holds nothing
   * back there (`senderIdle`), so what is unsent is what the TCP socket holds.
   */
  private slowDirect (raw: Writable): boolean {
    return raw.writableLength > this.ctx.options.maxBufferedBytes && this.closeSlow()
  }

  /** Close a slow consumer (see `Peer.closeSlow`): logged and counted, whoever found it slow. */
  closeSlow (): true {
    // Found slow again by the same turn's writes (or the registry's queue): once is logged and counted.
    if (this.closed) return true
    this.ctx.log.warn({ connectionId: this.id, bufferedAmount: this.socket.bufferedAmount }, 'fastify-rooms: closing a slow consumer')
    this.ctx.metrics?.slowConsumer()
    this.close(1013, 'Slow consumer: reconnect and resume with since')
    return true
  }

  /**
   * One heartbeat round: ping a peer that answered, and return false for one
   * that has not answered the last ping yet (see `missedHeartbeat`).
   */
  heartbeat (): boolean {
    if (!this.heard()) return false
    this.alive = false
    if (this.socket.readyState === OPEN) this.socket.ping()
    return true
  }

  /**
   * The verdict on a peer the round found silent, given after the event loop
   * has read what was waiting: a round that runs late because the process
   * was busy runs before the loop reads the sockets, and the pong may be
   * sitting there unread. Terminates the peer if it is still silent.
   */
  missedHeartbeat (): void {
    if (this.heard() || this.closed) return
    this.ctx.log.info({ connectionId: this.id }, 'fastify-rooms: terminating a connection that missed its heartbeat')
    this.ctx.metrics?.heartbeatTimeout()
    this.socket.terminate()
  }

  /** Whether the peer sent anything (a pong counts) since the last ping. */
  private heard (): boolean {
    const read = bytesRead(this.socket)
    if (read !== undefined && read !== this.readAtRound) {
      this.readAtRound = read
      this.alive = true
    }
    return this.alive
  }

  /**
   * Close the connection on the server's decision. It ends here, not when the
   * peer answers: no frame of it is handled from now on, it leaves its rooms
   * (at once for 4003, a deliberate kick; after the reconnect grace for the
   * closes a client recovers from by reconnecting) and hooks hear of it. A
   * peer that does not answer the close is cut after `closeTimeoutMs`, not
   * after ws's own 30 s: until then it could hold its buffers.
   */
  close (code: number, reason: string): void {
    const { socket } = this
    if (this.closed || socket.readyState !== OPEN) return
    const said = closeReason(reason)
    socket.close(code, said)
    this.end(code, said, code !== 4003, true)
    this.timer = setTimeout(() => socket.terminate(), this.ctx.options.closeTimeoutMs).unref()
  }

  /** Force the socket shut (shutdown past its grace time). */
  terminate (): void {
    this.socket.terminate()
  }

  private onFrame (data: RawData, isBinary: boolean): void {
    const buffer = data as Buffer
    this.ctx.metrics?.received(buffer.length)
    // ws hands over what a peer sends after our close frame until it answers, or for ever when it never does.
    if (this.closed) return
    this.alive = true
    if (buffer.length > this.ctx.options.maxFrameBytes) {
      this.close(1009, 'Frame too large')
      return
    }
    if (!this.takeToken(buffer, isBinary)) return
    if (this.auth !== 'done') {
      this.first(buffer, isBinary)
      return
    }
    if (isBinary) {
      this.sendError(new RoomsError('INVALID_FRAME', 'Binary frames are not accepted: send JSON as text frames.'))
      return
    }
    if (this.busy) {
      // Frames wait in order behind a slow hook or adapter call, but only up
      // to maxBufferedBytes: past that a flood would hold memory the rate
      // limit alone does not bound (a burst of full-size frames).
      const backlog = this.backlog ??= emptyBacklog()
      if (backlog.bytes + buffer.length > this.ctx.options.maxBufferedBytes) {
        this.sendError(tooManyWaiting(), peekRequestId(buffer.toString()))
        return
      }
      backlog.bytes += buffer.length
      ;(backlog.queue ??= []).push(ownBytes(buffer))
      return
    }
    this.handle(buffer)
  }

  /**
   * The per-connection frame rate limit, a token bucket. A refused frame is not
   * handled and gets `RATE_LIMITED`; a client that keeps flooding through a
   * whole burst of refusals without backing off is closed with 1008.
   */
  private takeToken (buffer: Buffer, isBinary: boolean): boolean {
    const { maxFramesPerSecond, frameBurst } = this.ctx.options
    const now = clock()
    this.tokens = Math.min(frameBurst, this.tokens + (now - this.refilledAt) * maxFramesPerSecond / 1000)
    this.refilledAt = now
    if (this.tokens >= 1) {
      // A client with half its burst back has backed off; with a burst of 1 or 2, its whole burst (half of
      // that would be every accepted frame, and a steady flood would never be closed).
      if (this.tokens >= (frameBurst <= 2 ? frameBurst : frameBurst / 2)) this.refused = 0
      this.tokens -= 1
      return true
    }
    if (++this.refused > frameBurst) {
      this.ctx.log.warn({ connectionId: this.id }, 'fastify-rooms: closing a connection that keeps flooding past its rate limit')
      this.close(1008, 'Rate limit exceeded')
      return false
    }
    const id = isBinary ? undefined : peekRequestId(buffer.toString())
    this.sendError(new RoomsError('RATE_LIMITED', `Too many frames: at most ${maxFramesPerSecond} per second (bursts of ${frameBurst}); slow down.`), id)
    return false
  }

  private handle (buffer: Buffer): void {
    const text = buffer.toString()
    const frame = parseClientFrame(text)
    const size = this.ctx.utf8Checked ? buffer.length : Buffer.byteLength(text)
    // Replies go out in frame order: any frame but a pipelined publish waits for the publishes in flight.
    const backlog = this.backlog
    const pending = backlog?.publishing === undefined || this.pipes(frame)
      ? this.run(frame, size, text)
      : new Promise<void>((resolve) => { backlog.afterPublishes = () => { resolve(this.closed ? undefined : this.run(frame, size, text)) } })
    if (pending === undefined) return
    this.busy = true
    pending.then(() => this.drain(), noop)
  }

  /** Handle one frame; returns what the frames after it wait for, if anything (it never rejects). */
  private run (frame: ClientFrame | FrameError, size: number, text: string): Promise<void> | undefined {
    if (isFrameError(frame)) {
      this.sendError(frame.error, frame.id)
      return undefined
    }
    if (this.pipes(frame)) {
      this.pipe(frame, size, text)
      return undefined
    }
    let pending: Promise<unknown> | undefined
    try {
      pending = this.dispatch(frame, size, text)
    } catch (err) {
      this.fail(err, frame)
      return undefined
    }
    return pending?.then(noop, (err: unknown) => {
      try {
        this.fail(err, frame)
      } catch {
        // Answering failed (the socket is gone): the next frames still get their turn.
      }
    })
  }

  private pipes (frame: ClientFrame | FrameError): frame is PublishFrame {
    return this.ctx.pipelinePublishes && !isFrameError(frame) && frame.type === 'publish'
  }

  /**
   * Send a publish to the adapter now, even while earlier ones wait for their
   * answer, so that the publishes of one turn of the event loop travel to the
   * store together, and their messages come back together, to be written to
   * each member at once. The adapter keeps their order; their replies are
   * written in frame order (`settle`).
   */
  private pipe (frame: PublishFrame, size: number, text: string): void {
    const backlog = this.backlog ??= emptyBacklog()
    if (backlog.bytes + size > this.ctx.options.maxBufferedBytes) {
      this.sendError(tooManyWaiting(), frame.id)
      return
    }
    backlog.bytes += size
    // While the publish is out, only what its reply needs is held: not the data, nor the frame's text (see memberRoom).
    const room = this.ctx.registry.memberRoom(this, frame.room)
    const entry = new Pipelined(this, detached(frame.id), room ?? frame.room, frame.ephemeral === true, size)
    // In the queue before the adapter sees it: the adapter may answer at once.
    ;(backlog.publishing ??= []).push(entry)
    let message: EncodedPublish
    try {
      if (room === undefined) throw notInRoom(frame.room)
      message = this.encodePublish(frame, size, text)
    } catch (err) {
      entry.failed(err as Error)
      return
    }
    try {
      this.ctx.registry.publishTo(room, message, entry)
    } catch (err) {
      // An adapter that threw rather than answer. A throw from writing the answer (it should not) is not the publish's failure.
      if (entry.settled) this.log.error({ err, connectionId: this.id }, 'fastify-rooms: answering a publish failed')
      else entry.failed(err as Error)
    }
  }

  /**
   * A pipelined publish was answered: write the replies that no earlier one
   * holds back. For `Pipelined` only.
   */
  settle (entry: Pipelined): void {
    const backlog = this.backlog as Backlog
    const publishing = backlog.publishing as Pipelined[]
    if (publishing[0] !== entry) return
    let n = 0
    for (; n < publishing.length && (publishing[n] as Pipelined).settled; n++) {
      const { id, room, ephemeral, size, offset, error } = publishing[n] as Pipelined
      if (!this.closed) backlog.bytes -= size
      if (error === undefined) {
        this.ack(id, room, ephemeral, offset)
      } else {
        const frame: PublishFrame = { type: 'publish', room, data: null }
        if (id !== undefined) frame.id = id
        this.fail(error, frame)
      }
    }
    if (n < publishing.length) {
      publishing.splice(0, n)
      return
    }
    backlog.publishing = undefined
    const next = backlog.afterPublishes
    backlog.afterPublishes = undefined
    this.dropIfIdle(backlog)
    next?.()
  }

  /** An idle connection holds no backlog: it goes once neither frames nor publishes wait in it. */
  private dropIfIdle (backlog: Backlog): void {
    if (backlog.queue === undefined && backlog.publishing === undefined && this.backlog === backlog) this.backlog = undefined
  }

  private drain (): void {
    this.busy = false
    while (!this.busy && !this.closed && this.auth === 'done') {
      const backlog = this.backlog
      const next = backlog?.queue?.shift()
      if (next === undefined) {
        if (backlog !== undefined) {
          backlog.queue = undefined
          this.dropIfIdle(backlog)
        }
        return
      }
      ;(backlog as Backlog).bytes -= next.length
      this.handle(next)
    }
  }

  private dispatch (frame: ClientFrame, size: number, text: string): Promise<unknown> | undefined {
    switch (frame.type) {
      case 'ping':
        this.sendEncoded(frame.id === undefined ? '{"type":"pong"}' : JSON.stringify({ type: 'pong', id: frame.id }))
        return undefined
      case 'join':
        return this.join(frame)
      case 'leave':
        return this.leave(frame.room, frame.id)
      case 'publish':
        return this.publish(frame, size, text)
      case 'members':
        return this.ctx.registry.members(this, frame.room, { after: frame.after, limit: frame.limit ?? this.ctx.options.membersPageSize }, frame.id)
      case 'auth':
        return this.refresh(frame)
      case 'rooms':
        return this.ctx.roomList.request(this, frame)
      case 'history':
        return this.ctx.registry.historyPage(this, frame.room, frame.after ?? 0, frame.limit ?? DEFAULT_HISTORY_PAGE, frame.id)
    }
  }

  private async join (frame: JoinFrame): Promise<void> {
    const { registry, options } = this.ctx
    // An app.rooms.join under way decides first: a repeat of an answered join is not asked of onJoin.
    const underWay = registry.joinUnderWay(this, frame.room)
    if (underWay !== undefined) await underWay
    if (this.closed) return
    if (options.onJoin !== undefined && !registry.isJoined(this, frame.room)) {
      const verdict = await options.onJoin({ connectionId: this.id, user: this.fullUser as Member, room: frame.room, request: this.request as FastifyRequest })
      if (verdict === false) throw forbidden(`You may not join room "${frame.room}".`)
    }
    if (this.closed) return
    await registry.join(this, frame.room, { id: frame.id, since: frame.since, history: frame.history })
  }

  private async leave (room: string, id: RequestId | undefined): Promise<void> {
    await this.ctx.registry.leave(this, room)
    this.sendEncoded(JSON.stringify(id === undefined ? { type: 'left', room } : { type: 'left', id, room }))
  }

  /**
   * A member's publish: checked, run past `onPublish`, stored, then acked when
   * it has an id. Without an onPublish hook it takes no async step of its own.
   */
  private publish (frame: PublishFrame, size: number, text: string): Promise<unknown> | undefined {
    if (!this.ctx.registry.isMember(this, frame.room)) throw notInRoom(frame.room)
    const message = this.encodePublish(frame, size, text)
    if (this.ctx.options.onPublish !== undefined) return this.publishHooked(frame, message)
    const { registry } = this.ctx
    if (!registry.publishesNow) return this.store(frame, message)
    // Stored and fanned out already: the ack follows the message at once, and the next frame needs no wait.
    const offset = registry.publishNow(frame.room, message)
    this.ack(frame.id, frame.room, frame.ephemeral === true, offset)
    return undefined
  }

  private async publishHooked (frame: PublishFrame, message: EncodedPublish): Promise<void> {
    const { options, validateData } = this.ctx
    const { room } = frame
    const onPublish = options.onPublish as NonNullable<ResolvedOptions['onPublish']>
    const verdict = await onPublish({ connectionId: this.id, user: this.fullUser as Member, room, data: frame.data as never, request: this.request as FastifyRequest })
    if (verdict === false) throw forbidden(`You may not publish to room "${room}".`)
    // The hook took its time: the member may have been removed from the room, or closed, meanwhile.
    if (this.closed || !this.ctx.registry.isMember(this, room)) throw notInRoom(room)
    if (typeof verdict === 'object' && verdict !== null) {
      // What the hook returns goes out as if the member had sent it: same limits, same schema.
      message.data = checkPublish(verdict.data, room, options.maxMessageBytes, validateData)
    }
    await this.store(frame, message)
  }

  /** Hand an accepted publish to the registry, and ack it once stored when it has an id. */
  private store (frame: PublishFrame, message: EncodedPublish): Promise<unknown> {
    const { id, room } = frame
    const stored = this.ctx.registry.publish(room, message)
    if (id === undefined) return stored
    return stored.then((offset) => { this.ack(id, room, frame.ephemeral === true, offset) })
  }

  /**
   * A member's publish, checked (size, schema) and encoded for the adapter; its membership is the caller's to check.
   * @param text the frame's text: its `data` member, when written as the
   *   encoder writes it, is taken as it is rather than encoded again
   */
  private encodePublish (frame: PublishFrame, size: number, text: string): EncodedPublish {
    const { options, validateData } = this.ctx
    const { room } = frame
    const encoded = encodedData(frame, text)
    // The value only where something asks for it: a frame read by the fast path parses its data then.
    const data = encoded === undefined || validateData !== undefined || options.onPublish !== undefined ? frame.data : undefined
    return { data: checkPublish(data, room, options.maxMessageBytes, validateData, dataBytesBound(frame, encoded, size), encoded), from: this.userJson ??= JSON.stringify(this.user), ephemeral: frame.ephemeral === true }
  }

  private ack (id: RequestId | undefined, room: string, ephemeral: boolean, offset: number | undefined): void {
    if (id === undefined) return
    this.sendEncoded(encodeAck(id, room, ephemeral ? undefined : offset))
  }

  private fail (err: unknown, frame: ClientFrame): void {
    const room = 'room' in frame ? frame.room : undefined
    // UNAUTHORIZED is always followed by a 4001 close (refuse()); one that gets here came from elsewhere (an adapter
    // of the app's), which cannot keep that contract: it is a failure like any other.
    if (isRoomsError(err) && err.code !== 'UNAUTHORIZED') {
      // About the frame's room, even when a hook's call about another room (app.rooms.join) threw it.
      this.sendError(room !== undefined && err.room !== room ? new RoomsError(err.code, err.message, room) : err, frame.id)
      return
    }
    this.ctx.log.error({ err, connectionId: this.id, room, type: frame.type, code: 'INTERNAL' }, 'fastify-rooms: a hook or the adapter failed')
    this.sendError(new RoomsError('INTERNAL', 'The server failed to handle this request; it has been logged. Try again later.', room), frame.id)
  }

  private sendError (error: RoomsError, id?: RequestId): void {
    const frame: ErrorFrame = { type: 'error', code: error.code, message: error.message }
    if (id !== undefined) frame.id = id
    if (error.room !== undefined) frame.room = error.room
    this.ctx.metrics?.error(error.code)
    this.log.debug({ connectionId: this.id, code: error.code, room: error.room }, 'fastify-rooms: error frame sent')
    this.sendEncoded(JSON.stringify(frame))
  }

  private static onMessage (this: WebSocket, data: RawData, isBinary: boolean): void {
    connectionOf(this)?.onFrame(data, isBinary)
  }

  private static onPong (this: WebSocket): void {
    const connection = connectionOf(this)
    if (connection !== undefined) connection.alive = true
  }

  private static onSocketClose (this: WebSocket, code: number, reason: Buffer): void {
    connectionOf(this)?.onClose(code, reason)
  }

  /**
   * The `error` listener of every socket, in place of @fastify/websocket's
   * (see release.ts): what its default errorHandler does, log and terminate,
   * without holding the upgrade's request and reply.
   */
  static onSocketError (this: WebSocket, error: Error): void {
    const connection = connectionOf(this)
    // ws's refusals of what the peer sent (a frame over maxPayload, bad
    // UTF-8, a bad opcode) are the peer's doing, as a 4xx is: at error level,
    // any client could fill the app's error log.
    const code = String((error as { code?: unknown }).code)
    if (connection !== undefined && code.startsWith('WS_ERR_')) {
      connection.log.info({ err: error, connectionId: connection.id }, 'fastify-rooms: the peer broke the WebSocket protocol; ws closed the connection')
      connection.endRefused(refusalCode(code))
      return
    }
    connection?.log.error(error)
    this.terminate()
  }

  /**
   * ws refused what the peer sent and queued its close frame (1009, 1007,
   * 1002) behind the replies this turn wrote to the corked TCP socket. Cut at
   * once, the socket would drop them all and the peer would see 1006. So they
   * go out now, the TCP connection ends after them (ws stopped reading the
   * peer, so it would never see the answer to its close), and the socket is
   * cut only if the peer has not closed within `closeTimeoutMs`.
   */
  private endRefused (code: number): void {
    const { raw, socket } = this
    if (raw === undefined) {
      socket.terminate()
      return
    }
    while (raw.writableCorked > 0) raw.uncork()
    raw.end()
    // Ended as a close of the server's would be: nothing it sent is handled from now on (a token being
    // verified does not welcome it), and no timer of its own outlives the one below.
    if (!this.closed) this.end(code, '', true, true)
    clearTimeout(this.timer)
    this.timer = setTimeout(() => socket.terminate(), this.ctx.options.closeTimeoutMs).unref()
  }

  private onClose (code: number, reason: Buffer): void {
    this.ctx.onClosed(this)
    // Ended by the server's close already: only the cut of a silent peer is left to stop.
    if (this.closed) {
      this.stopTimers()
      return
    }
    // A drop keeps the user present for the grace time; the client's goodbye (1000) does not.
    this.end(code, reason.toString(), code !== 1000, false)
  }

  /**
   * The connection's end, once: frames stop, its rooms and the room list
   * forget it, `onDisconnect` hears the close.
   * @param grace whether its user stays present for `presenceGraceMs`
   * @param deferred leave the rooms and call the hook in a microtask: a close
   *   decided in the middle of a fan-out or a join (a slow consumer) must not
   *   take the member out of the registry, nor run app code, under the
   *   registry's own feet
   */
  private end (code: number, reason: string, grace: boolean, deferred: boolean): void {
    this.flags |= CLOSED
    // Publishes in flight keep their entries: they are still stored, and their replies settle in order.
    if (this.backlog !== undefined) {
      this.backlog.queue = undefined
      this.backlog.bytes = 0
    }
    this.stopTimers()
    this.ctx.roomList.drop(this)
    this.log.info({ connectionId: this.id, userId: this.fullUser?.id, code, reason, durationMs: clock() - this.openedAt }, 'fastify-rooms: disconnected')
    if (this.fullUser === undefined) return
    if (deferred) queueMicrotask(() => this.leaveRooms(code, reason, grace))
    else this.leaveRooms(code, reason, grace)
  }

  /** Tell `onDisconnect`, then take the connection out of its rooms (its `onLeave`s follow). */
  private leaveRooms (code: number, reason: string, grace: boolean): void {
    this.tell('onDisconnect', { code, reason })
    // remove() logs what the adapter refuses; this is for a failure of its own, which must not end the process.
    this.ctx.registry.remove(this, grace).catch((err: unknown) => {
      this.ctx.log.error({ err, connectionId: this.id }, 'fastify-rooms: could not remove a closed connection from its rooms')
    })
  }

  /** A membership of this connection (one that got `joined`) ended: tell `onLeave`. */
  left (room: string, cause: LeaveCause): void {
    this.tell('onLeave', { room, cause })
  }

  /**
   * Call a lifecycle hook, never in the way of the connection's frames. One
   * connection's hooks run one after another (each waits for the previous
   * one's promise), so an app sees its onConnect settle before its onLeave and
   * onDisconnect start. A throw or rejection is logged, never sent anywhere.
   */
  private tell<K extends 'onConnect' | 'onDisconnect' | 'onLeave'> (hook: K, extra: Omit<Parameters<NonNullable<ResolvedOptions[K]>>[0], keyof ConnectContext>): void {
    const fn = this.ctx.options[hook] as ((ctx: ConnectContext) => unknown) | undefined
    if (fn === undefined) return
    const ctx = { connectionId: this.id, user: this.fullUser as Member, request: this.request as FastifyRequest, ...extra }
    const run = async (): Promise<void> => {
      try {
        await fn(ctx)
      } catch (err) {
        this.ctx.log.error({ err, connectionId: this.id, hook, room: (extra as { room?: string }).room }, 'fastify-rooms: a hook failed')
      }
    }
    const done = this.telling === undefined ? run() : this.telling.then(run)
    this.telling = done
    void done.then(() => { if (this.telling === done) this.telling = undefined })
  }
}

/** A connection's frames and publishes that wait for earlier ones (see Connection.backlog). */
interface Backlog {
  /** Frames waiting behind a slow hook or adapter call. */
  queue: Buffer[] | undefined
  /** Bytes of the frames in `queue`, and of the publishes in `publishing`. */
  bytes: number
  /**
   * Publishes sent to the adapter whose replies are not written yet, in frame
   * order (`ctx.pipelinePublishes`): each reply waits for those before it,
   * and any other frame waits for them all (`afterPublishes`).
   */
  publishing: Pipelined[] | undefined
  /** The frame waiting for `publishing` to empty, when one is. */
  afterPublishes: (() => void) | undefined
}

function emptyBacklog (): Backlog {
  return { queue: undefined, bytes: 0, publishing: undefined, afterPublishes: undefined }
}

/**
 * A publish sent to the adapter ahead of its answer (see Connection.pipe), and
 * the receipt the adapter answers it through: the one object it holds while out.
 */
class Pipelined implements PublishReceipt {
  readonly connection: Connection
  /** What its reply needs of the frame. */
  readonly id: RequestId | undefined
  readonly room: string
  readonly ephemeral: boolean
  readonly size: number
  settled = false
  offset: number | undefined = undefined
  /** Why it failed; undefined when it was published. */
  error: unknown = undefined

  constructor (connection: Connection, id: RequestId | undefined, room: string, ephemeral: boolean, size: number) {
    this.connection = connection
    this.id = id
    this.room = room
    this.ephemeral = ephemeral
    this.size = size
  }

  published (offset: number | undefined): void {
    if (this.settled) return
    this.settled = true
    this.offset = offset
    this.connection.settle(this)
  }

  failed (err: Error): void {
    if (this.settled) return
    this.settled = true
    this.error = err ?? new Error('publish failed')
    this.connection.settle(this)
  }
}

/**
 * A request id of its own. The fast path reads a string id as a slice of the
 * frame's text, and V8 keeps a slice of 13 characters or more as a view that
 * holds the whole text; concatenating, then slicing, copies it first.
 */
function detached (id: RequestId | undefined): RequestId | undefined {
  return typeof id === 'string' && id.length >= 13 ? (' ' + id).slice(1) : id
}

/** Frames waiting for earlier ones passed maxBufferedBytes. */
function tooManyWaiting (): RoomsError {
  return new RoomsError('RATE_LIMITED', 'Too many frames are waiting for earlier ones to be handled: wait for replies before sending more.')
}

/** Bytes read from the peer so far (frames, pongs, anything), or undefined where ws does not expose its TCP socket. */
function bytesRead (socket: WebSocket): number | undefined {
  const read = (socket as unknown as { _socket?: { bytesRead?: unknown } })._socket?.bytesRead
  return typeof read === 'number' ? read : undefined
}

/** Cut a close reason to what a close frame holds, on a character boundary. */
function closeReason (reason: string): string {
  if (Buffer.byteLength(reason) <= MAX_REASON_BYTES) return reason
  let cut = ''
  let bytes = 3
  for (const char of reason) {
    bytes += Buffer.byteLength(char)
    if (bytes > MAX_REASON_BYTES) break
    cut += char
  }
  return cut + '...'
}

/**
 * A frame's bytes in a buffer of their own. ws hands over a frame as a view
 * into the TCP read it came in (up to 64 KiB): a small frame kept waiting
 * would hold the whole read, past what `maxBufferedBytes` counts.
 */
function ownBytes (buffer: Buffer): Buffer {
  if (buffer.byteLength === buffer.buffer.byteLength) return buffer
  const copy = Buffer.allocUnsafeSlow(buffer.byteLength)
  buffer.copy(copy)
  return copy
}
