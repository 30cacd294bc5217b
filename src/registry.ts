import type { FastifyBaseLogger } from 'fastify'
import type { Adapter, AdapterListener, HistoryPage, JoinResult, MembersQuery, PresenceChange, RoomInfo, RoomPage, RoomQuery, StoredMessage } from './adapters/adapter.js'
import type { ControlCommand, PublishesNow, PublishReceipt } from './adapters/adapter.js'
import { encodeHistory, encodeJoined, encodePresence, type EncodedPublish, type JoinedFrame, type Member, type MembersPageFrame, type Position, type RequestId } from './protocol.js'
import { RoomsError } from './errors.js'
import { eachFrame, textFrame, textFrames } from './frame.js'
import type { Metrics } from './metrics.js'
import type { LeaveCause } from './options.js'

/** What the registry needs of a connection: who it is and a way to write encoded frames. */
export interface Peer {
  readonly id: string
  readonly user: Member
  /** Write one encoded frame; the same buffer may be written to many peers. */
  sendEncoded (frame: Buffer | string): void
  /**
   * Write a fan-out frame: `framed` is the complete WebSocket frame of
   * `payload`, built once for every member; or the frames of several
   * payloads back to back (`textFrames`).
   */
  sendFramed (framed: Buffer, payload: Buffer | readonly Buffer[]): void
  /** Close the connection: it handles no more frames and leaves its rooms now, not when the peer answers. */
  close (code: number, reason: string): void
  /** Close it as a slow consumer (1013): more of its unsent data is held than maxBufferedBytes. */
  closeSlow (): void
  /** One of its memberships that got `joined` ended (for the `onLeave` hook). */
  left? (room: string, cause: LeaveCause): void
  /**
   * A promise while the connection holds more unsent bytes than it should be
   * given before it reads, settled once they are written or it closes;
   * undefined when it can take more now (or cannot tell).
   */
  backlogged? (): Promise<void> | undefined
}

interface Pending {
  offset: number
  framed: Buffer
  payload: Buffer
  /** A presence frame's sequence, when the adapter numbers them. */
  presenceSeq?: number | undefined
}

/**
 * What is published for a joining member until its join is written out
 * (`joined`, then the replay): it follows, in order, each offset once. Made
 * for the join only, so a live member pays nothing for it.
 */
interface Waiting {
  /** In order; a written one is let go (undefined) at once, and the written ones are cut off now and then. */
  items: Array<Pending | undefined>
  /** The items before it are written (after the replay, while the member reads them). */
  next: number
  /** Bytes of the payloads not written yet: past maxBufferedBytes the member is a slow consumer. */
  bytes: number
  /** Its `joined` is written: it is in the room, for its leave's `onLeave` and grace, though frames still wait. */
  joined: boolean
}

/**
 * One connection in one room. Until its join is written out it is not live:
 * frames for it wait in `pending`, so that the joiner sees `joined`, then the
 * replayed history, then everything published meanwhile, each offset once.
 */
interface Membership {
  readonly peer: Peer
  /** The room's name, the string its LocalRoom holds: one copy per room, not per member. */
  readonly room: string
  lastOffset: number
  /**
   * The last presence sequence this member has (numbered presence only): its
   * frames travel apart from the join's answer, so an older one can arrive
   * after the member list that already reflects it.
   */
  presenceSeq: number
  /** Frames waiting for the join to be written out; undefined once the member is live (no field per member for that). */
  pending: Waiting | undefined
}

/** The members of a room on this node. */
interface LocalRoom {
  readonly name: string
  readonly members: Map<string, Membership>
}

/**
 * A connection's memberships on this node. Most connections are in one room:
 * that one is held inline, and a Map is made only from a second room on.
 */
class PeerEntry {
  readonly peer: Peer
  private first: Membership | undefined
  private more: Map<string, Membership> | undefined

  constructor (peer: Peer) {
    this.peer = peer
  }

  get size (): number {
    return (this.first === undefined ? 0 : 1) + (this.more?.size ?? 0)
  }

  get (room: string): Membership | undefined {
    return this.first?.room === room ? this.first : this.more?.get(room)
  }

  add (membership: Membership): void {
    if (this.first === undefined) this.first = membership
    else (this.more ??= new Map()).set(membership.room, membership)
  }

  /** Remove this membership, if it is still the one held for its room. */
  delete (membership: Membership): void {
    if (this.first === membership) {
      this.first = undefined
    } else if (this.more?.get(membership.room) === membership) {
      this.more.delete(membership.room)
      if (this.more.size === 0) this.more = undefined
    }
  }

  memberships (): Membership[] {
    const all = this.more === undefined ? [] : [...this.more.values()]
    if (this.first !== undefined) all.unshift(this.first)
    return all
  }
}

export interface RegistryOptions {
  log: FastifyBaseLogger
  maxRoomsPerConnection: number
  /** Send `presence` frames; off for large broadcast rooms, where each join would reach every member. */
  presenceEvents: boolean
  /** A room's presence changes are batched into one diff at most this often. */
  presenceIntervalMs: number
  /** How long a connection that dropped without `leave` stays present. */
  presenceGraceMs: number
  /** Members in the first page of `joined`. */
  membersPageSize: number
  /**
   * A joining member whose frames waiting for the end of its join (its
   * `joined` and replay) pass this many bytes is a slow consumer.
   */
  maxBufferedBytes: number
  /** Counts publishes and fan-out; absent when metrics are off. */
  metrics?: Metrics | undefined
}

/** One user in a room's pending presence diff: its member JSON, and whether it is present now. */
interface Touched {
  member: string
  present: boolean
}

/** A diff on its way to a room's members on this node: `all` as they were when it was made, up to `next` done. */
interface Writing {
  room: string
  members: Map<string, Membership>
  all: Membership[]
  next: number
  framed: Buffer
  payload: Buffer
  seq: number
  /** Not done in the turn it was queued in: some members got it late, so its room waits an interval after it. */
  late: boolean
}

/** A room's presence changes since its last diff. */
interface Batch {
  users: Map<string, Touched>
  count: number
  /** The last presence sequence in the batch. */
  seq: number
  /** When its diff is due (`performance.now()`): a full interval after the room's first change since its last diff. */
  due: number
}

/** A connection that dropped without `leave`: still a member of its rooms until `timer` fires. */
interface Lingering {
  peer: Peer
  rooms: string[]
  timer: NodeJS.Timeout
}

export interface JoinRequest {
  id?: RequestId | undefined
  since?: Position | undefined
  /** Replay the last n retained messages (a first visit); ignored with `since`. */
  history?: number | undefined
}

/** What a join replays after `joined`, and the `recovered` it answers. */
interface Replay {
  recovered: boolean | undefined
  /** The offset the joiner already has: nothing at or below it is written again. */
  after: number
  messages: StoredMessage[]
}

/** Offset of frames that are not room messages (presence): always delivered, never deduplicated. */
const UNORDERED = -1

/**
 * Rooms and members on this node, and the fan-out to them. It keeps only local
 * connections; whatever is cluster-wide (offsets, presence, counts, history)
 * it asks the adapter for.
 */
export class Registry implements AdapterListener {
  private readonly rooms = new Map<string, LocalRoom>()
  private readonly peers = new Map<string, PeerEntry>()
  /** Live members answering a repeated `join`: their diffs and ephemeral messages wait until it is written. */
  private readonly holding = new Map<Membership, Pending[]>()
  private readonly adapter: Adapter
  private readonly options: RegistryOptions
  private readonly removals = new Set<Promise<void>>()
  /** Joins under way, by the membership they make. */
  private readonly joins = new Map<Membership, Promise<void>>()
  private readonly batches = new Map<string, Batch>()
  private flushTimer: NodeJS.Timeout | undefined
  private flushScheduled = false
  /** Diffs being written, oldest first: PRESENCE_SLICE writes per turn of the event loop across all of them. */
  private readonly writing: Writing[] = []
  private pumpScheduled = false
  /**
   * Rooms whose diff is being written, or was written over several turns less than an interval ago: their
   * batch waits, so that each member gets a full interval between two diffs however late its slice was.
   */
  private readonly busy = new Map<string, NodeJS.Timeout | undefined>()
  private readonly lingering = new Map<string, Lingering>()
  /** Set by `shutdown()`: connections closing now leave at once. */
  private closing = false

  /** The adapter, when it publishes at once (`PublishesNow`). */
  private readonly now: (Adapter & PublishesNow) | undefined

  constructor (adapter: Adapter, options: RegistryOptions) {
    this.adapter = adapter
    this.options = options
    this.now = (adapter as Partial<PublishesNow>).publishesNow === true ? adapter as Adapter & PublishesNow : undefined
  }

  /** Whether `publishNow` may be called: the adapter publishes before it returns. */
  get publishesNow (): boolean {
    return this.now !== undefined
  }

  add (peer: Peer): void {
    this.peers.set(peer.id, new PeerEntry(peer))
  }

  /** True when the connection is in the room (or joining it). */
  isMember (peer: Peer, room: string): boolean {
    return this.peers.get(peer.id)?.get(room) !== undefined
  }

  /** True when the connection got its `joined` for the room: a join of it again is a repeat. */
  isJoined (peer: Peer, room: string): boolean {
    const membership = this.peers.get(peer.id)?.get(room)
    return membership !== undefined && live(membership)
  }

  /** A join of the room by the connection that is under way (`app.rooms.join`): settles, never rejects, when it ends. */
  joinUnderWay (peer: Peer, room: string): Promise<void> | undefined {
    const membership = this.peers.get(peer.id)?.get(room)
    return membership === undefined ? undefined : this.joins.get(membership)?.catch(noop)
  }

  /**
   * The room's name as its membership holds it, when the peer is a member: a
   * string of its own, where the name read from a frame may be a slice that
   * keeps the frame's whole text alive.
   */
  memberRoom (peer: Peer, room: string): string | undefined {
    return this.peers.get(peer.id)?.get(room)?.room
  }

  /**
   * Join a room: write `joined`, then the messages the join asked for (the gap
   * after `since`, every retained message of a new epoch, or the last
   * `history` ones), then go live. Every offset reaches the joiner once, in
   * order, even while messages are published during the join.
   */
  async join (peer: Peer, room: string, request: JoinRequest): Promise<void> {
    const entry = this.peers.get(peer.id)
    if (entry === undefined) return
    const existing = entry.get(room)
    if (existing !== undefined) {
      const joining = this.joins.get(existing)
      if (joining !== undefined) {
        // The other join (app.rooms.join, or the client's while the app joins it) is still under way:
        // answer once it is settled, from what it left, never with its half-made state.
        await joining.catch(noop)
        await this.join(peer, room, request)
        return
      }
      // A connection's frames are handled one at a time: no other answer of this kind is under way.
      await this.answerAgain(existing, request)
      return
    }
    if (entry.size >= this.options.maxRoomsPerConnection) {
      throw new RoomsError('TOO_MANY_ROOMS', `You are in ${entry.size} rooms, the most one connection may join: leave one first.`, room)
    }
    const local = this.localRoom(room)
    const membership: Membership = { peer, room: local.name, lastOffset: 0, presenceSeq: 0, pending: { items: [], next: 0, bytes: 0, joined: false } }
    entry.add(membership)
    local.members.set(peer.id, membership)
    // For whoever waits on it: a repeated join, app.rooms.join, an overtaken join's undo, shutdown.
    const joining = this.enter(membership, request)
    this.joins.set(membership, joining)
    try {
      await joining
    } finally {
      this.joins.delete(membership)
    }
  }

  /**
   * Answer a `join` of a room the connection is in already: `joined` again,
   * from the room as the store has it now. Diffs made while the room is read
   * could be newer than what the read returns, and the `joined` after them
   * would take them back (a client replaces its member list with it): they
   * wait, and follow it.
   */
  private async answerAgain (existing: Membership, request: JoinRequest): Promise<void> {
    const { peer, room } = existing
    // A diff under way as the read begins is older than what it reads: it goes before the reply, whether its
    // slice reached this member during the read (held, then skipped as seen) or has yet to (skipped then).
    const older = this.writing.filter((job) => job.room === room)
    const held: Pending[] = []
    this.holding.set(existing, held)
    try {
      const info = await this.adapter.room(room, { limit: this.options.membersPageSize })
      this.holding.delete(existing)
      if (this.peers.get(peer.id)?.get(room) !== existing) throw removedWhileJoining(room)
      for (const job of older) this.writeLive(existing, UNORDERED, job.framed, job.payload, job.seq)
      const joined: JoinedFrame = { type: 'joined', room, count: info?.count ?? 1, members: info?.members ?? [peer.user], membersNext: info?.membersNext ?? null, offset: existing.lastOffset, epoch: info?.epoch ?? '' }
      if (request.id !== undefined) joined.id = request.id
      peer.sendEncoded(JSON.stringify(joined))
    } finally {
      this.holding.delete(existing)
      // The member is live whether the read worked or failed: it gets what waited, after the reply.
      if (this.peers.get(peer.id)?.get(room) === existing) {
        for (const item of held) this.deliver(existing, item.offset, item.framed, item.payload, item.presenceSeq)
      }
    }
  }

  /** The store's half of a join, and the replay; the membership goes live at the end. */
  private async enter (membership: Membership, request: JoinRequest): Promise<void> {
    const { peer, room } = membership
    let result: JoinResult | undefined
    let replay: Replay
    try {
      result = await this.adapter.join(room, peer.id, peer.user)
      replay = await this.replay(room, request, result)
    } catch (err) {
      this.forget(membership)
      // Joined in the store but the replay failed (the store went away in
      // between): undo the join there too, or the member would stay for good.
      if (result !== undefined) await this.undoJoin(membership)
      throw err
    }
    if (this.peers.get(peer.id)?.get(room) !== membership) {
      // The connection closed, or the server removed it from the room, while
      // the adapter was answering: undo the join. A removed connection still
      // gets its one reply (it was told `left` already).
      await this.undoJoin(membership)
      if (this.peers.has(peer.id)) throw removedWhileJoining(room)
      return
    }
    const joined: JoinedFrame = { type: 'joined', room, count: result.count, members: result.members, membersNext: result.membersNext, offset: result.offset, epoch: result.epoch }
    if (request.id !== undefined) joined.id = request.id
    if (replay.recovered !== undefined) joined.recovered = replay.recovered
    peer.sendEncoded(result.membersJson === undefined ? JSON.stringify(joined) : encodeJoined(joined, result.membersJson))
    const waiting = membership.pending as Waiting
    waiting.joined = true
    // The replay ends at the adapter's offset: everything published after its
    // answer is pending. A page read by count can reach past it (over a hole
    // in history, a message delivered but not kept), and taking those would
    // let lastOffset skip a pending message below them.
    membership.lastOffset = replay.after
    for (const message of replay.messages) {
      if (message.offset > result.offset) break
      if (message.offset > membership.lastOffset) {
        membership.lastOffset = message.offset
        peer.sendEncoded(message.frame)
        if (!await this.readOn(membership)) return
      }
    }
    membership.lastOffset = Math.max(membership.lastOffset, result.offset)
    membership.presenceSeq = result.presenceSeq
    // What was published meanwhile, and while these are read: the member goes live once none waits.
    while (waiting.next < waiting.items.length) {
      const item = waiting.items[waiting.next] as Pending
      waiting.items[waiting.next++] = undefined
      if (waiting.next === 1024) {
        // A room that publishes as fast as the member reads keeps this loop going: what is written goes.
        waiting.items.splice(0, waiting.next)
        waiting.next = 0
      }
      waiting.bytes -= item.payload.length
      this.writeLive(membership, item.offset, item.framed, item.payload, item.presenceSeq)
      if (!await this.readOn(membership)) return
    }
    membership.pending = undefined
    if (result.present === true) this.rejoined(peer, room)
  }

  /**
   * A join's replay, and what waited for it, can be larger than
   * maxBufferedBytes (100 messages of 64 KiB are 6.4 MiB): written at once,
   * they would close the member as a slow consumer, and again at each
   * reconnect. Once its socket holds enough, the join waits for the member to
   * read. False when it has left (closed, or removed from the room): it had
   * its `joined`, so its leave is done as any member's.
   */
  private async readOn (membership: Membership): Promise<boolean> {
    const { peer, room } = membership
    // Awaited even when undefined: a write that closed the peer (a slow consumer on ws's own path) queued its
    // removal as a microtask, which runs before this continues.
    await peer.backlogged?.()
    return this.peers.get(peer.id)?.get(room) === membership
  }

  /**
   * The user was in the room already, perhaps only through a dropped
   * connection in its grace time, on any node: that membership ends now, as
   * the user is present through this one, so a deliberate leave of this one
   * is seen at once rather than when the old grace ends.
   */
  private rejoined (peer: Peer, room: string): void {
    void this.track(this.adapter.control({ kind: 'rejoined', target: { userId: peer.user.id }, room }).then(noop, (err: unknown) => {
      this.options.log.warn({ err, connectionId: peer.id, room }, 'fastify-rooms: could not end the grace of the user\'s dropped connections')
    }))
  }

  /**
   * Put a connection of this node into a room as if it had sent `join`
   * (`app.rooms.join`): it gets an unsolicited `joined`. Resolves undefined
   * when the connection is not on this node, else whether it is in the room
   * now; rejects with the join's error (`TOO_MANY_ROOMS`, `ROOM_FULL`, ...).
   */
  async joinLocal (connectionId: string, room: string): Promise<boolean | undefined> {
    const entry = this.peers.get(connectionId)
    if (entry === undefined) return undefined
    const existing = entry.get(room)
    try {
      // The connection's own join under way: this call ends as that join does.
      await (existing === undefined ? this.join(entry.peer, room, {}) : this.joins.get(existing))
    } catch (err) {
      // Removed from the room (or closed) while joining: not in it, which is the answer, not an error.
      if (!(err instanceof RoomsError && err.code === 'NOT_IN_ROOM')) throw err
    }
    const now = this.peers.get(connectionId)?.get(room)
    return now !== undefined && live(now)
  }

  /**
   * Take back a join from the store, unless a newer membership of the same
   * connection holds the room (a leave and a join again while the store
   * answered): the store knows a connection in a room once, and the record
   * is the newer one's, once its own join has ended well.
   */
  private async undoJoin (membership: Membership): Promise<void> {
    const { peer, room } = membership
    const newer = this.peers.get(peer.id)?.get(room)
    if (newer !== undefined) {
      await this.joins.get(newer)?.catch(noop)
      if (this.peers.get(peer.id)?.get(room) !== undefined) return
    }
    await this.trackLeave(room, peer)
  }

  /**
   * What follows `joined`. With `since` in the room's epoch: the gap, when the
   * history still covers it (else nothing, `recovered: false`). With `since`
   * from another epoch, the old history is gone: every retained message of
   * the current one, so the client loses at most what the old epoch held and
   * never what was published since. With `history: n`: the last n.
   */
  private async replay (room: string, request: JoinRequest, result: JoinResult): Promise<Replay> {
    const { since, history: wanted } = request
    if (since !== undefined) {
      if (since.epoch !== result.epoch) {
        const page = result.offset > 0 ? await this.adapter.history(room, 0, result.offset) : null
        return { recovered: false, after: 0, messages: page?.epoch === result.epoch ? page.messages : [] }
      }
      if (since.offset >= result.offset) return { recovered: since.offset === result.offset, after: result.offset, messages: [] }
      const page = await this.adapter.history(room, since.offset, result.offset - since.offset)
      const covered = recovered(since, result.epoch, result.offset, page)
      return { recovered: covered, after: since.offset, messages: covered && page !== null ? page.messages : [] }
    }
    if (wanted !== undefined && wanted > 0 && result.offset > 0) {
      const after = Math.max(0, result.offset - wanted)
      const page = await this.adapter.history(room, after, result.offset - after)
      return { recovered: undefined, after, messages: page?.epoch === result.epoch ? page.messages : [] }
    }
    return { recovered: undefined, after: 0, messages: [] }
  }

  /** Leave a room; `NOT_IN_ROOM` when the connection is not in it. */
  async leave (peer: Peer, room: string): Promise<void> {
    const membership = this.peers.get(peer.id)?.get(room)
    if (membership === undefined) throw notInRoom(room)
    this.forget(membership)
    try {
      await this.adapter.leave(room, peer.id, peer.user)
    } finally {
      // Out of the room on this node whatever the store answered.
      if (live(membership)) peer.left?.(room, 'leave')
    }
  }

  /**
   * Remove a closed connection from every room. Local state goes at once, so
   * nothing more is written to it. The cluster-wide leave follows at once, or,
   * with `grace` (it dropped without leaving), after `presenceGraceMs`: a
   * reconnect within it shows the others no leave and no join.
   */
  async remove (peer: Peer, grace = false): Promise<void> {
    const entry = this.peers.get(peer.id)
    if (entry === undefined) return
    this.peers.delete(peer.id)
    // Only rooms it got `joined` in: a join under way undoes itself once it sees the connection gone.
    const memberships = entry.memberships()
    const rooms = memberships.filter(live).map((membership) => membership.room)
    for (const membership of memberships) this.forget(membership)
    if (grace && rooms.length > 0 && this.options.presenceGraceMs > 0 && !this.closing) {
      const timer = setTimeout(() => { void this.endGrace(peer.id) }, this.options.presenceGraceMs)
      this.lingering.set(peer.id, { peer, rooms, timer })
      return
    }
    // Each leave is tracked on its own (trackLeave), so shutdown waits for them.
    await Promise.all(rooms.map(async (room) => await this.trackLeave(room, peer, 'closed')))
  }

  /** A dropped connection's grace is over (or cut short): it leaves its rooms, or `only` that one. */
  private async endGrace (connectionId: string, only?: string): Promise<void> {
    const lingering = this.lingering.get(connectionId)
    if (lingering === undefined) return
    const rooms = only === undefined ? lingering.rooms : lingering.rooms.filter((room) => room === only)
    if (only === undefined || lingering.rooms.length === rooms.length) {
      clearTimeout(lingering.timer)
      this.lingering.delete(connectionId)
    } else {
      lingering.rooms = lingering.rooms.filter((room) => room !== only)
    }
    await Promise.all(rooms.map(async (room) => await this.trackLeave(room, lingering.peer, 'closed')))
  }

  /**
   * Shutdown begins: connections that dropped earlier leave now rather than
   * after their grace, and those closing from now on leave at once, so the
   * room state is final by the time the app's onClose hooks run.
   */
  shutdown (): void {
    this.closing = true
    for (const id of [...this.lingering.keys()]) void this.endGrace(id)
  }

  /**
   * The app is closing: pending presence diffs are dropped (their members are
   * gone), and every leave under way reaches the adapter before it closes.
   */
  async close (): Promise<void> {
    this.shutdown()
    clearTimeout(this.flushTimer)
    for (const timer of this.busy.values()) clearTimeout(timer)
    this.busy.clear()
    this.writing.length = 0
    this.batches.clear()
    // A join still under way ends (and undoes itself, its connection being gone) before the adapter closes.
    while (this.removals.size > 0 || this.joins.size > 0) await Promise.allSettled([...this.removals, ...this.joins.values()])
  }

  /**
   * A leave nobody waits on the answer of (a failure is logged, not thrown),
   * tracked so that shutdown waits for it before the adapter closes.
   */
  private async trackLeave (room: string, peer: Peer, cause?: LeaveCause): Promise<void> {
    // An adapter whose leave throws rather than reject is answered the same way, not with an unhandled rejection.
    const leaving = (async () => { await this.adapter.leave(room, peer.id, peer.user) })()
    await this.track(leaving.catch((err: unknown) => {
      this.options.log.error({ err, connectionId: peer.id, room }, 'fastify-rooms: adapter failed to remove a member')
    }))
    if (cause !== undefined) peer.left?.(room, cause)
  }

  private async track (work: Promise<void>): Promise<void> {
    this.removals.add(work)
    try {
      await work
    } finally {
      this.removals.delete(work)
    }
  }

  /** Publish data encoded at the edge, as a member (`from`) or as the server; an ephemeral publish resolves undefined. */
  publish (room: string, message: EncodedPublish): Promise<number | undefined> {
    const { metrics } = this.options
    // No async function of its own: a publish out in the store holds one suspended frame fewer.
    if (metrics === undefined) return this.adapter.publish(room, message)
    return this.adapter.publish(room, message).then((offset) => {
      metrics.publish(room)
      return offset
    })
  }

  /** `publish`, answered through `receipt`: no promise where the adapter offers `publishTo`. */
  publishTo (room: string, message: EncodedPublish, receipt: PublishReceipt): void {
    const { metrics } = this.options
    if (this.adapter.publishTo === undefined) {
      let published: Promise<number | undefined>
      try {
        published = this.publish(room, message)
      } catch (err) {
        // An adapter that threw rather than reject: answered the same way.
        published = Promise.reject(err)
      }
      published.then((offset) => { receipt.published(offset) }, (err: Error) => { receipt.failed(err) })
    } else {
      this.adapter.publishTo(room, message, metrics === undefined ? receipt : new CountedReceipt(receipt, metrics, room))
    }
  }

  /** `publish`, done before it returns; only where `publishesNow`. */
  publishNow (room: string, message: EncodedPublish): number | undefined {
    const offset = (this.now as PublishesNow).publishNow(room, message)
    this.options.metrics?.publish(room)
    return offset
  }

  /** A page of a room's members for a member of it (`members` frame). */
  async members (peer: Peer, room: string, query: MembersQuery, id: RequestId | undefined): Promise<void> {
    if (!this.isMember(peer, room)) throw notInRoom(room)
    const info = await this.adapter.room(room, query)
    const reply: MembersPageFrame = { type: 'members', room, members: info?.members ?? [], next: info?.membersNext ?? null }
    if (id !== undefined) reply.id = id
    peer.sendEncoded(JSON.stringify(reply))
  }

  /**
   * A page of a room's stored messages for a member of it (`history` frame):
   * what `GET /rooms/:room/messages` answers, under the membership that
   * already passed `onJoin`.
   */
  async historyPage (peer: Peer, room: string, after: number, limit: number, id: RequestId | undefined): Promise<void> {
    if (!this.isMember(peer, room)) throw notInRoom(room)
    const page = await this.adapter.history(room, after, limit)
    // A member's room exists; null only if it emptied and expired meanwhile.
    peer.sendEncoded(encodeHistory(id, room, page?.epoch ?? '', page?.offset ?? 0, page?.messages ?? []))
  }

  /** Send a `direct` frame to a connection on any node. */
  async sendDirect (connectionId: string, data: unknown, from?: Member): Promise<boolean> {
    return await this.adapter.direct(connectionId, data, from)
  }

  async room (room: string, members: MembersQuery): Promise<RoomInfo | null> {
    return await this.adapter.room(room, members)
  }

  async list (query: RoomQuery): Promise<RoomPage> {
    return await this.adapter.rooms(query)
  }

  async history (room: string, after: number, limit: number): Promise<HistoryPage | null> {
    return await this.adapter.history(room, after, limit)
  }

  message (room: string, offset: number | undefined, frame: string | Buffer): void {
    const members = this.rooms.get(room)?.members
    if (members === undefined) return
    this.options.metrics?.fanOut(room, members.size)
    // Encode and frame once: every member gets the same bytes, with no per-member work but the write.
    const payload = typeof frame === 'string' ? Buffer.from(frame) : frame
    const framed = textFrame(payload)
    for (const membership of members.values()) this.deliver(membership, offset ?? UNORDERED, framed, payload)
  }

  messages (room: string, messages: ReadonlyArray<{ offset: number, frame: Buffer }>): void {
    const members = this.rooms.get(room)?.members
    const first = messages[0]
    if (members === undefined || first === undefined) return
    const last = (messages[messages.length - 1] as { offset: number }).offset
    const metrics = this.options.metrics
    if (metrics !== undefined) for (let i = 0; i < messages.length; i++) metrics.fanOut(room, members.size)
    const payloads = messages.map((m) => m.frame)
    const framed = textFrames(payloads)
    // Cut into single frames only for a member that must not get them all (joining, or has some already).
    let each: Buffer[] | undefined
    for (const membership of members.values()) {
      if (membership.pending === undefined && membership.lastOffset < first.offset) {
        membership.lastOffset = last
        membership.peer.sendFramed(framed, payloads)
        continue
      }
      each ??= eachFrame(framed, payloads)
      for (let i = 0; i < messages.length; i++) this.deliver(membership, (messages[i] as { offset: number }).offset, each[i] as Buffer, payloads[i] as Buffer)
    }
  }

  /**
   * Batch a presence change into the room's next diff. Every member then gets
   * at most one `presence` frame per interval, built once for all of them,
   * however many people join at once: a join storm costs O(members) writes
   * per interval instead of O(members) per join.
   */
  presence (room: string, change: PresenceChange): void {
    const members = this.rooms.get(room)?.members
    if (members === undefined || !this.options.presenceEvents) return
    let batch = this.batches.get(room)
    if (batch === undefined) {
      batch = { users: new Map(), count: change.count, seq: change.seq, due: performance.now() + this.options.presenceIntervalMs }
      // Insertion order is the order of `due`: flushPresence stops at the first batch not yet due.
      this.batches.set(room, batch)
      this.scheduleFlush(this.options.presenceIntervalMs)
    }
    const touched = batch.users.get(change.id)
    if (touched === undefined) {
      batch.users.set(change.id, { member: change.member, present: change.join })
    } else {
      touched.present = change.join
      if (change.join) touched.member = change.member
    }
    if (change.seq >= batch.seq) {
      batch.seq = change.seq
      batch.count = change.count
    }
  }

  private scheduleFlush (delayMs: number): void {
    if (this.flushScheduled) return
    this.flushScheduled = true
    const flush = (): void => this.flushPresence()
    if (delayMs === 0) setImmediate(flush)
    else this.flushTimer = setTimeout(flush, delayMs)
  }

  /**
   * Write the diffs that are due. Each room's diff waits a full interval from its own first change,
   * not from any room's: one timer for all rooms, but a room whose first change came late in
   * another room's interval is not flushed early with it (that gave members of busy rooms up to
   * a fifth more frames than the interval promises to save).
   */
  private flushPresence (): void {
    this.flushScheduled = false
    const now = performance.now()
    for (const [room, batch] of this.batches) {
      if (this.busy.has(room)) continue
      if (batch.due > now) {
        // The first batch not yet due (also after a timer that fired up to a millisecond early): wait for it.
        this.scheduleFlush(Math.ceil(batch.due - now))
        break
      }
      this.batches.delete(room)
      this.write(room, batch)
    }
    if (!this.pumpScheduled) this.pump()
  }

  /**
   * Queue a batch's diff for the room's members on this node. It names every
   * user the batch touched, with that user's state now, even one back where it
   * started: a member whose `joined` or `members` page was read in the middle
   * of the batch may have seen the user either way, and with Redis a change
   * can reach this node after a page that already shows it. Named, the diff is
   * right for every member, applied as a set; left out, the user would stay
   * in such a member's list (or out of it) for good.
   */
  private write (room: string, batch: Batch): void {
    const members = this.rooms.get(room)?.members
    if (members === undefined) return
    const joins: string[] = []
    const leaves: string[] = []
    for (const { member, present } of batch.users.values()) {
      if (present) joins.push(member)
      else leaves.push(member)
    }
    const payload = Buffer.from(encodePresence(room, joins, leaves, batch.count))
    this.writing.push({ room, members, all: [...members.values()], next: 0, framed: textFrame(payload), payload, seq: batch.seq, late: this.pumpScheduled })
    this.busy.set(room, undefined)
  }

  /**
   * Write the queued diffs, PRESENCE_SLICE members in this turn and the rest in later turns, skipping
   * members that left (or left and came back) in between. A diff written whole in its flush's turn frees
   * its room at once; one written later holds its room's next diff for a full interval after its end.
   */
  private pump (): void {
    this.pumpScheduled = false
    let budget = PRESENCE_SLICE
    // Fewest writes left first: a small room's diff does not wait behind a large room's slices.
    if (this.writing.length > 1) this.writing.sort((a, b) => (a.all.length - a.next) - (b.all.length - b.next))
    try {
      while (this.writing.length > 0 && !this.closing) {
        const job = this.writing[0]!
        const to = Math.min(job.all.length, job.next + budget)
        for (let i = job.next; i < to; i++) {
          const membership = job.all[i]!
          if (job.members.get(membership.peer.id) === membership) this.deliver(membership, UNORDERED, job.framed, job.payload, job.seq)
        }
        budget -= to - job.next
        job.next = to
        if (to < job.all.length) break
        this.writing.shift()
        if (job.late) this.cool(job.room)
        else this.busy.delete(job.room)
      }
    } finally {
      // Also after a throw: presence must not stop for good on one failed write.
      if (this.writing.length > 0 && !this.closing) {
        for (const job of this.writing) job.late = true
        this.pumpScheduled = true
        setImmediate(() => this.pump())
      }
    }
  }

  /** A room's diff ended in a later turn than it began: its next diff waits a full interval from now. */
  private cool (room: string): void {
    const until = performance.now() + this.options.presenceIntervalMs
    const end = (): void => {
      const early = until - performance.now()
      // A timer can fire up to a millisecond early: the interval is a promise to each member.
      if (early > 0) {
        this.busy.set(room, setTimeout(end, Math.ceil(early)))
        return
      }
      this.busy.delete(room)
      const batch = this.batches.get(room)
      if (batch === undefined || this.closing) return
      this.batches.delete(room)
      this.write(room, batch)
      if (!this.pumpScheduled) this.pump()
    }
    this.busy.set(room, setTimeout(end, this.options.presenceIntervalMs))
  }

  /** Rooms with a member on this node, and this node's memberships: read by the metrics at a scrape. */
  localCounts (): { rooms: number, members: number } {
    let members = 0
    for (const room of this.rooms.values()) members += room.members.size
    return { rooms: this.rooms.size, members }
  }

  /** This node's connections in one room: read by the metrics at a scrape. */
  localMembers (room: string): number {
    return this.rooms.get(room)?.members.size ?? 0
  }

  direct (connectionId: string, frame: string): boolean {
    const entry = this.peers.get(connectionId)
    if (entry === undefined) return false
    entry.peer.sendEncoded(frame)
    return true
  }

  /**
   * A server command for local connections: close them with 4003, or take them
   * out of a room as a `leave` would, telling them with an unsolicited `left`.
   */
  control (command: ControlCommand): number {
    if (command.kind === 'join') return this.joinCommand(command.target.connectionId, command.room)
    if (command.kind === 'direct') return this.directCommand(command.target, command.frame)
    if (command.kind === 'rejoined') return this.endLingering(command.target.userId, command.room)
    const { target } = command
    // A dropped connection the command names leaves now rather than after its grace.
    const room = command.kind === 'remove' ? command.room : undefined
    for (const [id, { peer }] of this.lingering) {
      if ('connectionId' in target ? id === target.connectionId : peer.user.id === target.userId) void this.endGrace(id, room)
    }
    const entries = 'connectionId' in target
      ? [this.peers.get(target.connectionId)].filter((e) => e !== undefined)
      : [...this.peers.values()].filter((e) => e.peer.user.id === target.userId)
    let affected = 0
    for (const entry of entries) {
      const { peer } = entry
      if (command.kind === 'disconnect') {
        peer.close(4003, command.reason)
        affected++
        continue
      }
      const membership = entry.get(command.room)
      if (membership === undefined) continue
      this.forget(membership)
      peer.sendEncoded(JSON.stringify({ type: 'left', room: command.room, reason: command.reason }))
      void this.trackLeave(command.room, peer, live(membership) ? 'removed' : undefined)
      affected++
    }
    return affected
  }

  /** `app.rooms.join` for a connection of this node, sent from another: a refusal is logged there. */
  private joinCommand (connectionId: string, room: string): number {
    if (!this.peers.has(connectionId)) return 0
    this.joinLocal(connectionId, room).catch((err: unknown) => {
      this.options.log.warn({ err, connectionId, room, code: (err as { code?: unknown }).code }, 'fastify-rooms: a server join was refused')
    })
    return 1
  }

  /** `app.rooms.sendToUser`: the frame to each of the user's connections on this node. */
  private directCommand (target: ControlCommand['target'], frame: string): number {
    if ('connectionId' in target) return this.direct(target.connectionId, frame) ? 1 : 0
    let reached = 0
    for (const { peer } of this.peers.values()) {
      if (peer.user.id !== target.userId) continue
      peer.sendEncoded(frame)
      reached++
    }
    return reached
  }

  /** The user joined the room again: its connections lingering in it leave it now. */
  private endLingering (userId: string, room: string): number {
    let ended = 0
    for (const [id, { peer, rooms }] of this.lingering) {
      if (peer.user.id !== userId || !rooms.includes(room)) continue
      void this.endGrace(id, room)
      ended++
    }
    return ended
  }

  reset (room: string, connections: readonly string[]): void {
    const peers = connections.flatMap((id) => this.peers.get(id)?.peer ?? [])
    this.options.log.warn({ room, connections: peers.length }, 'fastify-rooms: cluster state was lost; disconnecting local members so they rejoin')
    // 1012 (service restart): reconnect and rejoin with since; the epoch tells the client of the gap.
    for (const peer of peers) peer.close(1012, 'Room state was reset: reconnect and rejoin')
  }

  private deliver (membership: Membership, offset: number, framed: Buffer, payload: Buffer, presenceSeq?: number): void {
    const waiting = membership.pending
    if (waiting === undefined) {
      this.writeLive(membership, offset, framed, payload, presenceSeq)
      return
    }
    waiting.items.push({ offset, framed, payload, presenceSeq })
    waiting.bytes += payload.length
    // Unsent data of the member's, held by this node as much as what its socket holds.
    if (waiting.bytes > this.options.maxBufferedBytes) membership.peer.closeSlow()
  }

  /** Write a frame to a live member, unless it has it (an offset at or below its last) or a newer state of it. */
  private writeLive (membership: Membership, offset: number, framed: Buffer, payload: Buffer, presenceSeq?: number): void {
    // Fan-out hot path: no allocation.
    if (offset === UNORDERED) {
      const held = this.holding.size === 0 ? undefined : this.holding.get(membership)
      if (held !== undefined) {
        held.push({ offset, framed, payload, presenceSeq })
        return
      }
      if (presenceSeq !== undefined) {
        // Already reflected by the member list or by a later frame.
        if (presenceSeq <= membership.presenceSeq) return
        membership.presenceSeq = presenceSeq
      }
      membership.peer.sendFramed(framed, payload)
    } else if (offset > membership.lastOffset) {
      membership.lastOffset = offset
      membership.peer.sendFramed(framed, payload)
    }
  }

  private localRoom (room: string): LocalRoom {
    let local = this.rooms.get(room)
    if (local === undefined) {
      local = { name: room, members: new Map() }
      this.rooms.set(room, local)
    }
    return local
  }

  private forget (membership: Membership): void {
    const { peer, room } = membership
    this.peers.get(peer.id)?.delete(membership)
    const local = this.rooms.get(room)
    if (local?.members.get(peer.id) === membership) {
      local.members.delete(peer.id)
      if (local.members.size === 0) {
        this.rooms.delete(room)
        // Nobody here to tell; a member joining later gets the state in its `joined`.
        this.batches.delete(room)
      }
    }
  }
}

const noop = (): void => {}
/**
 * Presence diffs are written to at most this many members per turn of the event loop, whatever the
 * number of rooms and diffs, so that joins and messages are served in between. Written at once, a diff
 * to a room of 10,000-15,000 held the loop for 190-420 ms in a join storm (the bench's `storm`: p99
 * join-to-`joined` 32-328 ms over runs); in slices of 1,000 the longest delay was 31-58 ms and p99
 * 21-75 ms (4 runs), at the same CPU per join.
 */
const PRESENCE_SLICE = 1000

/** A receipt that counts its publish in the metrics once it is published. */
class CountedReceipt implements PublishReceipt {
  constructor (private readonly receipt: PublishReceipt, private readonly metrics: Metrics, private readonly room: string) {}

  published (offset: number | undefined): void {
    this.metrics.publish(this.room)
    this.receipt.published(offset)
  }

  failed (err: Error): void {
    this.receipt.failed(err)
  }
}

/** Whether a membership got its `joined`: only those count as having been in the room (`onLeave`, grace). */
function live (membership: Membership): boolean {
  return membership.pending === undefined || membership.pending.joined
}

function removedWhileJoining (room: string): RoomsError {
  return new RoomsError('NOT_IN_ROOM', `You were removed from room "${room}" while joining it.`, room)
}

/** The error for publishing to or leaving a room one is not in. */
export function notInRoom (room: string): RoomsError {
  return new RoomsError('NOT_IN_ROOM', `You are not in room "${room}": join it first.`, room)
}

/** History covers the gap when it starts right after the client's offset and reaches the room's last one. */
function recovered (since: Position, epoch: string, offset: number, history: HistoryPage | null): boolean {
  if (history === null || history.epoch !== epoch) return false
  const { messages } = history
  const missed = offset - since.offset
  // Offsets only rise, so the first, the last and the count being right mean no hole: a message
  // delivered but not kept leaves one, and the page then reaches past `offset` to fill its count.
  return messages.length === missed && messages[0]?.offset === since.offset + 1 && messages[missed - 1]?.offset === offset
}
