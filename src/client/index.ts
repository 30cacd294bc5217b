import type {
  ErrorFrame, JoinedFrame, Member, MessageFrame, PresenceFrame, RequestId, ServerFrame, WelcomeFrame
} from '../protocol.js'
import type { ErrorCode } from '../errors.js'
import { Emitter } from './emitter.js'

export type { Member, MessageFrame, PresenceFrame, WelcomeFrame, ErrorCode }

/** The part of the WebSocket API the client uses: the browser's and `ws` both have it. */
export interface WebSocketLike {
  readonly readyState: number
  send (data: string): void
  close (code?: number, reason?: string): void
  // Events are `any`: the browser's and ws's event classes differ, and handler
  // parameters are compared contravariantly, so a narrower type would reject ws.
  onopen: ((event: any) => void) | null
  onmessage: ((event: any) => void) | null
  onclose: ((event: any) => void) | null
  onerror: ((event: any) => void) | null
}

export type WebSocketConstructor = new (url: string) => WebSocketLike

/** Codes the client itself rejects with, beside the server's error codes. */
export type ClientErrorCode = ErrorCode | 'TIMEOUT' | 'DISCONNECTED' | 'CLOSED' | 'QUEUE_FULL' | 'CONNECT_FAILED'

/** A refused or failed request: `code` is the server's error code or one of the client's own. */
export class RoomsClientError extends Error {
  readonly code: ClientErrorCode
  readonly room: string | undefined
  constructor (code: ClientErrorCode, message: string, room?: string) {
    super(message)
    this.name = 'RoomsClientError'
    this.code = code
    this.room = room
  }
}

export interface ReconnectOptions {
  /** First retry delay ceiling, ms (default 500). */
  initialDelayMs?: number
  /** Largest retry delay ceiling, ms (default 10000). */
  maxDelayMs?: number
  /** Give up (state `closed`) after this many failed attempts in a row (default: never). */
  maxAttempts?: number
}

export interface ClientOptions {
  /** WebSocket implementation: required in Node 20 (`import WebSocket from 'ws'`), the browser's own by default. */
  WebSocket?: WebSocketConstructor
  /** Display name for anonymous connections (the `name` query parameter). */
  name?: string
  /** Reconnect with exponential backoff and full jitter (default on); `false` to turn off. */
  reconnect?: ReconnectOptions | false
  /** How long a request waits for its reply before rejecting with `TIMEOUT`, ms (default 10000). */
  ackTimeoutMs?: number
  /** Publishes held while disconnected (default 1000); past it they reject with `QUEUE_FULL`. */
  maxQueue?: number
}

export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed'

/** A message as the app sees it. */
export interface RoomMessage<TData = unknown> {
  room: string
  data: TData
  offset: number
  ts: number
  /** The publishing member; absent for server publishes. */
  from?: Member
}

/** Told when a rejoin could not replay what was missed: refetch `after..` via REST if it matters. */
export interface Gap {
  room: string
  /** Last offset this client had seen. */
  after: number
  /** Epoch it had seen, and the room's epoch now (differs when history was lost). */
  epoch: string
  currentEpoch: string
  /** The room's last offset now. */
  offset: number
}

type RoomEvents<TData> = {
  message: (message: RoomMessage<TData>) => void
  presence: (event: PresenceFrame) => void
  gap: (gap: Gap) => void
  /** Each time the room is (re)joined, with whether missed messages were replayed. */
  joined: (info: { recovered: boolean | undefined }) => void
}

type ClientEvents = {
  state: (state: ConnectionState) => void
  welcome: (welcome: WelcomeFrame) => void
  direct: (data: unknown, from: Member | undefined) => void
  /** An `error` frame that answered no request of ours. */
  error: (error: RoomsClientError) => void
}

interface Request {
  resolve: (frame: any) => void
  reject: (error: RoomsClientError) => void
  timer: ReturnType<typeof setTimeout> | undefined
  room: string | undefined
}

interface Queued {
  frame: { type: 'publish', room: string, data: unknown }
  resolve: (offset: number) => void
  reject: (error: RoomsClientError) => void
}

const OPEN = 1

/**
 * A room this client is in. It stays valid across reconnects: the client
 * rejoins it and replays what was missed through the same `message` handlers.
 */
export class Room<TData = unknown> extends Emitter<RoomEvents<TData>> {
  readonly name: string
  /** Members now (one entry per user), kept up to date from presence. */
  members: Member[] = []
  /** Last offset delivered to this handle. */
  offset = 0
  epoch = ''
  private readonly client: RoomsClient<TData>

  /** @internal */
  constructor (client: RoomsClient<TData>, name: string) {
    super()
    this.client = client
    this.name = name
  }

  /** Publish to the room; resolves with the message's offset. Queued while disconnected. */
  async publish (data: TData): Promise<number> {
    return await this.client.publishTo(this.name, data)
  }

  /** Leave the room; the handle stops receiving. */
  async leave (): Promise<void> {
    await this.client.leaveRoom(this.name)
  }

  /** @internal */
  applyJoined (frame: JoinedFrame): void {
    const previous = { offset: this.offset, epoch: this.epoch }
    this.members = frame.members
    if (frame.recovered === false) {
      this.emit('gap', { room: this.name, after: previous.offset, epoch: previous.epoch, currentEpoch: frame.epoch, offset: frame.offset })
    }
    if (frame.recovered !== true) this.offset = frame.offset
    this.epoch = frame.epoch
    this.emit('joined', { recovered: frame.recovered })
  }

  /** @internal */
  applyMessage (frame: MessageFrame): void {
    // A replay can overlap what the handle already has; each offset is shown once.
    if (frame.offset <= this.offset) return
    this.offset = frame.offset
    this.emit('message', frame as RoomMessage<TData>)
  }

  /** @internal */
  applyPresence (frame: PresenceFrame): void {
    const rest = this.members.filter((m) => m.id !== frame.member.id)
    this.members = frame.event === 'join' ? [...rest, frame.member] : rest
    this.emit('presence', frame)
  }
}

/**
 * The fastify-rooms client for browsers and Node. Create it with
 * `RoomsClient.connect(url, options)`.
 */
export class RoomsClient<TData = unknown> extends Emitter<ClientEvents> {
  state: ConnectionState = 'connecting'
  /** From the latest `welcome`: this connection's id, user and heartbeat. */
  connectionId = ''
  user: Member | undefined
  heartbeatMs = 25_000
  private readonly url: string
  private readonly WebSocketImpl: WebSocketConstructor
  private readonly reconnectOptions: Required<ReconnectOptions> | false
  private readonly ackTimeoutMs: number
  private readonly maxQueue: number
  private socket: WebSocketLike | undefined
  private readonly rooms = new Map<string, Room<TData>>()
  private readonly requests = new Map<number, Request>()
  private readonly queue: Queued[] = []
  private nextId = 1
  private attempts = 0
  private retryTimer: ReturnType<typeof setTimeout> | undefined
  private watchdog: ReturnType<typeof setInterval> | undefined
  private lastSeen = 0
  private ready: Promise<void>
  private settleReady: { resolve: () => void, reject: (e: RoomsClientError) => void } | undefined

  /**
   * Open a connection and resolve once the server's `welcome` arrived. The
   * first attempt must succeed (so a wrong URL or refused credentials fail
   * fast); after that the client reconnects on its own.
   */
  static async connect<TData = unknown> (url: string, options: ClientOptions = {}): Promise<RoomsClient<TData>> {
    const client = new RoomsClient<TData>(url, options)
    await client.ready
    return client
  }

  private constructor (url: string, options: ClientOptions) {
    super()
    const WebSocketImpl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket
    if (WebSocketImpl === undefined) throw new TypeError('No WebSocket implementation: pass options.WebSocket (for example the ws package in Node).')
    this.WebSocketImpl = WebSocketImpl
    this.url = options.name === undefined ? url : withQuery(url, 'name', options.name)
    this.reconnectOptions = options.reconnect === false
      ? false
      : { initialDelayMs: 500, maxDelayMs: 10_000, maxAttempts: Infinity, ...options.reconnect }
    this.ackTimeoutMs = options.ackTimeoutMs ?? 10_000
    this.maxQueue = options.maxQueue ?? 1000
    this.ready = new Promise((resolve, reject) => { this.settleReady = { resolve, reject } })
    this.open()
  }

  /** The handle of a room this client is in (or joining). */
  room (name: string): Room<TData> | undefined {
    return this.rooms.get(name)
  }

  /**
   * Join a room (or get the handle of one already joined). The handle's
   * `members`, `offset` and `epoch` are set when this resolves.
   */
  async join (name: string): Promise<Room<TData>> {
    this.assertNotClosed()
    let room = this.rooms.get(name)
    if (room !== undefined) return room
    room = new Room<TData>(this, name)
    this.rooms.set(name, room)
    if (this.state !== 'open') {
      // Joined on (re)connect with the rest; wait for that.
      await new Promise<void>((resolve, reject) => {
        const off = room!.on('joined', () => { off(); offState(); resolve() })
        const offState = this.on('state', (state) => {
          if (state === 'closed') { off(); offState(); reject(new RoomsClientError('CLOSED', 'The client was closed before the room was joined.', name)) }
        })
      })
      return room
    }
    try {
      await this.sendJoin(room)
    } catch (err) {
      if (this.rooms.get(name) === room && (err as RoomsClientError).code !== 'DISCONNECTED') this.rooms.delete(name)
      throw err
    }
    return room
  }

  /** Round-trip time of an application-level ping, in ms. */
  async ping (): Promise<number> {
    const started = Date.now()
    await this.request({ type: 'ping' }, undefined)
    return Date.now() - started
  }

  /** Drop the current connection and connect again now, rejoining every room. */
  reconnect (): void {
    this.assertNotClosed()
    clearTimeout(this.retryTimer)
    this.attempts = 0
    this.dropSocket()
    this.open()
  }

  /** Close for good: no reconnect; pending requests and queued publishes reject with `CLOSED`. */
  close (): void {
    if (this.state === 'closed') return
    clearTimeout(this.retryTimer)
    this.dropSocket()
    this.setState('closed')
    const closed = new RoomsClientError('CLOSED', 'The client was closed.')
    this.failRequests(closed)
    for (const item of this.queue.splice(0)) item.reject(closed)
    this.settleReady?.reject(closed)
  }

  /** @internal */
  async publishTo (room: string, data: TData): Promise<number> {
    this.assertNotClosed()
    const frame = { type: 'publish' as const, room, data }
    if (this.state === 'open' && this.rooms.has(room)) {
      const ack = await this.request(frame, room)
      return ack.offset as number
    }
    if (this.queue.length >= this.maxQueue) {
      throw new RoomsClientError('QUEUE_FULL', `${this.maxQueue} publishes are already waiting for the connection: retry later.`, room)
    }
    return await new Promise((resolve, reject) => this.queue.push({ frame, resolve, reject }))
  }

  /** @internal */
  async leaveRoom (name: string): Promise<void> {
    const room = this.rooms.get(name)
    if (room === undefined) return
    this.rooms.delete(name)
    for (const item of this.queue.filter((q) => q.frame.room === name)) {
      this.queue.splice(this.queue.indexOf(item), 1)
      item.reject(new RoomsClientError('NOT_IN_ROOM', `Left room "${name}" before the message could be sent.`, name))
    }
    if (this.state === 'open') await this.request({ type: 'leave', room: name }, name)
  }

  private open (): void {
    this.setState(this.connectionId === '' && this.attempts === 0 ? 'connecting' : 'reconnecting')
    let socket: WebSocketLike
    try {
      socket = new this.WebSocketImpl(this.url)
    } catch (err) {
      this.onSocketClosed(undefined, 1006, String(err))
      return
    }
    this.socket = socket
    socket.onmessage = (event: { data: unknown }) => { if (this.socket === socket) this.onFrame(event.data) }
    socket.onclose = (event: { code: number, reason: string }) => this.onSocketClosed(socket, event.code, event.reason)
    socket.onerror = () => {}
  }

  private onFrame (raw: unknown): void {
    this.lastSeen = Date.now()
    let frame: ServerFrame
    try {
      frame = JSON.parse(typeof raw === 'string' ? raw : String(raw)) as ServerFrame
    } catch {
      return
    }
    switch (frame.type) {
      case 'welcome':
        this.onWelcome(frame)
        break
      case 'message':
        this.rooms.get(frame.room)?.applyMessage(frame)
        break
      case 'presence':
        this.rooms.get(frame.room)?.applyPresence(frame)
        break
      case 'direct':
        this.emit('direct', frame.data, frame.from)
        break
      case 'error':
        this.onError(frame)
        break
      case 'joined':
        // Applied before the replayed messages that follow it are handled.
        this.rooms.get(frame.room)?.applyJoined(frame)
        this.settle(frame.id, frame)
        break
      default:
        this.settle(frame.id, frame)
    }
  }

  private onWelcome (frame: WelcomeFrame): void {
    this.connectionId = frame.connectionId
    this.user = frame.user
    this.heartbeatMs = frame.heartbeatMs
    this.attempts = 0
    this.setState('open')
    this.startWatchdog()
    this.emit('welcome', frame)
    this.settleReady?.resolve()
    this.settleReady = undefined
    for (const room of this.rooms.values()) {
      this.sendJoin(room).catch((err: RoomsClientError) => {
        if (err.code !== 'DISCONNECTED' && err.code !== 'CLOSED') {
          this.rooms.delete(room.name)
          this.emit('error', err)
        }
      })
    }
    // The server handles a connection's frames in order, so these follow the joins.
    for (const item of this.queue.splice(0)) {
      this.request(item.frame, item.frame.room).then((ack) => item.resolve(ack.offset as number), item.reject)
    }
  }

  private async sendJoin (room: Room<TData>): Promise<void> {
    const frame: { type: 'join', room: string, since?: { offset: number, epoch: string } } = { type: 'join', room: room.name }
    if (room.epoch !== '') frame.since = { offset: room.offset, epoch: room.epoch }
    await this.request(frame, room.name)
  }

  private onError (frame: ErrorFrame): void {
    const error = new RoomsClientError(frame.code, frame.message, frame.room)
    if (frame.id !== undefined && this.requests.has(frame.id as number)) {
      const request = this.requests.get(frame.id as number) as Request
      this.requests.delete(frame.id as number)
      clearTimeout(request.timer)
      request.reject(error)
      return
    }
    this.emit('error', error)
  }

  private settle (id: RequestId | undefined, frame: ServerFrame): void {
    if (typeof id !== 'number') return
    const request = this.requests.get(id)
    if (request === undefined) return
    this.requests.delete(id)
    clearTimeout(request.timer)
    request.resolve(frame)
  }

  private async request (frame: Record<string, unknown>, room: string | undefined): Promise<any> {
    const socket = this.socket
    if (socket === undefined || socket.readyState !== OPEN || this.state !== 'open') {
      throw new RoomsClientError('DISCONNECTED', 'Not connected: the request was not sent.', room)
    }
    const id = this.nextId++
    return await new Promise((resolve, reject) => {
      const timer = this.ackTimeoutMs > 0
        ? setTimeout(() => {
          this.requests.delete(id)
          reject(new RoomsClientError('TIMEOUT', `No reply within ${this.ackTimeoutMs} ms: the request may or may not have been applied.`, room))
        }, this.ackTimeoutMs)
        : undefined
      this.requests.set(id, { resolve, reject, timer, room })
      socket.send(JSON.stringify({ ...frame, id }))
    })
  }

  private onSocketClosed (socket: WebSocketLike | undefined, code: number, reason: string): void {
    if (socket !== undefined && this.socket !== socket) return
    this.socket = undefined
    clearInterval(this.watchdog)
    this.failRequests(new RoomsClientError('DISCONNECTED', 'The connection dropped before the reply came: the request may or may not have been applied.'))
    if (this.state === 'closed') return
    if (this.settleReady !== undefined && this.connectionId === '') {
      // The very first attempt failed: report it rather than retry a wrong URL or refused credentials forever.
      this.settleReady.reject(new RoomsClientError('CONNECT_FAILED', `Could not connect to ${this.url} (close code ${code}${reason === '' ? '' : `: ${reason}`}).`))
      this.settleReady = undefined
      this.setState('closed')
      return
    }
    const options = this.reconnectOptions
    if (options === false || this.attempts >= options.maxAttempts) {
      this.close()
      return
    }
    const ceiling = Math.min(options.maxDelayMs, options.initialDelayMs * 2 ** this.attempts)
    this.attempts++
    this.setState('reconnecting')
    this.retryTimer = setTimeout(() => this.open(), Math.random() * ceiling)
  }

  /** Notice a dead link the browser cannot see (no TCP reset): ping when quiet, reconnect when silent. */
  private startWatchdog (): void {
    clearInterval(this.watchdog)
    this.lastSeen = Date.now()
    this.watchdog = setInterval(() => {
      const quiet = Date.now() - this.lastSeen
      if (quiet > this.heartbeatMs * 2) {
        this.dropSocket()
        this.onSocketClosed(undefined, 1006, 'no traffic from the server')
      } else if (quiet > this.heartbeatMs && this.socket?.readyState === OPEN) {
        this.socket.send('{"type":"ping"}')
      }
    }, Math.max(this.heartbeatMs / 2, 10))
  }

  private dropSocket (): void {
    const socket = this.socket
    this.socket = undefined
    clearInterval(this.watchdog)
    if (socket === undefined) return
    socket.onmessage = null
    socket.onclose = null
    try {
      socket.close(1000, 'client closed')
    } catch {}
    this.failRequests(new RoomsClientError('DISCONNECTED', 'The connection was dropped before the reply came: the request may or may not have been applied.'))
  }

  private failRequests (error: RoomsClientError): void {
    for (const [id, request] of this.requests) {
      this.requests.delete(id)
      clearTimeout(request.timer)
      request.reject(new RoomsClientError(error.code, error.message, request.room))
    }
  }

  private setState (state: ConnectionState): void {
    if (this.state === state) return
    this.state = state
    this.emit('state', state)
  }

  private assertNotClosed (): void {
    if (this.state === 'closed') throw new RoomsClientError('CLOSED', 'The client is closed: create a new one.')
  }
}

/** Shorthand for `RoomsClient.connect`. */
export async function connect<TData = unknown> (url: string, options?: ClientOptions): Promise<RoomsClient<TData>> {
  return await RoomsClient.connect<TData>(url, options)
}

function withQuery (url: string, key: string, value: string): string {
  return `${url}${url.includes('?') ? '&' : '?'}${key}=${encodeURIComponent(value)}`
}
