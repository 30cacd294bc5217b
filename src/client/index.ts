import type {
  AuthenticatedFrame, ErrorFrame, HistoryPageFrame, JoinedFrame, Member, MembersPageFrame, MessageFrame, Position, PresenceFrame, RequestId, RoomsPageFrame, ServerFrame, WelcomeFrame
} from '../protocol.js'
import type { ErrorCode } from '../errors.js'
import { fetchToken, refreshDelay, tokenFailure, type GetToken, type TokenCause } from './auth.js'
import { Emitter } from './emitter.js'
import { RoomsClientError, type ClientErrorCode, type CloseInfo } from './errors.js'
import {
  Room, type CatchUp, type EphemeralMessage, type Gap, type HistoryOptions, type HistoryPage, type LeftInfo, type PresenceChange, type PublishOptions, type RoomEvents, type RoomMessage, type RoomOwner, type RoomStatus
} from './room.js'
import { RoomList, type RoomCount, type RoomListChange, type RoomListOwner, type WatchRoomsOptions } from './roomlist.js'
import { RESUME_PROTOCOL, SUBPROTOCOL } from './subprotocol.js'

export type { AuthenticatedFrame, Member, MessageFrame, PresenceFrame, WelcomeFrame, ErrorCode }
export { Room, RoomList, RoomsClientError }
export type { RoomCount, RoomListChange, WatchRoomsOptions }
export type {
  ClientErrorCode, CloseInfo, EphemeralMessage, Gap, GetToken, HistoryOptions, HistoryPage, LeftInfo, PresenceChange, PublishOptions, RoomEvents, RoomMessage, RoomStatus, TokenCause
}

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

/** The browser's WebSocket, or `ws`'s: a second argument, when given, is the subprotocols to offer. */
export type WebSocketConstructor = new (url: string, protocols?: string[]) => WebSocketLike

export interface ReconnectOptions {
  /** First retry delay ceiling, ms (default 500). */
  initialDelayMs?: number
  /** Largest retry delay ceiling, ms (default 10000). */
  maxDelayMs?: number
  /** Give up (state `closed`) after this many failed attempts in a row (default: never). */
  maxAttempts?: number
}

export interface ClientOptions {
  /** WebSocket implementation: the global `WebSocket` by default (browsers, Node 22+); required in Node 20 (`import WebSocket from 'ws'`). */
  WebSocket?: WebSocketConstructor
  /** Display name for anonymous connections (the `name` query parameter). */
  name?: string
  /**
   * Authenticate in band with a token (for a server with `verifyToken`):
   * called before every connection attempt and ahead of `expiresAt` to
   * refresh in place; the token goes in the first frame, never in the URL.
   * After a 4001 close it is called once more for a retry; a second 4001 (or
   * a throw then) closes the client with `UNAUTHORIZED`.
   */
  getToken?: GetToken
  /** Reconnect with exponential backoff and full jitter (default on); `false` to turn off. */
  reconnect?: ReconnectOptions | false
  /**
   * The longest any call waits before it rejects with `TIMEOUT`, ms (default
   * 10000): a reply, a connection for a queued publish or join, the first
   * `welcome`. Each reconnect attempt gets as long to reach `welcome`.
   */
  requestTimeoutMs?: number
  /** @deprecated Use `requestTimeoutMs`; used only when that is not given. */
  ackTimeoutMs?: number
  /**
   * Publishes held while disconnected (default 100); past it they reject with
   * `QUEUE_FULL`. They go out at once after the rejoins, so the rejoins and
   * this many must fit the server's `frameBurst` (200 by default), or the
   * server refuses the excess with `RATE_LIMITED`.
   */
  maxQueue?: number
  /** Aborting it closes the client, as `close()` does; `connect()` then rejects with `CLOSED`. */
  signal?: AbortSignal
}

export interface JoinOptions {
  /**
   * On the first join of this handle, ask for the last `history` stored
   * messages: they come through the `message` handlers, oldest first. Rejoins
   * after a reconnect ask for what was missed instead.
   */
  history?: number
}

export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed'

/** How the connection ended and when the client tries again. */
export interface ReconnectInfo extends CloseInfo {
  /** Failed attempts in a row so far: 1 after the first drop, 0 after `reconnect()`. */
  attempt: number
  /** Delay before the next attempt, ms. */
  delayMs: number
}

/**
 * What a `state` event came with; narrow on its `state`:
 * `on('state', (state, change) => { if (change.state === 'closed') show(change.reason) })`.
 * `reconnecting` fires again for each failed attempt.
 */
export type StateChange =
  | { state: 'open', welcome: WelcomeFrame }
  | ({ state: 'reconnecting' } & ReconnectInfo)
  | ({ state: 'closed' } & CloseInfo)

type ClientEvents<TData> = {
  state: (state: StateChange['state'], change: StateChange) => void
  welcome: (welcome: WelcomeFrame) => void
  /** The server accepted a refreshed token; the connection stays as it was. */
  authenticated: (frame: AuthenticatedFrame) => void
  direct: (data: unknown, from: Member | undefined) => void
  /**
   * The server put this connection into a room (`app.rooms.join`): the handle
   * is new, joined, and rejoined after a reconnect like the rooms of `join()`.
   * Attach handlers here: messages after the `joined` reach them.
   */
  joined: (room: Room<TData>) => void
  /** Errors no call awaits: an `error` frame that answered no request, or a refused rejoin. */
  error: (error: RoomsClientError) => void
}

/** What a join request sent, so that its `joined` is applied to the right handle. */
interface JoinRequest {
  handle: Room<any>
  since: Position | undefined
  history: number | undefined
  /**
   * Set once a `joined` with nothing replayed answered it (a put-in racing
   * this join, or its own reply in `read` mode) and the catch-up began: a
   * later reply only settles the request.
   */
  answered?: true
  /** When the join's answer is due (epoch ms): the catch-up a put-in answer needs reads within it too. */
  deadline: number
  /**
   * Set on a first join with `history` sent while the server may still hold
   * the room for this connection (see `stray`): it goes without `history`,
   * and its reply, which may be a repeat with nothing replayed, is answered
   * as a put-in is, by reading the history asked for over the socket.
   */
  read?: true
  /**
   * Set when the handle was dropped with no leave sent for this membership
   * (the server removed it, a refusal): a late reply is undone with one.
   * Not after `leave()`, which sent its own.
   */
  undo?: true
}

interface Request {
  resolve: (frame: any) => void
  reject: (error: RoomsClientError) => void
  timer: ReturnType<typeof setTimeout>
  room: string | undefined
  join: JoinRequest | undefined
}

/** A call waiting for a connection, until its deadline. */
interface Waiting<T> {
  resolve: (value: T) => void
  reject: (error: RoomsClientError) => void
  deadline: number
  timer: ReturnType<typeof setTimeout> | undefined
}

interface Queued extends Waiting<number> {
  frame: { type: 'publish', room: string, data: unknown }
  handle: Room<any>
  /** Order of the `publish()` calls: a publish queued again keeps its place. */
  seq: number
}

interface FirstJoin<TData> extends Waiting<Room<TData>> {
  promise: Promise<Room<TData>>
  history: number | undefined
}

const OPEN = 1
/** setTimeout's largest delay; longer ones fire at once. */
const MAX_TIMEOUT = 2 ** 31 - 1
/** The server refused the credentials: no, bad or expired token. */
const UNAUTHORIZED_CLOSE = 4001
/**
 * Sent when this client drops a connection it will replace (`reconnect()`, a
 * silent server): not 1000, which tells the server the user left, so that the
 * server keeps the user present through its grace period. Browsers let a page
 * send only 1000 and 3000-4999.
 */
const RECONNECTING_CLOSE = 4000
/** The server disconnected this client on purpose: reconnecting would defy it. */
const DISCONNECTED_CLOSE = 4003
/** Backoff of the reconnects, and of rejoins refused for a passing reason (used for those even with `reconnect: false`). */
const DEFAULT_BACKOFF = { initialDelayMs: 500, maxDelayMs: 10_000 }
/** Refusals of a rejoin that pass by themselves: the room is kept and joined again later. */
const PASSING: ReadonlySet<string> = new Set(['UNAVAILABLE', 'RATE_LIMITED'])
/** Answers to a leave that mean the connection is out of the room all the same: `room.leave()` resolves on them. */
const LEFT_ANYWAY: ReadonlySet<ClientErrorCode> = new Set(['NOT_IN_ROOM', 'DISCONNECTED', 'CLOSED', 'UNAUTHORIZED'])

/** A leave the server has not confirmed (see `stray`): its retries so far and the timer of the next one. */
interface StrayLeave { attempts: number, timer: ReturnType<typeof setTimeout> | undefined }

/** Full jitter: a delay anywhere below the ceiling, which doubles with each attempt up to `maxDelayMs`. */
function backoffDelay ({ initialDelayMs, maxDelayMs }: { initialDelayMs: number, maxDelayMs: number }, attempts: number): number {
  return Math.random() * Math.min(maxDelayMs, initialDelayMs * 2 ** attempts)
}

/**
 * The fastify-rooms client for browsers and Node. Create it with
 * `RoomsClient.connect(url, options)`. Every call resolves or rejects within
 * `requestTimeoutMs`.
 */
export class RoomsClient<TData = unknown> extends Emitter<ClientEvents<TData>> implements RoomOwner<TData>, RoomListOwner {
  state: ConnectionState = 'connecting'
  /** From the latest `welcome`: this connection's id, user and heartbeat. */
  connectionId = ''
  user: Member | undefined
  heartbeatMs = 25_000
  /** How the latest connection ended (undefined until one did). */
  lastClose: CloseInfo | undefined
  /** When this connection's token expires (epoch ms, the server's clock), from `welcome` or the latest refresh. */
  expiresAt: number | undefined
  private readonly url: string
  /** From the latest `welcome` of an anonymous connection: passed on reconnects so that the user id stays. */
  private resume: string | undefined
  private readonly WebSocketImpl: WebSocketConstructor
  private readonly getToken: GetToken | undefined
  private readonly reconnectOptions: Required<ReconnectOptions> | false
  private readonly requestTimeoutMs: number
  private readonly maxQueue: number
  private socket: WebSocketLike | undefined
  private readonly rooms = new Map<string, Room<TData>>()
  private readonly joining = new Map<Room<TData>, FirstJoin<TData>>()
  /** Rejoins refused for a passing reason, tried again: attempts so far and the timer of the next one. */
  private readonly rejoins = new Map<Room<TData>, { attempts: number, timer: ReturnType<typeof setTimeout> | undefined }>()
  /**
   * Rooms this connection may still be in on the server though no handle has
   * them: a leave was sent and not confirmed yet, or was refused (RATE_LIMITED
   * frames are not handled) or timed out. A join of such a room may be
   * answered as a repeat of that membership, which replays nothing. The value
   * names the leave, so that an older leave's answer does not clear a newer one,
   * and holds its retry: a leave refused for a passing reason is sent again.
   */
  private readonly stray = new Map<string, StrayLeave>()
  /** New handles holding the messages that came with their first `joined`. */
  private readonly holding = new Set<Room<TData>>()
  private readonly requests = new Map<number, Request>()
  private readonly queue: Queued[] = []
  /** The live room list, subscribed again on every welcome. */
  private roomList: RoomList | undefined
  private nextId = 1
  private nextPublish = 1
  /** The retry of a room list subscribe refused on this connection (not for want of one). */
  private roomListRetry: { attempts: number, timer: ReturnType<typeof setTimeout> | undefined } | undefined
  private attempts = 0
  private retryTimer: ReturnType<typeof setTimeout> | undefined
  private welcomeTimer: ReturnType<typeof setTimeout> | undefined
  private watchdog: ReturnType<typeof setInterval> | undefined
  private refreshTimer: ReturnType<typeof setTimeout> | undefined
  /** The connection attempt waiting for `getToken`; replaced or cleared when that attempt is given up. */
  private tokenWait: object | undefined
  /** Set after a 4001: this attempt is the one retry with a fresh token. Cleared by `welcome`, or by a close other than 4001. */
  private authRetry = false
  private lastSeen = 0
  /** When the watchdog's ping went out, while nothing has come since (0: none waiting). */
  private pingSentAt = 0
  /** Counts entries into `reconnecting`: tells a caller whether a handler began another one. */
  private stateChanges = 0
  private readonly ready: Promise<void>
  private settleReady: { resolve: () => void, reject: (e: RoomsClientError) => void } | undefined
  private unlisten: (() => void) | undefined

  /**
   * Open a connection and resolve once the server's `welcome` arrived. The
   * first attempt must succeed (so a wrong URL fails fast with
   * `CONNECT_FAILED`, refused credentials with `UNAUTHORIZED`, a server that
   * never answers with `TIMEOUT`); only a 4001 with `getToken` is retried
   * once. After that the client reconnects on its own.
   */
  static async connect<TData = unknown> (url: string, options: ClientOptions = {}): Promise<RoomsClient<TData>> {
    const client = new RoomsClient<TData>(url, options)
    await client.ready
    return client
  }

  private constructor (url: string, options: ClientOptions) {
    super()
    const WebSocketImpl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket
    if (WebSocketImpl === undefined) throw new TypeError('No WebSocket implementation: this runtime has no global WebSocket (Node 20), so pass options.WebSocket (for example the ws package).')
    const timeout = options.requestTimeoutMs ?? options.ackTimeoutMs ?? 10_000
    if (typeof timeout !== 'number' || !(timeout > 0 && timeout <= MAX_TIMEOUT)) {
      throw new TypeError(`requestTimeoutMs must be a number of ms above 0 and at most ${MAX_TIMEOUT}, got ${String(timeout)}.`)
    }
    if (options.getToken !== undefined && typeof options.getToken !== 'function') {
      throw new TypeError(`getToken must be a function returning the token (or a promise of it), got ${typeof options.getToken}.`)
    }
    this.WebSocketImpl = WebSocketImpl
    this.getToken = options.getToken
    this.requestTimeoutMs = timeout
    this.url = options.name === undefined ? url : withQuery(url, 'name', options.name)
    this.reconnectOptions = options.reconnect === false
      ? false
      : { ...DEFAULT_BACKOFF, maxAttempts: Infinity, ...options.reconnect }
    // The queue is flushed in one go after the rejoins: the default leaves room for them in the
    // server's default burst of 200 frames (a larger queue met RATE_LIMITED, then a 1008 close).
    this.maxQueue = options.maxQueue ?? 100
    this.ready = new Promise((resolve, reject) => { this.settleReady = { resolve, reject } })
    const signal = options.signal
    if (signal !== undefined) {
      const onAbort = (): void => this.shutdown({ code: 1000, reason: 'signal aborted', byClient: true }, new RoomsClientError('CLOSED', 'The client was closed: its signal was aborted.'))
      signal.addEventListener('abort', onAbort, { once: true })
      this.unlisten = () => signal.removeEventListener('abort', onAbort)
      if (signal.aborted) {
        onAbort()
        return
      }
    }
    this.open('connect')
  }

  /** The handle of a room this client is in (or joining). */
  room (name: string): Room<TData> | undefined {
    return this.rooms.get(name)
  }

  /**
   * Join a room, or get the handle of one already joined (or being joined:
   * the options of that first call apply). The handle's `members`, `offset`
   * and `epoch` are set when this resolves. While disconnected, the join is
   * sent once the client is back. Rejects with the server's code when
   * refused, `TIMEOUT` when not joined within `requestTimeoutMs`, `CLOSED`
   * when the client closes first, `NOT_IN_ROOM` when left first.
   */
  async join (name: string, options: JoinOptions = {}): Promise<Room<TData>> {
    this.assertNotClosed()
    const existing = this.rooms.get(name)
    if (existing !== undefined) return await (this.joining.get(existing)?.promise ?? existing)
    const room = new Room<TData>(this, name)
    this.rooms.set(name, room)
    let settle!: Pick<FirstJoin<TData>, 'resolve' | 'reject'>
    const promise = new Promise<Room<TData>>((resolve, reject) => { settle = { resolve, reject } })
    const first: FirstJoin<TData> = { ...settle, promise, history: options.history, deadline: Date.now() + this.requestTimeoutMs, timer: undefined }
    this.joining.set(room, first)
    if (this.state === 'open') this.sendJoin(room)
    else this.waitForConnection(room, first)
    return await promise
  }

  /**
   * Subscribe to the live room list (rooms with members and their counts,
   * cluster-wide, pushed by the server): resolves with the list once its
   * first page is in; its `change` event follows every update, and the list
   * is read again after each reconnect. One list per client: a second call
   * stops the first. Rejects with `FORBIDDEN` when the server does not offer
   * it, `DISCONNECTED` when the connection is down or drops before the page.
   */
  async watchRooms (options: WatchRoomsOptions = {}): Promise<RoomList> {
    this.assertNotClosed()
    this.roomList?.stop()
    const list = new RoomList(this, options)
    this.roomList = list
    await this.ready
    if (this.roomList !== list) return list
    try {
      list.applyPage(await this.request(list.subscribeFrame(), undefined))
    } catch (err) {
      if (this.roomList === list) this.roomList = undefined
      throw err
    }
    return list
  }

  /** @internal */
  async requestRooms (frame: Record<string, unknown>): Promise<RoomsPageFrame> {
    return await this.request(frame, undefined)
  }

  /** @internal */
  stopRooms (list: RoomList): void {
    if (this.roomList !== list) return
    this.roomList = undefined
    clearTimeout(this.roomListRetry?.timer)
    this.roomListRetry = undefined
    if (this.state === 'open') this.request({ type: 'rooms', subscribe: false, limit: 1 }, undefined).catch(() => {})
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
    this.authRetry = false
    this.dropSocket(true)
    const info = { code: 1000, reason: 'reconnect() was called', byClient: true }
    this.lastClose = info
    if (this.setState('reconnecting', { ...info, attempt: 0, delayMs: 0 })) this.open('reconnect')
  }

  /** Close for good: no reconnect; pending calls and queued publishes reject with `CLOSED`. */
  close (): void {
    this.shutdown({ code: 1000, reason: 'client closed', byClient: true }, new RoomsClientError('CLOSED', 'The client was closed.'))
  }

  /** @internal */
  async publishTo (room: Room<TData>, data: TData, ephemeral: boolean): Promise<number | undefined> {
    this.assertNotClosed()
    if (this.rooms.get(room.name) !== room) {
      throw new RoomsClientError('NOT_IN_ROOM', `Not in room "${room.name}": this handle has left it; join it again to publish.`, room.name)
    }
    // A socket the server has closed (its close frame in, the close event still to come) is not ready: the
    // publish waits for the reconnect, as it does once `state` says so.
    const ready = this.live && !this.rejoins.has(room)
    if (ephemeral) {
      // Worth nothing later (a typing indicator): never held for the connection or the rejoin.
      if (!ready) throw this.ephemeralNotSent(room)
      await this.request({ type: 'publish', room: room.name, data, ephemeral: true }, room.name).catch((err: unknown) => {
        // Sent just behind a rejoin the server then refused for a passing reason: as if made while it waits.
        throw this.behindRefusedRejoin(room, err) ? this.ephemeralNotSent(room) : err
      })
      return undefined
    }
    const frame = { type: 'publish' as const, room: room.name, data }
    const deadline = Date.now() + this.requestTimeoutMs
    if (!ready && this.queue.length >= this.maxQueue) {
      throw new RoomsClientError('QUEUE_FULL', `${this.maxQueue} publishes are already waiting for the connection: retry later.`, room.name)
    }
    return await new Promise((resolve, reject) => {
      const item: Queued = { frame, handle: room, resolve, reject, deadline, timer: undefined, seq: this.nextPublish++ }
      if (ready) this.sendQueued(item)
      else this.enqueue(item)
    })
  }

  /** Hold a publish until the connection, or its room's rejoin, is back; it fails unsent at its deadline. */
  private enqueue (item: Queued): void {
    item.timer = setTimeout(() => {
      this.queue.splice(this.queue.indexOf(item), 1)
      item.reject(this.notSent('publish', item.frame.room))
    }, Math.max(0, item.deadline - Date.now()))
    // In the order publish() was called: one queued again (its room's rejoin was refused) goes before those made since.
    let at = this.queue.length
    while (at > 0 && (this.queue[at - 1] as Queued).seq > item.seq) at--
    this.queue.splice(at, 0, item)
  }

  private sendQueued (item: Queued): void {
    clearTimeout(item.timer)
    if (this.state !== 'closed' && !this.live) {
      // The socket is already closing (the server's close frame in, its close event still to come): request()
      // would refuse it unsent, DISCONNECTED. Unsent, it is held for the reconnect like any publish.
      this.enqueue(item)
      return
    }
    this.request(item.frame, item.frame.room, item.deadline).then((ack) => item.resolve(ack.offset as number), (err: RoomsClientError) => {
      // The room's rejoin, just before it, was refused for a passing reason:
      // this publish was not applied, and waits for the rejoin to succeed.
      if (err.code === 'NOT_IN_ROOM' && this.rejoins.has(item.handle) && this.rooms.get(item.handle.name) === item.handle) this.enqueue(item)
      else item.reject(err)
    })
  }

  /** @internal */
  async loadMembers (room: Room<TData>, after: string, limit: number | undefined): Promise<MembersPageFrame> {
    this.assertMember(room)
    const frame: Record<string, unknown> = { type: 'members', room: room.name, after }
    if (limit !== undefined) frame.limit = limit
    return await this.request(frame, room.name).catch((err: unknown) => { throw this.readError(room, err) })
  }

  /** @internal */
  async loadHistory (room: Room<TData>, after: number, limit: number, deadline?: number): Promise<HistoryPageFrame> {
    this.assertMember(room)
    return await this.request({ type: 'history', room: room.name, after, limit }, room.name, deadline).catch((err: unknown) => { throw this.readError(room, err) })
  }

  /**
   * A read needs the server to hold the membership: not once the handle left, nor while its rejoin,
   * refused for a passing reason, waits to be sent again (the server would answer NOT_IN_ROOM though
   * the handle stays joined). Such reads are not held, as publishes are: they fail at once.
   */
  private assertMember (room: Room<TData>): void {
    this.assertNotClosed()
    if (this.rooms.get(room.name) !== room) {
      throw new RoomsClientError('NOT_IN_ROOM', `Not in room "${room.name}": this handle has left it.`, room.name)
    }
    // Disconnected, the request itself rejects with DISCONNECTED.
    if (this.rejoins.has(room) && this.live) throw this.rejoinPending(room)
  }

  /** A read sent just behind a rejoin that the server then refused for a passing reason is answered as one made while it waits. */
  private readError (room: Room<TData>, err: unknown): unknown {
    return this.behindRefusedRejoin(room, err) ? this.rejoinPending(room) : err
  }

  /** A request's NOT_IN_ROOM that only says the rejoin sent just before it was refused for a passing reason: the handle stays. */
  private behindRefusedRejoin (room: Room<TData>, err: unknown): boolean {
    return (err as RoomsClientError).code === 'NOT_IN_ROOM' && this.rejoins.has(room) && this.rooms.get(room.name) === room
  }

  private ephemeralNotSent (room: Room<TData>): RoomsClientError {
    return new RoomsClientError('DISCONNECTED', `Not in room "${room.name}" on a live connection right now: an ephemeral publish is not held, so it was not published.`, room.name)
  }

  private rejoinPending (room: Room<TData>): RoomsClientError {
    return new RoomsClientError('UNAVAILABLE', `Room "${room.name}" is being rejoined (the server refused the rejoin for a passing reason; it is sent again): retry after the room's next joined event.`, room.name)
  }

  /** @internal */
  async leaveRoom (room: Room<TData>): Promise<void> {
    if (this.rooms.get(room.name) !== room) return
    const first = this.removeRoom(room, { cause: 'leave', reason: undefined }, () => new RoomsClientError('NOT_IN_ROOM', `Left room "${room.name}" before the publish could be sent.`, room.name))
    first?.reject(new RoomsClientError('NOT_IN_ROOM', `Left room "${room.name}" before it was joined.`, room.name))
    if (this.state !== 'open') return
    try {
      await this.sendLeave(room.name)
    } catch (err) {
      // Not in the room, or the connection is gone (dropped, or ended for good by close(), a 4003 or a final 4001):
      // either way the connection is no longer in the room.
      if (!LEFT_ANYWAY.has((err as RoomsClientError).code)) throw err
    }
  }

  /**
   * Leave a room no handle holds any more. Until the server confirms it, the
   * room is stray: the connection may still be in it.
   */
  private async sendLeave (name: string, leave: StrayLeave = { attempts: 0, timer: undefined }): Promise<void> {
    const older = this.stray.get(name)
    if (older !== leave) clearTimeout(older?.timer)
    this.stray.set(name, leave)
    const settled = (): void => { if (this.stray.get(name) === leave) this.stray.delete(name) }
    try {
      await this.request({ type: 'leave', room: name }, name)
      settled()
    } catch (err) {
      // Not a member, or this connection is gone: out of the room either way. Any other answer keeps it stray.
      const code = (err as RoomsClientError).code
      if (code === 'NOT_IN_ROOM' || code === 'DISCONNECTED') settled()
      // Otherwise the server keeps a member nobody reads, present to everyone else until the connection ends.
      else if ((PASSING.has(code) || code === 'TIMEOUT') && this.stray.get(name) === leave) this.retryLeave(name, leave)
      throw err
    }
  }

  /** Send a refused leave again after a backoff with full jitter, as a refused rejoin is. */
  private retryLeave (name: string, leave: StrayLeave): void {
    const delay = backoffDelay(this.reconnectOptions === false ? DEFAULT_BACKOFF : this.reconnectOptions, leave.attempts)
    leave.attempts++
    clearTimeout(leave.timer)
    leave.timer = setTimeout(() => {
      leave.timer = undefined
      // Not once a handle has the room again (joined again, or put in): the leave would end that membership.
      // A join sent before this fires is harmless: the server handles it after the refused leave, which
      // changed nothing. A newer leave, or a new connection (in no such room), has taken over.
      if (this.stray.get(name) !== leave || this.rooms.has(name) || !this.live) return
      this.sendLeave(name, leave).catch(() => {})
    }, delay)
  }

  /** Stop the retries of refused leaves and forget them: the connection they were for is gone. */
  private forgetStray (): void {
    for (const leave of this.stray.values()) clearTimeout(leave.timer)
    this.stray.clear()
  }

  /**
   * One connection attempt, `welcome` due within the request timeout: with
   * `getToken`, the token first, so no server slot waits on the app.
   */
  private open (cause: TokenCause): void {
    clearTimeout(this.welcomeTimer)
    this.welcomeTimer = setTimeout(() => this.onWelcomeTimeout(), this.requestTimeoutMs)
    const getToken = this.getToken
    if (getToken === undefined) {
      this.openSocket(undefined)
      return
    }
    const wait = {}
    this.tokenWait = wait
    fetchToken(getToken, cause).then((token) => {
      if (this.tokenWait !== wait) return
      this.tokenWait = undefined
      this.openSocket(token)
    }, (err: unknown) => {
      if (this.tokenWait !== wait) return
      this.tokenWait = undefined
      this.onTokenFailed(tokenFailure(err))
    })
  }

  private openSocket (token: string | undefined): void {
    let socket: WebSocketLike
    try {
      // The resume token rides in the Sec-WebSocket-Protocol header, not the URL, which access logs keep.
      socket = this.resume === undefined ? new this.WebSocketImpl(this.url) : new this.WebSocketImpl(this.url, [SUBPROTOCOL, RESUME_PROTOCOL + this.resume])
    } catch (err) {
      this.onSocketClosed(undefined, 1006, String(err), false)
      return
    }
    this.socket = socket
    // The token's only way to the server: the first frame, never the URL (which ends up in logs).
    if (token !== undefined) socket.onopen = () => { if (this.socket === socket) socket.send(JSON.stringify({ type: 'auth', token })) }
    socket.onmessage = (event: { data: unknown }) => { if (this.socket === socket) this.onFrame(event.data) }
    // The browser's CloseEvent and ws's both carry the server's code and reason.
    socket.onclose = (event: { code: number, reason: string }) => this.onSocketClosed(socket, event.code, event.reason, false)
    // Kept after dropSocket: ws emits 'error' when a connecting socket is closed, and an unhandled one would throw.
    socket.onerror = () => {}
  }

  private onFrame (raw: unknown): void {
    this.lastSeen = performance.now()
    this.pingSentAt = 0
    for (const room of this.holding) if (room.release()) this.holding.delete(room)
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
        this.onJoined(frame)
        break
      case 'left':
        if (frame.id === undefined) this.onRemoved(frame.room, (frame as { reason?: unknown }).reason)
        else this.settle(frame.id, frame)
        break
      case 'counts':
        this.roomList?.applyCounts(frame)
        break
      case 'rooms':
        // Without an id: the server restarts the subscription with a fresh page.
        if (frame.id === undefined) this.roomList?.applyPage(frame)
        else this.settle(frame.id, frame)
        break
      default:
        this.settle(frame.id, frame)
    }
  }

  private onWelcome (frame: WelcomeFrame): void {
    clearTimeout(this.welcomeTimer)
    this.connectionId = frame.connectionId
    this.user = frame.user
    this.heartbeatMs = frame.heartbeatMs
    // Only an anonymous connection is resumed by its token (a subprotocol): a getToken client stays in band.
    this.resume = this.getToken === undefined ? frame.resume : undefined
    this.attempts = 0
    this.authRetry = false
    this.state = 'open'
    this.startWatchdog()
    this.scheduleRefresh(frame.expiresAt)
    // Rejoins and queued publishes go out before the app hears of `open`, so
    // that anything it sends then follows them; the server handles a
    // connection's frames in order, so the publishes follow the joins.
    for (const room of [...this.rejoins.keys()]) this.forgetRejoin(room)
    // A new connection is in no room but those the server puts it in, which come as `joined`.
    this.forgetStray()
    for (const room of this.rooms.values()) this.sendJoin(room)
    for (const item of this.queue.splice(0)) this.sendQueued(item)
    this.resubscribeRooms()
    this.emit('state', 'open', { state: 'open', welcome: frame })
    this.emit('welcome', frame)
    this.settleReady?.resolve()
    this.settleReady = undefined
  }

  /**
   * After a reconnect, the room list starts over from a fresh page. A refusal
   * (the store away, a rate limit) is told through `error` and the subscribe
   * is tried again with the reconnect backoff while this connection lasts;
   * the next reconnect starts over.
   */
  private resubscribeRooms (): void {
    clearTimeout(this.roomListRetry?.timer)
    this.roomListRetry = undefined
    if (this.roomList !== undefined) this.subscribeRoomsAgain(this.roomList, this.socket)
  }

  private subscribeRoomsAgain (list: RoomList, socket: WebSocketLike | undefined): void {
    // A list whose first page is still on its way is watchRooms()'s to finish; a list stopped or replaced is done.
    if (this.roomList !== list || !list.started || this.socket !== socket || this.state !== 'open') return
    this.request(list.subscribeFrame(), undefined).then((page: RoomsPageFrame) => {
      this.roomListRetry = undefined
      if (this.roomList === list) list.applyPage(page)
    }, (err: RoomsClientError) => {
      if (err.code === 'DISCONNECTED' || err.code === 'CLOSED' || this.roomList !== list || this.socket !== socket) return
      this.emit('error', err)
      // A refusal that will not pass (FORBIDDEN: the server no longer offers the list) is not retried.
      if (err.code === 'FORBIDDEN') return
      const retry = this.roomListRetry ?? { attempts: 0, timer: undefined }
      const delay = backoffDelay(this.reconnectOptions === false ? DEFAULT_BACKOFF : this.reconnectOptions, retry.attempts)
      retry.attempts++
      retry.timer = setTimeout(() => { retry.timer = undefined; this.subscribeRoomsAgain(list, socket) }, delay)
      this.roomListRetry = retry
    })
  }

  private sendJoin (room: Room<TData>): void {
    const first = this.joining.get(room)
    const since = first === undefined ? { offset: room.offset, epoch: room.epoch } : undefined
    const history = first?.history
    const frame: Record<string, unknown> = { type: 'join', room: room.name }
    if (since !== undefined) frame.since = since
    // A repeat would bring no history: read it instead, whichever way the server answers (see `stray`).
    const read = history !== undefined && history > 0 && this.stray.has(room.name)
    if (history !== undefined && !read) frame.history = history
    if (first !== undefined) clearTimeout(first.timer)
    const join: JoinRequest = { handle: room, since, history, deadline: first?.deadline ?? Date.now() + this.requestTimeoutMs }
    if (read) join.read = true
    this.request(frame, room.name, join.deadline, join).then(() => {
      // A put-in answered it: the catch-up settles the first join.
      if (join.answered === true || first === undefined || this.joining.get(room) !== first) return
      this.joining.delete(room)
      first.resolve(room)
    }, (err: RoomsClientError) => {
      // Answered by a put-in already: the membership is live, whatever became of this repeat.
      if (join.answered !== true) this.onJoinFailed(room, first, err)
    })
  }

  private onJoinFailed (room: Room<TData>, first: FirstJoin<TData> | undefined, err: RoomsClientError): void {
    // Settled already by leave(), a kick or close().
    if (this.rooms.get(room.name) !== room || this.state === 'closed') return
    if (err.code === 'DISCONNECTED') {
      // Sent again on the next welcome.
      if (first !== undefined) this.waitForConnection(room, first)
      return
    }
    if (err.code === 'TIMEOUT' && first === undefined) {
      // A server that does not answer a rejoin is treated like a silent one.
      this.abandonSocket(`No reply to the rejoin of room "${room.name}" within ${this.requestTimeoutMs} ms`)
      return
    }
    if (first === undefined && PASSING.has(err.code)) {
      // A store outage or a rate limit passes: the room stays and the rejoin is tried again.
      this.retryRejoin(room)
      return
    }
    if (err.code === 'TIMEOUT' && this.state === 'open') {
      // The join may still be applied: undo it so that the server does not keep a member nobody reads.
      this.sendLeave(room.name).catch(() => {})
    }
    this.removeRoom(room, { cause: 'refused', reason: err.message, error: err }, () => err)
    if (first !== undefined) first.reject(err)
    else this.emit('error', err)
  }

  /** Send a refused rejoin again after a backoff with full jitter, like a reconnect. */
  private retryRejoin (room: Room<TData>): void {
    const entry = this.rejoins.get(room) ?? { attempts: 0, timer: undefined }
    const delay = backoffDelay(this.reconnectOptions === false ? DEFAULT_BACKOFF : this.reconnectOptions, entry.attempts)
    entry.attempts++
    clearTimeout(entry.timer)
    entry.timer = setTimeout(() => {
      entry.timer = undefined
      // A reconnect meanwhile rejoins every room by itself.
      if (this.rooms.get(room.name) === room && this.state === 'open') this.sendJoin(room)
    }, delay)
    this.rejoins.set(room, entry)
  }

  private onJoined (frame: JoinedFrame): void {
    const join = typeof frame.id === 'number' ? this.requests.get(frame.id)?.join : undefined
    if (join?.undo === true && !this.rooms.has(frame.room) && this.state === 'open') {
      // A reply to a join whose handle was dropped with no leave sent (removed by the server while the join was
      // under way, refused): the connection is a member that nothing reads, so undo it. Not after leave(),
      // whose own leave went out after this join, nor when a newer handle has the room (the app joined again,
      // or the server put it back): a second leave could remove that later membership.
      this.sendLeave(frame.room).catch(() => {})
    }
    // A reply to a join whose handle was dropped (timed out, left) must not touch a newer handle; one a
    // put-in answered was applied already.
    if (join?.read === true && join.answered !== true && this.rooms.get(frame.room) === join.handle) {
      // Perhaps a repeat of the membership a refused leave kept: nothing replayed either way.
      this.answerWithoutReplay(join, frame)
    } else if (join !== undefined && join.answered !== true && this.rooms.get(frame.room) === join.handle) {
      const retried = this.rejoins.has(join.handle)
      this.forgetRejoin(join.handle)
      join.handle.applyJoined(frame, join.since, join.history)
      // Publishes held while the rejoin was refused follow it now.
      if (retried) this.sendHeld(join.handle)
      if (join.since === undefined) this.holding.add(join.handle)
    }
    if (frame.id === undefined) this.onPutInRoom(frame)
    else this.settle(frame.id, frame)
  }

  /**
   * An unsolicited `joined`: the server put this connection into a room. A
   * room this client already has a handle for keeps that handle. When the
   * handle's own join (first join or rejoin) is under way, the put-in won
   * the race: the server answers that join later as a repeat, with nothing
   * replayed, and the membership is live from this frame on. So this frame
   * is the join's answer, and what the join's reply would have replayed (the
   * `history` asked for, what was missed) is read over the socket first.
   */
  private onPutInRoom (frame: JoinedFrame): void {
    if (this.state === 'closed') return
    const existing = this.rooms.get(frame.room)
    if (existing !== undefined) {
      const join = this.pendingJoin(existing)
      if (join !== undefined) this.answerWithoutReplay(join, frame)
      return
    }
    const room = new Room<TData>(this, frame.room)
    this.rooms.set(frame.room, room)
    room.applyJoined(frame, undefined, undefined)
    this.holding.add(room)
    this.emit('joined', room)
  }

  /**
   * The join of this handle that the server has yet to answer: its first
   * join or rejoin in flight, or a rejoin refused for a passing reason and
   * waiting to be sent again.
   */
  private pendingJoin (room: Room<TData>): JoinRequest | undefined {
    for (const request of this.requests.values()) {
      if (request.join?.handle === room && request.join.answered !== true) return request.join
    }
    if (this.rejoins.has(room)) return { handle: room, since: { offset: room.offset, epoch: room.epoch }, history: undefined, deadline: Date.now() + this.requestTimeoutMs }
    return undefined
  }

  /**
   * Take `frame` as the answer to `join`, the membership live from it, and
   * read over the socket what the join's reply would have replayed: `frame`
   * is a put-in that won the race with the join (whose own reply will be a
   * repeat), or the reply to a join sent in `read` mode.
   */
  private answerWithoutReplay (join: JoinRequest, frame: JoinedFrame): void {
    const room = join.handle as Room<TData>
    join.answered = true
    const retried = this.rejoins.has(room)
    this.forgetRejoin(room)
    room.waitForCatchUp()
    // The membership is live from this frame: publishes held since the rejoin was refused go now, before any the
    // app makes during the read (publishTo sends those at once). Their messages wait with the room's other frames.
    if (retried) this.sendHeld(room)
    // A first join's caller waits within requestTimeoutMs; a rejoin has no caller, and its pages each get their own.
    this.catchUp(room, room.catchUpFrom(frame, join.since, join.history), frame, join.since === undefined ? join.deadline : undefined).then((read) => {
      if (this.rooms.get(room.name) !== room || this.state === 'closed') return
      room.applyCaughtUp(frame, join.since, join.history, read)
      const first = this.joining.get(room)
      if (join.since === undefined && first !== undefined) {
        this.joining.delete(room)
        clearTimeout(first.timer)
        this.holding.add(room)
        first.resolve(room)
      }
    }, () => {
      // The connection dropped: nothing is applied, and the join goes out again after the reconnect.
      if (this.rooms.get(room.name) !== room || this.state === 'closed') return
      room.dropCatchUp()
      const first = this.joining.get(room)
      if (join.since === undefined && first !== undefined) this.waitForConnection(room, first)
    })
  }

  /**
   * Read the stored messages `from < offset <= frame.offset` over the
   * socket. Resolves with what was read, or undefined when the server
   * refused the read (or the history was reset meanwhile); rejects only when
   * the connection dropped.
   */
  private async catchUp (room: Room<TData>, from: number, frame: JoinedFrame, deadline: number | undefined): Promise<CatchUp | undefined> {
    const read: CatchUp = { epoch: frame.epoch, messages: [] }
    const to = frame.offset
    let after = from
    try {
      while (after < to) {
        // Every page within the join's deadline: join() settles within requestTimeoutMs however many pages it takes.
        const page = await this.loadHistory(room, after, Math.min(1000, to - after), deadline)
        // Another history than the joined frame's: its offsets name other messages.
        if (page.epoch !== read.epoch) return undefined
        const messages = page.messages.filter((m) => m.offset !== undefined && m.offset > after && m.offset <= to)
        if (messages.length === 0) break
        read.messages.push(...messages)
        after = (messages[messages.length - 1] as MessageFrame).offset as number
      }
    } catch (err) {
      if ((err as RoomsClientError).code === 'DISCONNECTED') throw err
      return undefined
    }
    return read
  }

  /** Send the publishes held while a room's rejoin was refused, in order. */
  private sendHeld (room: Room<TData>): void {
    for (const item of this.queue.filter((q) => q.handle === room)) {
      this.queue.splice(this.queue.indexOf(item), 1)
      this.sendQueued(item)
    }
  }

  /** The server removed this connection from a room (a kick). */
  private onRemoved (name: string, reason: unknown): void {
    const room = this.rooms.get(name)
    if (room === undefined) return
    const join = this.pendingJoin(room)
    if (room.status === 'joining' && join !== undefined) {
      // Not this handle's membership: an earlier one's (leave() then join() crossing the server's removal). Were it
      // the join under way the server removed, that join's own reply says so (NOT_IN_ROOM, removed while joining).
      return
    }
    const why = typeof reason === 'string' && reason !== '' ? reason : undefined
    const error = (): RoomsClientError => new RoomsClientError('NOT_IN_ROOM', `The server removed this connection from room "${name}"${why === undefined ? '' : ` (${why})`}.`, name)
    this.removeRoom(room, { cause: 'server', reason: why }, error)?.reject(error())
  }

  /**
   * Forget a room: its queued publishes reject, the handle is told. Returns
   * its pending first join, for the caller to reject with its own reason.
   */
  private removeRoom (room: Room<TData>, info: LeftInfo, queuedError: () => RoomsClientError): FirstJoin<TData> | undefined {
    this.rooms.delete(room.name)
    this.forgetRejoin(room)
    if (info.cause !== 'leave') {
      // No leave goes out for this membership: a join of it still under way is undone when its reply comes.
      for (const request of this.requests.values()) if (request.join?.handle === room) request.join.undo = true
    }
    const first = this.joining.get(room)
    this.joining.delete(room)
    clearTimeout(first?.timer)
    for (const item of this.queue.filter((q) => q.handle === room)) {
      this.queue.splice(this.queue.indexOf(item), 1)
      clearTimeout(item.timer)
      item.reject(queuedError())
    }
    room.markLeft(info)
    return first
  }

  private waitForConnection (room: Room<TData>, first: FirstJoin<TData>): void {
    clearTimeout(first.timer)
    first.timer = setTimeout(() => {
      if (this.joining.get(room) !== first) return
      this.removeRoom(room, { cause: 'refused', reason: undefined }, () => this.notSent('publish', room.name))
      first.reject(this.notSent('join', room.name))
    }, Math.max(0, first.deadline - Date.now()))
  }

  private onError (frame: ErrorFrame): void {
    const error = new RoomsClientError(frame.code, frame.message, frame.room)
    const request = typeof frame.id === 'number' ? this.requests.get(frame.id) : undefined
    if (request !== undefined) {
      this.requests.delete(frame.id as number)
      clearTimeout(request.timer)
      request.reject(error)
      return
    }
    // A 4001 close with the same sentence follows, and is told through `state`.
    if (frame.code === 'UNAUTHORIZED') return
    this.emit('error', error)
  }

  /** Refresh the token in place ahead of `expiresAt`, so the server never closes for expiry. */
  private scheduleRefresh (expiresAt: number | undefined): void {
    clearTimeout(this.refreshTimer)
    this.refreshTimer = undefined
    this.expiresAt = expiresAt
    if (expiresAt === undefined || this.getToken === undefined) return
    const delay = refreshDelay(expiresAt, Date.now())
    if (delay === undefined) return
    const socket = this.socket
    this.refreshTimer = delay > MAX_TIMEOUT
      ? setTimeout(() => this.scheduleRefresh(expiresAt), MAX_TIMEOUT)
      : setTimeout(() => { this.refresh(socket).catch(() => {}) }, delay)
  }

  /**
   * A failure changes nothing here: the server closes with 4001 (at once when
   * it refused the token, at `expiresAt` when none came), and the 4001 retry
   * takes over.
   */
  private async refresh (socket: WebSocketLike | undefined): Promise<void> {
    const token = await fetchToken(this.getToken as GetToken, 'refresh')
    if (this.socket !== socket || this.state !== 'open') return
    const reply = await this.request({ type: 'auth', token }, undefined) as AuthenticatedFrame
    if (this.socket !== socket) return
    this.scheduleRefresh(reply.expiresAt)
    this.emit('authenticated', reply)
  }

  private settle (id: RequestId | undefined, frame: ServerFrame): void {
    if (typeof id !== 'number') return
    const request = this.requests.get(id)
    if (request === undefined) return
    this.requests.delete(id)
    clearTimeout(request.timer)
    request.resolve(frame)
  }

  /**
   * Whether a frame can go out now: the state is open and so is the socket (not so between the
   * server's close frame and the close event, when the state still says open).
   */
  private get live (): boolean {
    return this.state === 'open' && this.socket?.readyState === OPEN
  }

  /** Send a request and wait for its reply until `deadline` (epoch ms). */
  private async request (frame: Record<string, unknown>, room: string | undefined, deadline = Date.now() + this.requestTimeoutMs, join?: JoinRequest): Promise<any> {
    this.assertNotClosed()
    const socket = this.socket
    if (socket === undefined || !this.live) {
      throw new RoomsClientError('DISCONNECTED', 'Not connected: the request was not sent.', room)
    }
    const wait = deadline - Date.now()
    if (wait <= 0) throw this.notSent(String(frame.type), room)
    const id = this.nextId++
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.requests.delete(id)
        reject(new RoomsClientError('TIMEOUT', `No reply within ${this.requestTimeoutMs} ms: the ${String(frame.type)} may or may not have been applied.`, room))
      }, wait)
      this.requests.set(id, { resolve, reject, timer, room, join })
      socket.send(JSON.stringify({ ...frame, id }))
    })
  }

  private notSent (what: string, room: string | undefined): RoomsClientError {
    return new RoomsClientError('TIMEOUT', `Not connected within ${this.requestTimeoutMs} ms: the ${what} was not sent, so it was not applied.`, room)
  }

  private onSocketClosed (socket: WebSocketLike | undefined, code: number, reason: string, byClient: boolean): void {
    if (socket !== undefined && this.socket !== socket) return
    this.socket = undefined
    this.tokenWait = undefined
    clearInterval(this.watchdog)
    clearTimeout(this.welcomeTimer)
    clearTimeout(this.refreshTimer)
    const info: CloseInfo = { code, reason, byClient }
    this.lastClose = info
    const shown = showClose(info)
    // Calls in flight reject with DISCONNECTED when the client reconnects, and like everything else
    // waiting (CLOSED, UNAUTHORIZED) when this close is final: shutdown() does that.
    if (this.state === 'closed') return
    if (code === UNAUTHORIZED_CLOSE && !byClient) {
      this.onUnauthorized(info)
      return
    }
    // The retry after a 4001 ended another way (a network drop, a 503): the next attempts are ordinary
    // reconnects, where a failing getToken counts as a failed attempt rather than closing for good.
    this.authRetry = false
    if (code === DISCONNECTED_CLOSE && !byClient) {
      this.shutdown(info, new RoomsClientError('CLOSED', `The server disconnected this client (${shown}); it does not reconnect.`, undefined, info))
      return
    }
    if (this.connecting()) {
      // The very first attempt failed: report it rather than retry a wrong URL forever.
      this.shutdown(info, new RoomsClientError('CONNECT_FAILED', `Could not connect to ${this.url} (${shown}).`, undefined, info))
      return
    }
    this.retry(info)
  }

  /**
   * The server refused the credentials (4001). With `getToken`, try once
   * more with a fresh token, at once; refused again before any `welcome`,
   * stop: a loop of refused attempts would only hammer the server.
   */
  private onUnauthorized (info: CloseInfo): void {
    const connecting = this.connecting()
    if (this.getToken === undefined || this.authRetry || (!connecting && this.reconnectOptions === false)) {
      const again = this.authRetry ? ', also with a fresh token from getToken' : ''
      this.shutdown(info, new RoomsClientError('UNAUTHORIZED', `The server refused the credentials${again} (${showClose(info)}).`, undefined, info))
      return
    }
    this.authRetry = true
    this.failDropped(info)
    if (!connecting && !this.setState('reconnecting', { ...info, attempt: ++this.attempts, delayMs: 0 })) return
    this.open('unauthorized')
  }

  /**
   * `getToken` failed. On the first connection or the retry after a 4001
   * there is nothing left to try; on other reconnects it may be passing (the
   * network is down), so it counts as a failed attempt.
   */
  private onTokenFailed (failure: string): void {
    clearTimeout(this.welcomeTimer)
    if (this.authRetry || this.connecting()) {
      // After a 4001, the server's close is what the app shows; the failure is in the message.
      const refused = this.authRetry && this.lastClose?.code === UNAUTHORIZED_CLOSE ? this.lastClose : undefined
      const info = refused ?? { code: UNAUTHORIZED_CLOSE, reason: failure, byClient: true }
      const message = refused === undefined ? `${failure}.` : `${failure}, after the server refused the credentials (${showClose(refused)}).`
      this.shutdown(info, new RoomsClientError('UNAUTHORIZED', message, undefined, info))
      return
    }
    const info = { code: UNAUTHORIZED_CLOSE, reason: failure, byClient: true }
    this.lastClose = info
    this.retry(info)
  }

  /** Reconnect after a backoff, or close once reconnecting is off or used up. */
  private retry (info: CloseInfo): void {
    const options = this.reconnectOptions
    if (options === false || this.attempts >= options.maxAttempts) {
      this.shutdown(info, new RoomsClientError('CLOSED', `The connection ended (${showClose(info)}) and the client does not reconnect.`, undefined, info))
      return
    }
    this.failDropped(info)
    const delayMs = backoffDelay(options, this.attempts)
    this.attempts++
    // A `state` handler that closed the client or reconnected it has the last word: no timer of ours.
    if (!this.setState('reconnecting', { ...info, attempt: this.attempts, delayMs })) return
    this.retryTimer = setTimeout(() => this.open('reconnect'), delayMs)
  }

  /** True until the first `welcome`: `connect()` is still waiting. */
  private connecting (): boolean {
    return this.settleReady !== undefined && this.connectionId === ''
  }

  private onWelcomeTimeout (): void {
    const reason = this.tokenWait === undefined
      ? `No welcome from the server within ${this.requestTimeoutMs} ms`
      : `getToken did not return a token within ${this.requestTimeoutMs} ms`
    if (this.connecting()) {
      const info = { code: 1006, reason, byClient: true }
      const hint = this.tokenWait === undefined ? ` at ${this.url}: check the URL and that the server is up` : ''
      this.shutdown(info, new RoomsClientError('TIMEOUT', `${reason}${hint}.`, undefined, info))
      return
    }
    this.abandonSocket(reason)
  }

  /** Give up on the current socket (silent server) and go through the reconnect path. */
  private abandonSocket (reason: string): void {
    this.dropSocket(true)
    this.onSocketClosed(undefined, 1006, reason, true)
  }

  /**
   * Notice a dead link the browser cannot see (no TCP reset): ping after a
   * heartbeat of quiet, and give up on the socket once that ping has gone a
   * heartbeat with nothing back. Judged by the ping, not by the time between
   * ticks: a hidden tab's throttled timers can tick a minute apart on a
   * healthy link, and a quiet room sends nothing unasked.
   */
  private startWatchdog (): void {
    clearInterval(this.watchdog)
    this.lastSeen = performance.now()
    this.pingSentAt = 0
    const socket = this.socket
    // Any frame answers the ping (onFrame clears it). A monotonic clock: a wall clock set back would never see it due.
    const silent = (): boolean => this.socket === socket && this.pingSentAt !== 0 && performance.now() - this.pingSentAt > this.heartbeatMs
    this.watchdog = setInterval(() => {
      if (silent()) {
        // A timer can run before the socket's waiting data is read (after a stall): judge again once it is.
        afterIo(() => { if (silent()) this.abandonSocket('No traffic from the server') })
      } else if (this.pingSentAt === 0 && performance.now() - this.lastSeen > this.heartbeatMs) {
        // The clock starts whatever the socket's state: one stuck closing is left as a silent one is.
        this.pingSentAt = performance.now()
        if (this.socket?.readyState === OPEN) this.socket.send('{"type":"ping"}')
      }
    }, Math.max(this.heartbeatMs / 2, 10))
  }

  /** The connection dropped and the client goes on: the calls in flight may or may not have been applied. */
  private failDropped (info: CloseInfo): void {
    this.failRequests(new RoomsClientError('DISCONNECTED', `The connection dropped (${showClose(info)}) before the reply came: the request may or may not have been applied.`, undefined, info))
  }

  private shutdown (info: CloseInfo, error: RoomsClientError): void {
    if (this.state === 'closed') return
    this.state = 'closed'
    this.lastClose = info
    clearTimeout(this.retryTimer)
    clearTimeout(this.welcomeTimer)
    this.unlisten?.()
    // Sent already: the code says why the client stopped, the sentence that it may have been applied.
    this.failRequests(new RoomsClientError(error.code, `${error.message} The request had been sent: it may or may not have been applied.`, undefined, error.close))
    this.dropSocket()
    for (const item of this.queue.splice(0)) {
      clearTimeout(item.timer)
      item.reject(error)
    }
    for (const [room, first] of this.joining) {
      clearTimeout(first.timer)
      first.reject(new RoomsClientError(error.code, error.message, room.name, error.close))
    }
    this.joining.clear()
    this.holding.clear()
    for (const room of [...this.rejoins.keys()]) this.forgetRejoin(room)
    this.forgetStray()
    clearTimeout(this.roomListRetry?.timer)
    this.roomListRetry = undefined
    this.settleReady?.reject(error)
    this.settleReady = undefined
    // The handles stop receiving: each says so once, after the state.
    const rooms = [...this.rooms.values()]
    this.rooms.clear()
    this.emit('state', 'closed', { state: 'closed', ...info })
    for (const room of rooms) room.markLeft({ cause: 'closed', reason: info.reason, error })
  }

  private forgetRejoin (room: Room<TData>): void {
    clearTimeout(this.rejoins.get(room)?.timer)
    this.rejoins.delete(room)
  }

  /** @param reconnecting a new connection follows: tell the server this is no goodbye */
  private dropSocket (reconnecting = false): void {
    const socket = this.socket
    this.socket = undefined
    this.tokenWait = undefined
    clearInterval(this.watchdog)
    clearTimeout(this.welcomeTimer)
    clearTimeout(this.refreshTimer)
    if (socket === undefined) return
    socket.onmessage = null
    socket.onclose = null
    try {
      if (reconnecting) socket.close(RECONNECTING_CLOSE, 'client reconnecting')
      else socket.close(1000, 'client closed')
    } catch {}
    this.failRequests(new RoomsClientError('DISCONNECTED', 'The connection was dropped before the reply came: the request may or may not have been applied.'))
  }

  private failRequests (error: RoomsClientError): void {
    for (const [id, request] of this.requests) {
      this.requests.delete(id)
      clearTimeout(request.timer)
      request.reject(new RoomsClientError(error.code, error.message, request.room, error.close))
    }
  }

  /**
   * Enter `reconnecting` and tell the app. False when a `state` handler
   * closed the client or began another attempt (`reconnect()`) meanwhile:
   * then the caller must not open a socket or set a timer of its own.
   */
  private setState (state: 'reconnecting', info: ReconnectInfo): boolean {
    const change = ++this.stateChanges
    this.state = state
    this.emit('state', state, { state, ...info })
    return this.stateChanges === change && !this.isClosed()
  }

  /** Read through a call: TypeScript would keep `state` narrowed across a handler that closed the client. */
  private isClosed (): boolean {
    return this.state === 'closed'
  }

  private assertNotClosed (): void {
    if (this.state === 'closed') throw new RoomsClientError('CLOSED', 'The client is closed: create a new one.', undefined, this.lastClose)
  }
}

/**
 * Run `fn` after the data already waiting on sockets has been read: Node's
 * setImmediate runs after the event loop's poll for I/O (a timer of 0 ms due
 * by then would run before it). A browser has no setImmediate: a 0 ms timer
 * is the nearest it has, a task of its own after the current one.
 */
const afterIo: (fn: () => void) => void = typeof setImmediate === 'function' ? (fn) => { setImmediate(fn) } : (fn) => { setTimeout(fn, 0) }

/** Shorthand for `RoomsClient.connect`. */
export async function connect<TData = unknown> (url: string, options?: ClientOptions): Promise<RoomsClient<TData>> {
  return await RoomsClient.connect<TData>(url, options)
}

function showClose ({ code, reason }: CloseInfo): string {
  return `close code ${code}${reason === '' ? '' : `: ${reason}`}`
}

function withQuery (url: string, key: string, value: string): string {
  return `${url}${url.includes('?') ? '&' : '?'}${key}=${encodeURIComponent(value)}`
}
