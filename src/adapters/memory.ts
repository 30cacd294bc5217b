import { randomBytes } from 'node:crypto'
import type { EncodedPublish, Member } from '../protocol.js'
import { encodeDirect, messageFrame } from '../protocol.js'
import { RoomsError } from '../errors.js'
import { MessageLog } from './message-log.js'
import type {
  Adapter, AdapterConfig, AdapterListener, HistoryPage, JoinResult,
  MembersQuery, RoomInfo, RoomPage, RoomQuery
} from './adapter.js'
import type { ControlCommand, PublishesNow } from './adapter.js'
import type { RoomCountWatcher } from './adapter.js'
import { compareCodePoints } from '../client/order.js'

interface UserEntry {
  member: Member
  /** The user's connections in the room: most users have one, held as its id; a Set from the second on. */
  connections: string | Set<string>
}

interface RoomState {
  /** The room's name, its key in `states`. */
  readonly room: string
  epoch: string
  offset: number
  users: Map<string, UserEntry>
  /** User ids, sorted: member pages cost O(log n + page). */
  ids: string[]
  /** The room's presence sequence. */
  presenceSeq: number
  /**
   * The first page of members as JSON, kept while the room is larger than a
   * page: then most joins land past it, and each joiner's `joined` reuses it.
   * Dropped when a member enters or leaves the first page.
   */
  pageJson: string | undefined
  /** Oldest first, outside the JS heap (see MessageLog). */
  history: MessageLog
  /** What `history` costs, counted against `maxHistoryBytes` (see `ROOM_OVERHEAD`). */
  historyBytes: number
  lastPublish: number
  /** Neighbours in the adapter's `Recency` list while the room holds history. */
  older: RoomState | undefined
  newer: RoomState | undefined
}

/**
 * What a room holding history costs beside its log's buffers, counted against
 * `maxHistoryBytes`: its state and empty member map, the log and the objects
 * of its two typed arrays, its entry in `states`. Measured (heap and array
 * buffers after a full GC, less the logs' `footprint`, over 5,000 to 100,000
 * rooms of 1 or 30 messages, Node 20) at 900 to 960 bytes a room, its short
 * name included. History keeps a room with no members in memory, so history
 * pays for it: broadcasts to many empty rooms cost this each.
 */
const ROOM_OVERHEAD = 1024

/**
 * A history budget below this keeps a room's message only if its frame is
 * smaller than about 1 KiB, less the room name's bytes: too small to be meant.
 */
const USEFUL_HISTORY_BYTES = 2048

/** What the memory adapter holds now, for tests and metrics. */
export interface MemoryAdapterStats {
  /** Rooms with members, history or both. */
  rooms: number
  /** Rooms holding history. */
  roomsWithHistory: number
  /** Messages held for recovery and REST history. */
  retainedMessages: number
  /** Bytes those messages cost, as counted against `maxHistoryBytes`: their rooms' buffers as allocated, and each room's bookkeeping. */
  retainedBytes: number
}

/**
 * The default adapter: one node, everything in this process. A restart loses
 * the history, and every room then starts a new epoch, so clients resuming
 * with an old position learn that they have a gap.
 */
export interface MemoryAdapterOptions {
  /** Clock for message timestamps and history expiry (default `Date.now`). */
  now?: () => number
}

export class MemoryAdapter implements Adapter, PublishesNow {
  private readonly now: () => number
  private listener: AdapterListener | undefined
  private config: AdapterConfig | undefined
  private readonly states = new Map<string, RoomState>()
  /**
   * The last presence sequence of any room. One count for all rooms, so that a
   * room forgotten and made again goes on from where its last life ended: a
   * node may still hold a diff of that life, and a sequence started again
   * from 0 would put the new life's changes behind it.
   */
  private presenceSeq = 0
  /** Names of rooms with members, kept sorted so listing pages cost O(log n + page). */
  private readonly active: string[] = []
  /** Rooms holding history, least recently published first. */
  private readonly withHistory = new Recency()
  private sweepTimer: NodeJS.Timeout | undefined
  private retainedBytes = 0
  /** The live room list's watcher, while any connection subscribes to it. */
  private roomWatcher: RoomCountWatcher | undefined

  constructor (options: MemoryAdapterOptions = {}) {
    this.now = options.now ?? Date.now
  }

  async start (listener: AdapterListener, config: AdapterConfig): Promise<void> {
    if (this.listener !== undefined) throw new Error('This adapter is already in use: create one adapter per plugin registration.')
    this.listener = listener
    this.config = config
    // 0 says no history, as plainly as historySize 0 does: only a small budget is a likely mistake.
    if (config.historySize > 0 && config.maxHistoryBytes > 0 && config.maxHistoryBytes < USEFUL_HISTORY_BYTES) {
      config.log.warn({ maxHistoryBytes: config.maxHistoryBytes }, `fastify-rooms: maxHistoryBytes below ${USEFUL_HISTORY_BYTES} keeps little or no history: on the memory adapter each room holding history counts about ${alone('')} bytes beside its frames`)
    }
    const every = Math.min(Math.max(config.historyTtlMs / 2, 1000), 60_000)
    this.sweepTimer = setInterval(() => this.sweep(this.now()), every)
    this.sweepTimer.unref()
  }

  async close (): Promise<void> {
    clearInterval(this.sweepTimer)
    this.states.clear()
    this.withHistory.clear()
    this.retainedBytes = 0
    this.active.length = 0
  }

  async publish (room: string, message: EncodedPublish): Promise<number | undefined> {
    return this.publishNow(room, message)
  }

  /** Whether member publishes may call `publishNow`: not when a subclass overrides `publish`, which must then be called. */
  get publishesNow (): boolean {
    return this.publish === MemoryAdapter.prototype.publish
  }

  /**
   * `publish`, done before it returns: everything is in this process, so a
   * member's publish needs no promise, and its `ack` follows its fan-out at
   * once (see `PublishesNow`).
   */
  publishNow (room: string, message: EncodedPublish): number | undefined {
    const { listener, config } = this
    if (listener === undefined || config === undefined) throw notStarted()
    if (message.ephemeral === true) {
      listener.message(room, undefined, Buffer.from(messageFrame(room, message, undefined, this.now())))
      return undefined
    }
    const ts = this.now()
    let state = this.state(room)
    // The sweep comes by once a minute at most: a history past its TTL must
    // not be kept on behind the new message. Expired, the room may be forgotten.
    if (this.expire(state, ts)) state = this.state(room)
    const offset = ++state.offset
    const frame = messageFrame(room, message, offset, ts)
    // Encoded once here: its length is what the budget counts, and the fan-out writes these bytes.
    const payload = Buffer.from(frame)
    if (config.historySize > 0 && payload.length + alone(room) <= config.maxHistoryBytes) {
      this.retain(state, config, offset, payload, ts)
    } else {
      // Nothing kept: a room without members must not stay behind for every broadcast to it.
      this.forgetIfIdle(room, state)
    }
    listener.message(room, offset, payload)
    return offset
  }

  /** What this adapter holds now. */
  stats (): MemoryAdapterStats {
    let retainedMessages = 0
    for (let state = this.withHistory.oldest; state !== undefined; state = state.newer) retainedMessages += state.history.length
    return { rooms: this.states.size, roomsWithHistory: this.withHistory.size, retainedMessages, retainedBytes: this.retainedBytes }
  }

  /**
   * Keep a message, then hold the limits: `historySize` per room,
   * `maxHistoryRooms` rooms, and `maxHistoryBytes` in all, giving up the least
   * recently published rooms' history first.
   */
  private retain (state: RoomState, config: AdapterConfig, offset: number, payload: Buffer, ts: number): void {
    const { historySize, maxHistoryRooms, maxHistoryBytes } = config
    const { history } = state
    const room = ROOM_OVERHEAD + nameBytes(state.room)
    // The room alone within the budget: once it has grown to all of it, the
    // log keeps its buffer and gives up its oldest messages in turn.
    history.push(offset, payload, maxHistoryBytes - room)
    if (history.length > historySize) history.shift()
    this.recount(state)
    state.lastPublish = ts
    this.withHistory.touch(state)
    if (this.withHistory.size > maxHistoryRooms) this.dropHistory(this.withHistory.oldest as RoomState)
    while (this.retainedBytes > maxHistoryBytes) {
      const oldest = this.withHistory.oldest as RoomState
      if (oldest !== state) {
        this.dropHistory(oldest)
        continue
      }
      // Only this room is left over the budget, its records' ring having
      // grown past what its buffer left: it gives up its own oldest messages
      // till the rest would fit in a buffer of their size, then moves them to
      // one that fits, with what is left of the budget to spare. The newest
      // message always stays: `alone` let it in.
      while (history.length > 1 && room + history.tightFootprint > maxHistoryBytes) history.shift()
      history.fitWithin(maxHistoryBytes - room)
      this.recount(state)
      break
    }
  }

  /** Count what the room's history costs now: after its log took or gave up messages, or moved to other buffers. */
  private recount (state: RoomState): void {
    const { history } = state
    const bytes = history.length === 0 ? 0 : history.footprint + ROOM_OVERHEAD + nameBytes(state.room)
    this.retainedBytes += bytes - state.historyBytes
    state.historyBytes = bytes
  }

  async join (room: string, connectionId: string, member: Member): Promise<JoinResult> {
    const { listener, config } = this.started()
    const state = this.state(room)
    let entry = state.users.get(member.id)
    const present = entry !== undefined
    if (entry === undefined) {
      if (state.users.size >= config.maxMembersPerRoom) {
        this.forgetIfIdle(room, state)
        throw new RoomsError('ROOM_FULL', `Room "${room}" is full (${config.maxMembersPerRoom} members): try again later.`, room)
      }
      entry = { member, connections: connectionId }
      state.users.set(member.id, entry)
      if (insertSorted(state.ids, member.id) < config.membersPageSize) state.pageJson = undefined
      if (state.users.size === 1) insertSorted(this.active, room)
      // Encoded as the change happens: a cache of every member's JSON would
      // cost memory for as long as its connection lives.
      listener.presence(room, { join: true, id: member.id, member: JSON.stringify(member), count: state.users.size, seq: state.presenceSeq = ++this.presenceSeq })
      this.roomWatcher?.count(room, state.users.size)
    } else if (typeof entry.connections === 'string') {
      if (entry.connections !== connectionId) entry.connections = new Set([entry.connections, connectionId])
    } else {
      entry.connections.add(connectionId)
    }
    const page = membersPage(state, { limit: config.membersPageSize })
    // A room of one page changes it with nearly every join: not worth keeping. A subclass that
    // overrides join may rewrite `members`, which the cached text would then contradict.
    let membersJson: string | undefined
    if (page.next !== null && this.join === MemoryAdapter.prototype.join) membersJson = state.pageJson ??= JSON.stringify(page.members)
    return { members: page.members, membersJson, membersNext: page.next, count: state.users.size, offset: state.offset, epoch: state.epoch, presenceSeq: state.presenceSeq, present }
  }

  async leave (room: string, connectionId: string, member: Member): Promise<void> {
    const { listener, config } = this.started()
    const state = this.states.get(room)
    const entry = state?.users.get(member.id)
    if (state === undefined || entry === undefined || !dropConnection(entry, connectionId)) return
    state.users.delete(member.id)
    if (removeSorted(state.ids, member.id) < config.membersPageSize) state.pageJson = undefined
    if (state.users.size === 0) removeSorted(this.active, room)
    listener.presence(room, { join: false, id: member.id, member: JSON.stringify(entry.member), count: state.users.size, seq: state.presenceSeq = ++this.presenceSeq })
    this.roomWatcher?.count(room, state.users.size)
    this.forgetIfIdle(room, state)
  }

  async direct (connectionId: string, data: unknown, from?: Member): Promise<boolean> {
    return this.started().listener.direct(connectionId, encodeDirect(data, from))
  }

  async control (command: ControlCommand): Promise<number> {
    return this.started().listener.control(command)
  }

  async room (room: string, members: MembersQuery): Promise<RoomInfo | null> {
    const state = this.states.get(room)
    if (state === undefined || state.users.size === 0) return null
    const page = membersPage(state, members)
    return { name: room, count: state.users.size, members: page.members, membersNext: page.next, offset: state.offset, epoch: state.epoch }
  }

  async rooms (query: RoomQuery): Promise<RoomPage> {
    const { prefix = '', after, limit } = query
    const from = after !== undefined && compareCodePoints(after, prefix) >= 0 ? after : prefix
    let i = lowerBound(this.active, from)
    if (i < this.active.length && this.active[i] === after) i++
    const rooms: RoomPage['rooms'] = []
    for (; i < this.active.length && rooms.length < limit; i++) {
      const name = this.active[i] as string
      if (!name.startsWith(prefix)) break
      rooms.push({ name, count: (this.states.get(name) as RoomState).users.size })
    }
    const more = i < this.active.length && (this.active[i] as string).startsWith(prefix)
    return { rooms, next: more && rooms.length > 0 ? (rooms[rooms.length - 1] as { name: string }).name : null }
  }

  async watchRooms (watcher: RoomCountWatcher | undefined): Promise<void> {
    this.roomWatcher = watcher
  }

  async history (room: string, after: number, limit: number): Promise<HistoryPage | null> {
    const found = this.states.get(room)
    if (found !== undefined) this.expire(found, this.now())
    // Expiry may have forgotten the room altogether.
    const state = this.states.get(room)
    if (state === undefined) return null
    const { history } = state
    const start = history.indexAfter(after)
    return { epoch: state.epoch, offset: state.offset, messages: history.slice(start, start + limit) }
  }

  private started (): { listener: AdapterListener, config: AdapterConfig } {
    if (this.listener === undefined || this.config === undefined) throw notStarted()
    return { listener: this.listener, config: this.config }
  }

  private state (room: string): RoomState {
    let state = this.states.get(room)
    if (state === undefined) {
      state = { room, epoch: randomBytes(6).toString('base64url'), offset: 0, users: new Map(), ids: [], presenceSeq: 0, pageJson: undefined, history: new MessageLog(), historyBytes: 0, lastPublish: 0, older: undefined, newer: undefined }
      this.states.set(room, state)
    }
    return state
  }

  /** A room with neither members nor history is forgotten, and its next life gets a new epoch. */
  private forgetIfIdle (room: string, state: RoomState): void {
    if (state.users.size === 0 && state.history.length === 0) this.states.delete(room)
  }

  private dropHistory (state: RoomState): void {
    if (!this.withHistory.has(state)) return
    this.withHistory.remove(state)
    state.history.clear()
    this.retainedBytes -= state.historyBytes
    state.historyBytes = 0
    this.forgetIfIdle(state.room, state)
  }

  /** Drop the room's history if it is past `historyTtlMs`; true when it was. */
  private expire (state: RoomState, now: number): boolean {
    if (state.history.length === 0 || now - state.lastPublish < (this.config as AdapterConfig).historyTtlMs) return false
    this.dropHistory(state)
    return true
  }

  /** Oldest publish first, so the sweep stops at the first room still fresh. */
  private sweep (now: number): void {
    for (let state = this.withHistory.oldest; state !== undefined;) {
      if (now - state.lastPublish < (this.config as AdapterConfig).historyTtlMs) break
      const newer = state.newer
      this.dropHistory(state)
      state = newer
    }
  }
}

/** What a room's name costs: two bytes a character at most, for a name that is not Latin-1. */
function nameBytes (room: string): number {
  return 2 * room.length
}

/**
 * What one message kept alone in a room costs beside its frame: a message
 * for which this and its frame exceed `maxHistoryBytes` is delivered but not
 * kept. The log's ring holds two records at least, of 24 bytes each.
 */
function alone (room: string): number {
  return ROOM_OVERHEAD + nameBytes(room) + 48
}

function notStarted (): Error {
  return new Error('The adapter was not started: register it through the fastify-rooms plugin.')
}

/**
 * Rooms holding history, least recently published first, linked through the
 * rooms themselves: a publish moves its room to the end with a few pointer
 * writes, where a Map would delete and insert its key on every publish.
 */
class Recency {
  oldest: RoomState | undefined
  newest: RoomState | undefined
  size = 0

  has (state: RoomState): boolean {
    return state.older !== undefined || this.oldest === state
  }

  /** Make the room the most recent, adding it when absent. */
  touch (state: RoomState): void {
    if (this.newest === state) return
    if (this.has(state)) this.remove(state)
    state.older = this.newest
    state.newer = undefined
    if (this.newest === undefined) this.oldest = state
    else this.newest.newer = state
    this.newest = state
    this.size++
  }

  remove (state: RoomState): void {
    const { older, newer } = state
    if (older === undefined) this.oldest = newer
    else older.newer = newer
    if (newer === undefined) this.newest = older
    else newer.older = older
    state.older = undefined
    state.newer = undefined
    this.size--
  }

  clear (): void {
    this.oldest = undefined
    this.newest = undefined
    this.size = 0
  }
}

/** Create the default in-process adapter. */
export function memoryAdapter (options?: MemoryAdapterOptions): Adapter {
  return new MemoryAdapter(options)
}

/** Members with an id after `query.after`, by id, and the cursor of the next page. */
function membersPage (state: RoomState, query: MembersQuery): { members: Member[], next: string | null } {
  const { ids } = state
  let i = query.after === undefined ? 0 : lowerBound(ids, query.after)
  if (i < ids.length && ids[i] === query.after) i++
  const end = Math.min(ids.length, i + query.limit)
  const members: Member[] = []
  for (let j = i; j < end; j++) members.push((state.users.get(ids[j] as string) as UserEntry).member)
  return { members, next: end < ids.length && members.length > 0 ? ids[end - 1] as string : null }
}

/** Take a connection from a user's entry; true when it was the user's last one in the room. */
function dropConnection (entry: UserEntry, connectionId: string): boolean {
  const { connections } = entry
  if (typeof connections === 'string') return connections === connectionId
  if (!connections.delete(connectionId)) return false
  if (connections.size === 1) entry.connections = connections.values().next().value as string
  return false
}

/** Where `value` goes in `sorted`, by code point: Redis's order, so pages match across adapters. */
function lowerBound (sorted: string[], value: string): number {
  let lo = 0
  let hi = sorted.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (compareCodePoints(sorted[mid] as string, value) < 0) lo = mid + 1
    else hi = mid
  }
  return lo
}

/** Insert `value`; returns where it went. */
function insertSorted (sorted: string[], value: string): number {
  const i = lowerBound(sorted, value)
  sorted.splice(i, 0, value)
  return i
}

/** Remove `value`; returns where it was (or would have been). */
function removeSorted (sorted: string[], value: string): number {
  const i = lowerBound(sorted, value)
  if (sorted[i] === value) sorted.splice(i, 1)
  return i
}
