import type { HistoryPageFrame, JoinedFrame, Member, MembersPageFrame, MessageFrame, Position, PresenceFrame } from '../protocol.js'
import { Emitter } from './emitter.js'
import { RoomsClientError } from './errors.js'
import { compareCodePoints } from './order.js'

/** A message as the app sees it. */
export interface RoomMessage<TData = unknown> {
  room: string
  data: TData
  offset: number
  /** The room's epoch the offset belongs to: `(epoch, offset)` names one message for good. */
  epoch: string
  ts: number
  /** The publishing member; absent for server publishes. */
  from?: Member
}

/**
 * Messages a room handle did not deliver and never will. The lost messages
 * are those of `epoch` with `after < offset < before` (both bounds
 * exclusive); every other message is delivered once, in order.
 *
 * - `epoch === currentEpoch`: a rejoin after a reconnect found the room's
 *   history no longer holding everything after `after`. Messages from
 *   `before` on arrive through `message`. Some of the range may still be
 *   stored: `GET /rooms/:room/messages?after={after}` and keep messages with
 *   `offset < before`, checking that the answer's `epoch` is `gap.epoch`.
 * - `epoch !== currentEpoch` (`before` is null): the room's history was reset
 *   (a restart of an in-memory server, a flushed Redis) while this client was
 *   away. Whatever the old epoch held after `after` is gone and cannot be
 *   refetched: REST serves only the current epoch. Every retained message of
 *   the new epoch follows through `message`, from its first offset.
 * - `after === 0` in the current epoch: the new epoch's first messages (up to
 *   `before`) were dropped by the history limits before this client rejoined.
 * - Any other jump in offsets, in the current epoch: a replay skipped a
 *   message that was delivered live but not kept (over `maxHistoryBytes`).
 */
export interface Gap {
  room: string
  /** The epoch the lost messages belong to. */
  epoch: string
  /** The last offset of `epoch` this handle delivered (lost: offsets above it). */
  after: number
  /** The first offset of `epoch` delivered after the gap (lost: offsets below it); null when the epoch ended. */
  before: number | null
  /** The room's epoch now: messages delivered after this gap belong to it. */
  currentEpoch: string
}

/** Why a room handle stopped receiving. */
export interface LeftInfo {
  /**
   * `leave`: the app called `room.leave()`. `server`: the server removed this
   * connection from the room (a kick). `refused`: the rejoin after a
   * reconnect was refused (see `error`). `closed`: the client closed for good
   * (`close()`, its signal, a 4003 or a final 4001 from the server,
   * reconnects given up); `error` is what waiting calls rejected with.
   */
  cause: 'leave' | 'server' | 'refused' | 'closed'
  /** The server's reason, or the refusal's sentence. */
  reason: string | undefined
  /** For `refused`: the server's error. For `closed`: the client's `CLOSED` or `UNAUTHORIZED`. */
  error?: RoomsClientError
}

/** A message published with `ephemeral: true` (typing indicators, cursors): no offset, not stored, never replayed. */
export type EphemeralMessage<TData = unknown> = Omit<RoomMessage<TData>, 'offset' | 'epoch'> & { ephemeral: true }

/**
 * What changed in a room's members, relative to what this handle knew:
 * `joins` are members it did not know, `leaves` members it knew that are
 * gone. `count` is the room's member count after the change (the server's).
 */
export type PresenceChange = Omit<PresenceFrame, 'type'>

/** Events of a room handle. */
export type RoomEvents<TData> = {
  /** A stored message, with its offset: once each, in offset order. */
  message: (message: RoomMessage<TData>) => void
  /** An ephemeral message: delivered to the members of the moment only; it does not move `offset`. */
  ephemeral: (message: EphemeralMessage<TData>) => void
  /** Members this handle learnt of or lost (never empty, never this client's own user joining). */
  presence: (change: PresenceChange) => void
  /** `count` changed: also when the change names no member this handle knows (a room larger than its loaded pages). */
  count: (count: number) => void
  gap: (gap: Gap) => void
  /** Each time the room is (re)joined, with whether missed messages were replayed (undefined on the first join). */
  joined: (info: { recovered: boolean | undefined }) => void
  /** Once, when the handle stops receiving; it is then no longer the client's handle for the room. */
  left: (info: LeftInfo) => void
}

/** `joining` until the first `joined`, `left` for good once left, kicked or refused. */
export type RoomStatus = 'joining' | 'joined' | 'left'

export interface PublishOptions {
  /**
   * No offset, not stored, not replayed, delivered to the members of the
   * moment: typing indicators, cursors. Resolves with undefined. Never held
   * for a reconnect: while disconnected it rejects with `DISCONNECTED` at once.
   */
  ephemeral?: boolean
}

export interface HistoryOptions {
  /** Messages in the page, 1-1000 (default 100). */
  limit?: number
  /**
   * Only messages with a lower offset: the `offset` of the oldest message
   * already shown, to page further back. Default, and at most: the handle's
   * `offset` + 1, so the page ends with the last message the `message`
   * handlers got and holds none that is still to come through them.
   */
  before?: number
}

/** Stored messages of a room, oldest first. */
export interface HistoryPage<TData = unknown> {
  /**
   * The epoch the offsets belong to. Another than the handle's when `history()` was called means the room's history
   * was reset: `messages` is then empty, as `before` named offsets of the old epoch.
   */
  epoch: string
  /** At most `limit` messages, the latest ones before `before` that are still stored. */
  messages: Array<RoomMessage<TData>>
}

/** A gap found while a new handle holds its messages: told in its place among them. */
interface HeldGap { gap: Gap }

/** Stored messages read over the socket for a join the server answered without its replay. @internal */
export interface CatchUp {
  epoch: string
  messages: MessageFrame[]
}

/** What a room handle asks of its client. @internal */
export interface RoomOwner<TData> {
  /** The client's own user, from the latest `welcome`. */
  readonly user: Member | undefined
  publishTo: (room: Room<TData>, data: TData, ephemeral: boolean) => Promise<number | undefined>
  leaveRoom: (room: Room<TData>) => Promise<void>
  loadMembers: (room: Room<TData>, after: string, limit: number | undefined) => Promise<MembersPageFrame>
  loadHistory: (room: Room<TData>, after: number, limit: number, deadline?: number) => Promise<HistoryPageFrame>
}

/** A members page in flight, and the members that left while it was. */
interface Paging {
  promise: Promise<Member[]>
  /** Leaves seen while the page was in flight: a page read before them must not bring them back. */
  gone: Set<string>
}

/**
 * A room this client is in. It stays valid across reconnects: the client
 * rejoins it and replays what was missed through the same `message` handlers.
 */
export class Room<TData = unknown> extends Emitter<RoomEvents<TData>> {
  readonly name: string
  /** Members in the room (the server's count, this client's user included). */
  count = 0
  /** Last offset received (of `epoch`). */
  offset = 0
  epoch = ''
  status: RoomStatus = 'joining'
  private readonly owner: RoomOwner<TData>
  /** Members this handle knows: the pages loaded, kept up to date by presence. */
  private readonly known = new Map<string, Member>()
  /** This client's user id when the last `joined` was applied: after a reconnect that gave a fresh user, the former one. */
  private self: string | undefined
  /**
   * The users this client was before reconnects that gave it a fresh one: still
   * listed while their grace runs, and never announced as leaving when it ends.
   */
  private formerSelves: Set<string> | undefined
  private sorted: Member[] | undefined
  /** The cursor of the next members page; null when every page is loaded. */
  private membersNext: string | null = null
  /** Bumped by each `joined`: a page asked for before it belongs to a membership that is gone. */
  private generation = 0
  private paging: Paging | undefined
  /** Messages received before the app could attach handlers to a new handle. */
  private held: Array<RoomMessage<TData> | EphemeralMessage<TData> | HeldGap> | undefined
  /** How many of `held` the handlers got so far, while they are released. */
  private heldAt = 0
  /**
   * Frames of the room that came while the client reads what a put-in
   * `joined` (one that answered this handle's join) did not replay: applied
   * after it, in order. Undefined when not reading.
   */
  private waiting: Array<MessageFrame | PresenceFrame> | undefined
  private turnOver = true
  /**
   * Set by a first join with `history`: `offset` was counted back from the
   * joined offset, so the first message may start past it (less history was
   * kept than asked for), which is no gap. Any other jump in offsets is one.
   */
  private countedBack = false
  private leftInfo: LeftInfo | undefined

  /** @internal */
  constructor (owner: RoomOwner<TData>, name: string) {
    super()
    this.owner = owner
    this.name = name
  }

  /**
   * The members this handle knows, by id: every member once `membersComplete`,
   * else the pages loaded so far (and whoever joined since).
   */
  get members (): Member[] {
    this.sorted ??= [...this.known.values()].sort((a, b) => compareCodePoints(a.id, b.id))
    return this.sorted
  }

  /** True when `members` holds every member; else `loadMoreMembers()` fetches the next page. */
  get membersComplete (): boolean {
    return this.membersNext === null
  }

  /**
   * Publish to the room; resolves with the message's offset. Held while
   * disconnected, within the request timeout. Rejects with `NOT_IN_ROOM` at
   * once once the handle has left. With `{ ephemeral: true }` resolves with
   * undefined and is never held.
   */
  async publish (data: TData, options?: { ephemeral?: false }): Promise<number>
  async publish (data: TData, options: { ephemeral: true }): Promise<undefined>
  async publish (data: TData, options?: PublishOptions): Promise<number | undefined>
  async publish (data: TData, options: PublishOptions = {}): Promise<number | undefined> {
    return await this.owner.publishTo(this, data, options.ephemeral === true)
  }

  /** Leave the room; the handle stops receiving at once, even when the server's reply is lost. */
  async leave (): Promise<void> {
    await this.owner.leaveRoom(this)
  }

  /**
   * Load the next page of members into `members`; resolves with the members
   * it added ([] when `membersComplete`). Calls made while one is in flight
   * share it. Rejects like any request: `DISCONNECTED` while disconnected,
   * `TIMEOUT` after `requestTimeoutMs`, `NOT_IN_ROOM` once left. After a
   * rejoin the list starts again from the first page the server sent.
   * @param limit members in the page (the server's page size by default, at most 1000)
   */
  async loadMoreMembers (limit?: number): Promise<Member[]> {
    if (this.status !== 'joined') throw this.notJoined()
    if (this.paging !== undefined) return await this.paging.promise
    const after = this.membersNext
    if (after === null) return []
    const generation = this.generation
    const paging: Paging = { promise: undefined as unknown as Promise<Member[]>, gone: new Set() }
    paging.promise = this.owner.loadMembers(this, after, limit).then((page) => {
      if (this.paging === paging) this.paging = undefined
      if (this.generation !== generation || this.status !== 'joined') return []
      const added: Member[] = []
      for (const member of page.members) {
        if (paging.gone.has(member.id) || this.known.has(member.id)) continue
        this.known.set(member.id, member)
        added.push(member)
      }
      this.membersNext = page.next
      this.sorted = undefined
      return added
    }, (err: unknown) => {
      if (this.paging === paging) this.paging = undefined
      throw err
    })
    this.paging = paging
    return await paging.promise
  }

  /**
   * Read stored messages of the room over the socket, the latest `limit`
   * before `before`, oldest first: what `GET /rooms/:room/messages` serves,
   * under the membership the join got (no REST credentials needed). The
   * history limits of the server apply: what they dropped is not in the page.
   * Rejects with `NOT_IN_ROOM` before the join or once left, `DISCONNECTED`
   * while disconnected, `TIMEOUT` after `requestTimeoutMs`, and a TypeError
   * for a `limit` or `before` that is not a whole number in range.
   */
  async history (options: HistoryOptions = {}): Promise<HistoryPage<TData>> {
    const { limit = 100 } = options
    const delivered = this.delivered()
    const before = options.before === undefined ? delivered + 1 : options.before
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new TypeError(`history limit must be a whole number from 1 to 1000, got ${String(limit)}.`)
    if (!Number.isInteger(before) || before < 1) throw new TypeError(`history before must be an offset (a whole number of at least 1), got ${String(before)}.`)
    if (this.status !== 'joined') throw this.notJoined()
    // Past what the handlers got a page would take messages still on their way to them.
    const end = Math.min(before - 1, delivered)
    const after = Math.max(0, end - limit)
    if (end - after === 0) return { epoch: this.epoch, messages: [] }
    const epoch = this.epoch
    const page = await this.owner.loadHistory(this, after, end - after)
    const messages: Array<RoomMessage<TData>> = []
    // `before` and `end` count in the epoch of the call. A page of another (a rejoin sent before this read found the
    // history reset) has offsets naming other messages, whose retained ones come through the handlers after the rejoin.
    if (page.epoch !== epoch) return { epoch: page.epoch, messages }
    for (const frame of page.messages) {
      // Past the history limits the store answers from its oldest retained message, which may be past `before`.
      // Nor past the handle's offset: those may still be on their way to the handlers.
      if (frame.offset === undefined || frame.offset > end) continue
      const message: RoomMessage<TData> = { room: this.name, data: frame.data as TData, offset: frame.offset, epoch: page.epoch, ts: frame.ts }
      if (frame.from !== undefined) message.from = frame.from
      messages.push(message)
    }
    return { epoch: page.epoch, messages }
  }

  /** The last offset the handlers got: below `offset` while a first join's messages are held for the app's turn. */
  private delivered (): number {
    const held = this.held ?? []
    for (let i = this.heldAt; i < held.length; i++) {
      const message = held[i] as RoomMessage<TData> | EphemeralMessage<TData> | HeldGap
      if ('offset' in message) return message.offset - 1
      // A gap still to be told: the handlers got up to its start.
      if ('gap' in message) return message.gap.after
    }
    return this.offset
  }

  /**
   * Apply a `joined` that answered this handle's join, before the replayed
   * messages that follow it.
   * @param since what the join sent, undefined on the first join
   * @param history the `history` the first join asked for
   * @internal
   */
  applyJoined (frame: JoinedFrame, since: Position | undefined, history: number | undefined): void {
    const change = since === undefined ? undefined : this.rejoinChange(frame)
    const self = this.owner.user?.id
    if (this.self !== undefined && this.self !== self) (this.formerSelves ??= new Set()).add(this.self)
    this.self = self
    this.known.clear()
    for (const member of frame.members) this.known.set(member.id, member)
    this.sorted = undefined
    this.membersNext = frame.membersNext
    this.generation++
    this.paging = undefined
    const countChanged = this.count !== frame.count
    this.count = frame.count
    if (since === undefined) {
      // The replayed history (the last `history` offsets) follows; later ones are live.
      this.offset = history === undefined ? frame.offset : Math.max(0, frame.offset - history)
      this.countedBack = this.offset < frame.offset
      this.epoch = frame.epoch
      this.status = 'joined'
      this.hold()
    } else if (frame.epoch !== since.epoch || frame.offset < since.offset) {
      // Another epoch; or the same one counting lower than what this handle delivered, which must not happen: its
      // offsets would name messages already delivered again, so it is told as a reset rather than lowered silently.
      this.emit('gap', { room: this.name, epoch: since.epoch, after: since.offset, before: null, currentEpoch: frame.epoch })
      this.countedBack = false
      if (frame.epoch === since.epoch) {
        // Nothing is replayed: count on from the server's offset.
        this.offset = frame.offset
      } else {
        // Every retained message of the new epoch follows, from its first offset: a first past 1 is a gap from 0.
        this.offset = 0
        this.epoch = frame.epoch
      }
    } else {
      // Same epoch: this answer settles what was missed (a gap, or the replay that follows).
      this.countedBack = false
      if (frame.recovered !== true) {
        // Never a gap naming offsets this handle delivered since it sent `since`.
        const after = Math.max(since.offset, this.offset)
        if (frame.offset > after) {
          this.emit('gap', { room: this.name, epoch: frame.epoch, after, before: frame.offset + 1, currentEpoch: frame.epoch })
        }
        this.offset = Math.max(this.offset, frame.offset)
      }
    }
    if (change !== undefined && (change.joins.length > 0 || change.leaves.length > 0)) this.emit('presence', change)
    if (since !== undefined && countChanged) this.emit('count', this.count)
    this.emit('joined', { recovered: frame.recovered })
  }

  /**
   * This handle's join was answered with nothing replayed: by a put-in
   * (`app.rooms.join`) that won the race with it, or by a repeat of a
   * membership the server kept after an earlier handle was dropped. The
   * membership is live. Frames of the room wait until `applyCaughtUp` (or
   * `dropCatchUp`).
   * @internal
   */
  waitForCatchUp (): void {
    this.waiting ??= []
  }

  /**
   * The catch-up could not be read for want of a connection: nothing is
   * applied; the join goes out again after the reconnect.
   * @internal
   */
  dropCatchUp (): void {
    this.waiting = undefined
  }

  /**
   * Where the replay a put-in or repeat `joined` lacks begins: the join
   * would have had `from < offset <= frame.offset` replayed.
   * @internal
   */
  catchUpFrom (frame: JoinedFrame, since: Position | undefined, history: number | undefined): number {
    if (since === undefined) return history === undefined ? frame.offset : Math.max(0, frame.offset - history)
    // Another epoch: all of it is new. The same one counting below `since` (a reset told as a gap): nothing to read.
    if (frame.epoch !== since.epoch) return 0
    if (frame.offset < since.offset) return frame.offset
    return Math.max(since.offset, this.offset)
  }

  /**
   * Apply a put-in or repeat `joined` that answered this handle's join,
   * with the stored messages read in place of the replay it lacked
   * (undefined: they could not be read), then the frames that waited
   * meanwhile. The outcome is the one a reply to the join would have had:
   * the requested history on a first join, what was missed on a rejoin
   * (`recovered: true` when all of it was read), and a `gap` for what could
   * not be read.
   * @internal
   */
  applyCaughtUp (frame: JoinedFrame, since: Position | undefined, history: number | undefined, read: CatchUp | undefined): void {
    const waiting = this.waiting ?? []
    this.waiting = undefined
    const from = this.catchUpFrom(frame, since, history)
    const stored = read === undefined || read.epoch !== frame.epoch
      ? undefined
      : read.messages.filter((m) => m.offset !== undefined && m.offset > from && m.offset <= frame.offset)
    if (since === undefined) {
      this.applyJoined(frame, undefined, history)
      if (stored === undefined && frame.offset > this.offset) {
        // The history asked for could not be read: told as a gap, among the held messages, so that handlers attached after join() hear it.
        this.deliver({ gap: { room: this.name, epoch: frame.epoch, after: this.offset, before: frame.offset + 1, currentEpoch: frame.epoch } })
        this.offset = frame.offset
        this.countedBack = false
      }
    } else if (frame.epoch !== since.epoch || frame.offset < since.offset) {
      // The epoch's retained messages follow, as the server's replay would have them; unread, the next message's offset tells what was lost.
      this.applyJoined({ ...frame, recovered: false }, since, undefined)
    } else {
      // The read skips what history lacks: its start dropped by the limits, or a hole anywhere (a message over
      // maxHistoryBytes, delivered but not kept), the end included. Only an unbroken run up to frame.offset is
      // delivered; what comes before it is one gap, told before `joined` as the server tells a since it cannot replay.
      let run = frame.offset + 1
      for (let i = (stored?.length ?? 0) - 1; i >= 0 && stored?.[i]?.offset === run - 1; i--) run--
      if (frame.offset <= from || run === from + 1) {
        this.applyJoined({ ...frame, recovered: true }, since, undefined)
      } else {
        this.applyJoined({ ...frame, offset: run - 1, recovered: false }, since, undefined)
      }
    }
    for (const message of stored ?? []) this.applyMessage(message)
    for (const waited of waiting) {
      if (waited.type === 'message') this.applyMessage(waited)
      else this.applyPresence(waited)
    }
  }

  /**
   * What a rejoin's first page says changed while this handle was away, as
   * far as both lists cover: a member of the page inside the id range this
   * handle had loaded but unknown to it joined; a known member inside the
   * page's range but not in it left. Known members past the page are dropped
   * without a leave: whether they are still there is unknown until loaded.
   * This client's own user is in neither: not the one it has now as a join,
   * nor, when the reconnect gave it a fresh user (a resume token the server
   * no longer accepts, as after a restart that lost its key), the one it had
   * as a leave. Both are this client, which `welcome` and `client.user` tell.
   */
  private rejoinChange (frame: JoinedFrame): PresenceChange {
    const self = this.owner.user?.id
    const covered = (id: string, next: string | null): boolean => next === null || compareCodePoints(id, next) <= 0
    const page = new Set(frame.members.map((m) => m.id))
    const joins = frame.members.filter((m) => !this.known.has(m.id) && m.id !== self && covered(m.id, this.membersNext))
    const leaves = [...this.known.values()].filter((m) => !page.has(m.id) && m.id !== self && m.id !== this.self && covered(m.id, frame.membersNext))
    return { room: this.name, joins, leaves, count: frame.count }
  }

  /** @internal */
  applyMessage (frame: MessageFrame): void {
    if (this.waiting !== undefined) {
      this.waiting.push(frame)
      return
    }
    if (this.status !== 'joined') return
    if (frame.ephemeral === true || frame.offset === undefined) {
      const message: EphemeralMessage<TData> = { room: this.name, data: frame.data as TData, ts: frame.ts, ephemeral: true }
      if (frame.from !== undefined) message.from = frame.from
      this.deliver(message)
      return
    }
    const offset = frame.offset
    // A replay can overlap what the handle already has; each offset is shown once.
    if (offset <= this.offset) return
    // Offsets of an epoch come one after another, live or replayed: a jump is what history no longer held (the start
    // of a new epoch, a hole where a message was delivered but not kept), told before the message after it.
    if (offset > this.offset + 1 && !this.countedBack) {
      this.deliver({ gap: { room: this.name, epoch: this.epoch, after: this.offset, before: offset, currentEpoch: this.epoch } })
    }
    this.countedBack = false
    this.offset = offset
    const message: RoomMessage<TData> = { room: this.name, data: frame.data as TData, offset, epoch: this.epoch, ts: frame.ts }
    if (frame.from !== undefined) message.from = frame.from
    this.deliver(message)
  }

  /**
   * Apply a presence diff. It gives the named members' state when it was
   * sent, so it is applied as a set, not as events: a join of a member
   * already known (it joined just before this handle's `joined`) and a leave
   * of one never known change nothing and are not reported.
   * @internal
   */
  applyPresence (frame: PresenceFrame): void {
    if (this.waiting !== undefined) {
      this.waiting.push(frame)
      return
    }
    if (this.status !== 'joined') return
    const self = this.owner.user?.id
    const joins: Member[] = []
    const leaves: Member[] = []
    for (const member of frame.leaves) {
      this.paging?.gone.add(member.id)
      const known = this.known.get(member.id)
      if (known === undefined) continue
      this.known.delete(member.id)
      if (this.formerSelves?.has(member.id) !== true) leaves.push(known)
    }
    for (const member of frame.joins) {
      this.paging?.gone.delete(member.id)
      const known = this.known.has(member.id)
      this.known.set(member.id, member)
      if (!known && member.id !== self) joins.push(member)
    }
    this.sorted = undefined
    const countChanged = this.count !== frame.count
    this.count = frame.count
    if (joins.length > 0 || leaves.length > 0) this.emit('presence', { room: this.name, joins, leaves, count: frame.count })
    if (countChanged) this.emit('count', this.count)
  }

  /** Why a call on a handle that is not joined fails: `NOT_IN_ROOM`, or how the client closed. */
  private notJoined (): RoomsClientError {
    const closed = this.leftInfo?.cause === 'closed' ? this.leftInfo.error : undefined
    if (closed !== undefined) return new RoomsClientError(closed.code, closed.message, this.name, closed.close)
    return new RoomsClientError('NOT_IN_ROOM', `Not in room "${this.name}": ${this.status === 'left' ? 'this handle has left it' : 'it is not joined yet'}.`, this.name)
  }

  /** @internal */
  markLeft (info: LeftInfo): void {
    if (this.status === 'left') return
    this.leftInfo = info
    const wasJoined = this.status === 'joined'
    this.status = 'left'
    this.held = undefined
    this.waiting = undefined
    if (wasJoined) this.emit('left', info)
  }

  /**
   * Deliver the messages held since the first `joined`, once the turn that
   * read it is over (the app's continuation of `join()` ran in it). The
   * client calls this before it handles any later frame, so they stay in
   * order with replies.
   * @returns true when nothing is held any more
   * @internal
   */
  release (): boolean {
    if (this.held === undefined) return true
    if (!this.turnOver) return false
    const held = this.held
    // Held until emitted: a handler's room.history() pages only up to what is still to come. A nested release (from
    // a handler) takes over the rest: this one stops once `held` is no longer the same.
    while (this.held === held && this.heldAt < held.length) {
      // A handler that left (room.leave(), client.close()) ends the delivery: nothing follows `left`.
      if (this.status === 'left') break
      this.emitMessage(held[this.heldAt++] as RoomMessage<TData> | EphemeralMessage<TData> | HeldGap)
    }
    if (this.held === held || this.held === undefined) {
      this.held = undefined
      this.heldAt = 0
    }
    return true
  }

  private deliver (message: RoomMessage<TData> | EphemeralMessage<TData> | HeldGap): void {
    if (this.held !== undefined) this.held.push(message)
    else this.emitMessage(message)
  }

  /**
   * A handle that has left stops receiving at once: a handler that left stops the event it was given, and what was
   * still to follow it in the same frame (a rejoin's `presence`, `count` and `joined` after its `gap`), too.
   */
  protected override receiving (event: keyof RoomEvents<TData>): boolean {
    return this.status !== 'left' || event === 'left'
  }

  private emitMessage (message: RoomMessage<TData> | EphemeralMessage<TData> | HeldGap): void {
    if ('gap' in message) this.emit('gap', message.gap)
    else if ('ephemeral' in message) this.emit('ephemeral', message)
    else this.emit('message', message)
  }

  /**
   * A new handle reaches the app when `join()` resolves, after the frames
   * that came with `joined` may already have been read (ws reads a chunk's
   * frames synchronously, in one turn). Hold its messages until that turn is
   * over: by then the app's continuation, a chain of microtasks, has run.
   */
  private hold (): void {
    this.held = []
    this.heldAt = 0
    this.turnOver = false
    queueMicrotask(() => { this.turnOver = true })
    setTimeout(() => this.release(), 0)
  }
}
