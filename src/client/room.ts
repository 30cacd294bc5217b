import type { JoinedFrame, Member, MessageFrame, Position, PresenceFrame } from '../protocol.js'
import { Emitter } from './emitter.js'
import type { RoomsClientError } from './errors.js'

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
   * reconnect was refused (see `error`).
   */
  cause: 'leave' | 'server' | 'refused'
  /** The server's reason, or the refusal's sentence. */
  reason: string | undefined
  /** For `refused`: the server's error. */
  error?: RoomsClientError
}

/** Events of a room handle. */
export type RoomEvents<TData> = {
  message: (message: RoomMessage<TData>) => void
  presence: (event: PresenceFrame) => void
  gap: (gap: Gap) => void
  /** Each time the room is (re)joined, with whether missed messages were replayed (undefined on the first join). */
  joined: (info: { recovered: boolean | undefined }) => void
  /** Once, when the handle stops receiving; it is then no longer the client's handle for the room. */
  left: (info: LeftInfo) => void
}

/** `joining` until the first `joined`, `left` for good once left, kicked or refused. */
export type RoomStatus = 'joining' | 'joined' | 'left'

/** What a room handle asks of its client. @internal */
export interface RoomOwner<TData> {
  publishTo: (room: Room<TData>, data: TData) => Promise<number>
  leaveRoom: (room: Room<TData>) => Promise<void>
}

/** A presence frame of either wire version: one member (v1) or a diff (v2). */
interface AnyPresence {
  joins?: Member[]
  leaves?: Member[]
  event?: 'join' | 'leave'
  member?: Member
}

/**
 * A room this client is in. It stays valid across reconnects: the client
 * rejoins it and replays what was missed through the same `message` handlers.
 */
export class Room<TData = unknown> extends Emitter<RoomEvents<TData>> {
  readonly name: string
  /** Members now (one entry per user), kept up to date from presence. */
  members: Member[] = []
  /** Last offset received (of `epoch`). */
  offset = 0
  epoch = ''
  status: RoomStatus = 'joining'
  private readonly owner: RoomOwner<TData>
  /** Messages received before the app could attach handlers to a new handle. */
  private held: Array<RoomMessage<TData>> | undefined
  private turnOver = true
  /** Set after an epoch change: the first message tells whether the new epoch's start was dropped. */
  private epochStart = false

  /** @internal */
  constructor (owner: RoomOwner<TData>, name: string) {
    super()
    this.owner = owner
    this.name = name
  }

  /**
   * Publish to the room; resolves with the message's offset. Held while
   * disconnected, within the request timeout. Rejects with `NOT_IN_ROOM` at
   * once once the handle has left.
   */
  async publish (data: TData): Promise<number> {
    return await this.owner.publishTo(this, data)
  }

  /** Leave the room; the handle stops receiving at once, even when the server's reply is lost. */
  async leave (): Promise<void> {
    await this.owner.leaveRoom(this)
  }

  /**
   * Apply a `joined` that answered this handle's join, before the replayed
   * messages that follow it.
   * @param since what the join sent, undefined on the first join
   * @param history the `history` the first join asked for
   * @internal
   */
  applyJoined (frame: JoinedFrame, since: Position | undefined, history: number | undefined): void {
    this.members = frame.members
    if (since === undefined) {
      // The replayed history (the last `history` offsets) follows; later ones are live.
      this.offset = history === undefined ? frame.offset : Math.max(0, frame.offset - history)
      this.epoch = frame.epoch
      this.status = 'joined'
      this.hold()
    } else if (frame.epoch !== since.epoch) {
      this.emit('gap', { room: this.name, epoch: since.epoch, after: since.offset, before: null, currentEpoch: frame.epoch })
      // Every retained message of the new epoch follows, from its first offset.
      this.offset = 0
      this.epoch = frame.epoch
      this.epochStart = true
    } else if (frame.recovered !== true) {
      if (frame.offset > since.offset) {
        this.emit('gap', { room: this.name, epoch: frame.epoch, after: since.offset, before: frame.offset + 1, currentEpoch: frame.epoch })
      }
      this.offset = frame.offset
    }
    this.emit('joined', { recovered: frame.recovered })
  }

  /** @internal */
  applyMessage (frame: MessageFrame): void {
    if (this.status !== 'joined') return
    const offset = frame.offset as number | undefined
    if (typeof offset === 'number') {
      // A replay can overlap what the handle already has; each offset is shown once.
      if (offset <= this.offset) return
      if (this.epochStart && offset > 1) {
        this.emit('gap', { room: this.name, epoch: this.epoch, after: 0, before: offset, currentEpoch: this.epoch })
      }
      this.epochStart = false
      this.offset = offset
    }
    const message: RoomMessage<TData> = { room: this.name, data: frame.data as TData, offset: offset as number, epoch: this.epoch, ts: frame.ts }
    if (frame.from !== undefined) message.from = frame.from
    if (this.held !== undefined) this.held.push(message)
    else this.emit('message', message)
  }

  /** @internal */
  applyPresence (frame: PresenceFrame): void {
    const diff = frame as AnyPresence
    const single = diff.member === undefined ? [] : [diff.member]
    const joins = diff.joins ?? (diff.event === 'join' ? single : [])
    const leaves = diff.leaves ?? (diff.event === 'leave' ? single : [])
    const changed = new Set([...leaves, ...joins].map((m) => m.id))
    this.members = [...this.members.filter((m) => !changed.has(m.id)), ...joins]
    this.emit('presence', frame)
  }

  /** @internal */
  markLeft (info: LeftInfo): void {
    if (this.status === 'left') return
    const wasJoined = this.status === 'joined'
    this.status = 'left'
    this.held = undefined
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
    this.held = undefined
    for (const message of held) this.emit('message', message)
    return true
  }

  /**
   * A new handle reaches the app when `join()` resolves, after the frames
   * that came with `joined` may already have been read (ws reads a chunk's
   * frames synchronously, in one turn). Hold its messages until that turn is
   * over: by then the app's continuation, a chain of microtasks, has run.
   */
  private hold (): void {
    this.held = []
    this.turnOver = false
    queueMicrotask(() => { this.turnOver = true })
    setTimeout(() => this.release(), 0)
  }
}
