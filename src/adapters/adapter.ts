import type { FastifyBaseLogger } from 'fastify'
import type { EncodedPublish, Member } from '../protocol.js'
import type { AdapterMetrics } from '../metrics.js'

/**
 * What an adapter calls on the node it serves. Frames arrive encoded once, so
 * the node writes the same bytes to every local member.
 */
export interface AdapterListener {
  /** A `message` frame of `room`, called in offset order per room; `offset` is undefined for an ephemeral one. */
  message (room: string, offset: number | undefined, frame: string | Buffer): void
  /**
   * `message` frames of `room` that reached this node together, in offset
   * order (one call's worth of a store's publishes): the same as `message`
   * for each, except that a member that has none of them yet gets them all
   * in one write.
   */
  messages (room: string, messages: ReadonlyArray<{ offset: number, frame: Buffer }>): void
  /**
   * A user's first connection joined `room`, or its last one left. Called in
   * the room's presence order (`change.seq`); the node batches these into
   * `presence` diffs for its members.
   */
  presence (room: string, change: PresenceChange): void
  /** A `direct` frame for one connection; true when that connection is on this node. */
  direct (connectionId: string, frame: string): boolean
  /**
   * The cluster-wide state of a room was lost or taken from this node (data
   * loss, this node's lease expired): these local members of it are
   * disconnected so they rejoin and learn of the gap. Only these: a member
   * that joined the room's new state meanwhile stays.
   */
  reset (room: string, connections: readonly string[]): void
  /** Apply a server command to this node's connections; returns how many it affected here. */
  control (command: ControlCommand): number
}

/** One cluster-wide presence event of a room. */
export interface PresenceChange {
  /** True for a join, false for a leave. */
  join: boolean
  /** The user's id. */
  id: string
  /** The member as JSON, as it goes into the frame. */
  member: string
  /** Members in the room after this change. */
  count: number
  /** The room's presence sequence: increases with every change of the room, also across its lives (a room forgotten and made again). */
  seq: number
}

/** Whom a server command is for: one connection, or every connection of one user. */
export type ControlTarget = { connectionId: string } | { userId: string }

/**
 * A server command that crosses nodes: close connections with 4003; take
 * them out of one room (they get an unsolicited `left`, with the reason when
 * one is given); put a connection into a room (an unsolicited `joined`); push
 * an encoded `direct` frame to a user's connections; or end the grace of a
 * user's dropped connections in a room the user just joined again.
 */
export type ControlCommand =
  | { kind: 'disconnect', target: ControlTarget, reason: string }
  | { kind: 'remove', target: ControlTarget, room: string, reason?: string | undefined }
  | { kind: 'join', target: { connectionId: string }, room: string }
  | { kind: 'direct', target: ControlTarget, frame: string }
  | { kind: 'rejoined', target: { userId: string }, room: string }

/** Limits and history settings every adapter honours, from the plugin options. */
export interface AdapterConfig {
  log: FastifyBaseLogger
  /** This node's id; connection ids start with it followed by `-`. */
  nodeId: string
  /** Members (users) per room; a join past it fails with `ROOM_FULL`. */
  maxMembersPerRoom: number
  /** Messages kept per room for recovery and REST history. */
  historySize: number
  /** How long a room's history is kept after its last publish, in ms. */
  historyTtlMs: number
  /** Rooms whose history is kept at once; the least recently published go first. */
  maxHistoryRooms: number
  /** Bytes of history kept in all rooms together; the least recently published rooms give theirs up first. */
  maxHistoryBytes: number
  /** Members in the first page that `join` answers with. */
  membersPageSize: number
  /** Whether members get `presence` frames at all (the `presenceEvents` option). */
  presenceEvents: boolean
  /** Where to report the adapter's own metrics (Redis round trips, link state); absent when metrics are off. */
  metrics?: AdapterMetrics | undefined
}

/** The cluster-wide state of a room when a connection has just joined it. */
export interface JoinResult {
  /** The first page of members, by id. */
  members: Member[]
  /**
   * Optional: `members` as JSON text, when the adapter keeps the page encoded:
   * `joined` is then written without encoding it again.
   */
  membersJson?: string | undefined
  /** The id to page on from, or null when `members` is all of them. */
  membersNext: string | null
  count: number
  /** Last offset in the room: the joiner gets every message after it. */
  offset: number
  epoch: string
  /**
   * The room's presence sequence that `members` reflects: presence changes
   * numbered up to it are in the member list already, so the joiner is not
   * told of them again.
   */
  presenceSeq: number
  /**
   * The user was a member already (through another connection, perhaps one
   * in its grace time). Optional for custom adapters: without it a dropped
   * connection's grace is not cut short by the user's return.
   */
  present?: boolean
}

/**
 * Receives every room's member count as it changes, cluster-wide, for the
 * live room list. Calls for one room come in the order of its changes.
 */
export interface RoomCountWatcher {
  /** A room's member count changed; 0 when its last member left. */
  count (room: string, count: number): void
  /** Changes may have been missed (the link to the store broke and is back): read the list again. */
  resync (): void
}

/** A room as the REST API and `app.rooms.get` show it. */
export interface RoomInfo {
  name: string
  count: number
  /** One page of members, by id. */
  members: Member[]
  /** The id to pass as `membersAfter` for the next page, or null. */
  membersNext: string | null
  offset: number
  epoch: string
}

/** A page of a room's members: those with an id greater than `after`, by id. */
export interface MembersQuery {
  after?: string | undefined
  limit: number
}

export interface RoomQuery {
  prefix?: string | undefined
  after?: string | undefined
  limit: number
}

export interface RoomPage {
  rooms: Array<{ name: string, count: number }>
  next: string | null
}

/** One stored message: its offset and its encoded `message` frame. */
export interface StoredMessage {
  offset: number
  frame: string
}

export interface HistoryPage {
  epoch: string
  /** Last offset in the room. */
  offset: number
  /** Messages after the asked offset, oldest first, at most the asked limit. */
  messages: StoredMessage[]
}

/** Where `Adapter.publishTo` answers one publish. */
export interface PublishReceipt {
  /** Stored with this offset (undefined for an ephemeral message) and on its way to the members. */
  published (offset: number | undefined): void
  /** Not published, or not known to be (as `publish` would reject). */
  failed (err: Error): void
}

/**
 * Everything that crosses nodes goes through this interface: offsets, history,
 * fan-out, presence and room counts. The registry and the routes call only it,
 * so the memory adapter (one node) and the Redis adapter (many) are
 * interchangeable with one option.
 */
export interface Adapter {
  /**
   * Whether `publish` applies calls in the order they were made even when a
   * call is made before the one before it settled (a store reached over one
   * ordered connection). Then a connection's publishes are sent without
   * waiting for each other's answers, and those of one turn of the event loop
   * travel together; otherwise (the default) each waits for the one before.
   */
  readonly orderedPublishes?: boolean
  /** Called once by the plugin before it serves anything. */
  start (listener: AdapterListener, config: AdapterConfig): Promise<void>
  /** Called once on `app.close()`. */
  close (): Promise<void>
  /**
   * Assign the room's next offset, store the message and deliver it to every
   * node's members, in offset order. An ephemeral message gets no offset and
   * is not stored: it goes to the members of the moment.
   * @returns the message's offset; undefined for an ephemeral one
   */
  publish (room: string, message: EncodedPublish): Promise<number | undefined>
  /**
   * `publish`, answered through `receipt` rather than a promise, and applied
   * in one order with `publish` calls (members' publishes come here, the
   * server API's and REST's go to `publish`). Optional: a member's publish
   * waiting for a store's round trip then holds one object rather than a
   * promise and its reactions, and the garbage collector copies fewer live
   * objects. Calls exactly one of the receipt's methods, once, possibly
   * before it returns; should not throw.
   */
  publishTo? (room: string, message: EncodedPublish, receipt: PublishReceipt): void
  /**
   * Record that a connection joined. When it is the user's first connection in
   * the room, every member is sent `presence join`.
   */
  join (room: string, connectionId: string, member: Member): Promise<JoinResult>
  /**
   * Record that a connection left. When it was the user's last connection in
   * the room, every member is sent `presence leave`. Called once: the
   * connection is out of the room on its node whatever this answers, so a
   * leave the store cannot take now must be kept and done later.
   */
  leave (room: string, connectionId: string, member: Member): Promise<void>
  /**
   * Apply a server command on every node that holds its target: for a
   * connection, only its node; for a user, every node.
   * @returns for a connection, 1 when it was on this node or its node got the
   *   command, else 0; for a user, the connections affected on this node
   */
  control (command: ControlCommand): Promise<number>
  /** Send a `direct` frame to a connection on whichever node holds it. */
  direct (connectionId: string, data: unknown, from?: Member): Promise<boolean>
  /** A room with at least one member, with one page of its members; or null. */
  room (room: string, members: MembersQuery): Promise<RoomInfo | null>
  /** Rooms with members, sorted by name. */
  rooms (query: RoomQuery): Promise<RoomPage>
  /** Stored messages after `after`, oldest first; null for a room with neither members nor history. */
  history (room: string, after: number, limit: number): Promise<HistoryPage | null>
  /**
   * Start (a watcher) or stop (undefined) telling this node of every room's
   * member count changes across the cluster. The plugin calls it when the
   * first connection of this node subscribes to the room list and when the
   * last one stops; resolves once changes after it are sure to be reported.
   * Without it, `rooms` subscriptions are refused.
   */
  watchRooms? (watcher: RoomCountWatcher | undefined): Promise<void>
  /**
   * A secret shared by every node of the deployment (the same for all of
   * them, stable across restarts where the adapter can keep it), to sign
   * anonymous users' resume tokens. Without it each node signs with its own.
   */
  secret? (): Promise<string>
}

/**
 * What an adapter whose store is in this process may offer besides `publish`:
 * the same publish, done (stored and fanned out) before it returns, or thrown.
 * A member's publish then takes no promise and no turn of the microtask
 * queue, and the next frames of its connection are handled at once.
 */
export interface PublishesNow {
  /** Whether `publish` is `publishNow` and nothing more (not when a subclass overrides `publish`). */
  readonly publishesNow: boolean
  publishNow (room: string, message: EncodedPublish): number | undefined
}
