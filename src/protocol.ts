import Type, { type Static, type TSchema } from 'typebox'
import { Compile } from 'typebox/compile'
import { ERROR_CODES, RoomsError, type ErrorCode } from './errors.js'
import { canonicalMember } from './json-span.js'
import { ScannedPublishFrame, scanPublish } from './publish-scan.js'

/** Version sent in `welcome`; bumped only on incompatible wire changes. */
export const PROTOCOL_VERSION = 2

export const ROOM_PATTERN = '^[A-Za-z0-9_.:-]{1,128}$'
const roomRegExp = new RegExp(ROOM_PATTERN)

export const RoomName = Type.String({ minLength: 1, maxLength: 128, pattern: ROOM_PATTERN })
export const RequestId = Type.Union([Type.String({ minLength: 1, maxLength: 64 }), Type.Integer()])
export const Member = Type.Object(
  { id: Type.String({ minLength: 1 }), name: Type.String() },
  { additionalProperties: true }
)
export const Position = Type.Object({
  offset: Type.Integer({ minimum: 0 }),
  epoch: Type.String({ maxLength: 64 })
})

export const JoinFrame = Type.Object({
  type: Type.Literal('join'),
  id: Type.Optional(RequestId),
  room: RoomName,
  since: Type.Optional(Position),
  /** Replay the last n retained messages after `joined` (a first visit); `since` wins when both are given. */
  history: Type.Optional(Type.Integer({ minimum: 0 }))
})
export const LeaveFrame = Type.Object({
  type: Type.Literal('leave'),
  id: Type.Optional(RequestId),
  room: RoomName
})
export const PublishFrame = Type.Object({
  type: Type.Literal('publish'),
  id: Type.Optional(RequestId),
  room: RoomName,
  data: Type.Unknown(),
  /** No offset, not stored, not recovered: typing indicators, cursors. */
  ephemeral: Type.Optional(Type.Boolean())
})
/** Most members one `joined` or `members` reply carries. */
export const MAX_MEMBERS_PAGE = 1000
/**
 * A member id as a paging cursor: members with a greater id follow it. As
 * long as a member id may be (the frame's size bounds it): a shorter limit
 * made a page whose last member had a longer id impossible to follow.
 */
export const MemberCursor = Type.String({ minLength: 1 })
export const MembersFrame = Type.Object({
  type: Type.Literal('members'),
  id: Type.Optional(RequestId),
  room: RoomName,
  /** The `membersNext` of `joined`, or the `next` of the previous page. */
  after: Type.Optional(MemberCursor),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_MEMBERS_PAGE }))
})
export const PingFrame = Type.Object({
  type: Type.Literal('ping'),
  id: Type.Optional(RequestId)
})
/** Longest token an `auth` frame may carry (JWTs with many claims stay far below it). */
export const MAX_TOKEN_LENGTH = 16_384
export const AuthFrame = Type.Object({
  type: Type.Literal('auth'),
  id: Type.Optional(RequestId),
  token: Type.String({ minLength: 1, maxLength: MAX_TOKEN_LENGTH })
})
/** Most rooms one `rooms` reply carries. */
export const MAX_ROOMS_PAGE = 1000
/**
 * A page of the room list (rooms with members, by name), and with
 * `subscribe: true` a live subscription to their member counts (an extension
 * of the contract, see plugin.md "Live room list").
 */
export const RoomsFrame = Type.Object({
  type: Type.Literal('rooms'),
  id: Type.Optional(RequestId),
  /** Only rooms whose name starts with it, in the page and in the updates. */
  prefix: Type.Optional(Type.String({ maxLength: 128 })),
  /** The `next` of the previous page. */
  after: Type.Optional(Type.String({ maxLength: 128 })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_ROOMS_PAGE })),
  /** true: start (or restart with this prefix) `counts` updates; false: stop them; absent: a page only. */
  subscribe: Type.Optional(Type.Boolean())
})
/** Most messages one `history` reply carries, as in REST. */
export const MAX_HISTORY_PAGE = 1000
/** Messages in a `history` reply when `limit` is not given, as in REST. */
export const DEFAULT_HISTORY_PAGE = 100
/**
 * Stored messages of a room the connection is in, after an offset, oldest
 * first: `GET /rooms/:room/messages` over the socket (an extension of the
 * contract, see plugin.md "History over the socket").
 */
export const HistoryFrame = Type.Object({
  type: Type.Literal('history'),
  id: Type.Optional(RequestId),
  room: RoomName,
  /** Messages with a greater offset follow (default 0: from the oldest retained). */
  after: Type.Optional(Type.Integer({ minimum: 0 })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_HISTORY_PAGE }))
})
export const ClientFrame = Type.Union([JoinFrame, LeaveFrame, PublishFrame, MembersFrame, PingFrame, AuthFrame, RoomsFrame, HistoryFrame])

export const ErrorCodeSchema = Type.Enum(ERROR_CODES)

export const WelcomeFrame = Type.Object({
  type: Type.Literal('welcome'),
  connectionId: Type.String(),
  user: Member,
  protocol: Type.Literal(PROTOCOL_VERSION),
  heartbeatMs: Type.Integer(),
  /** When the connection's token expires (epoch ms), if it does. */
  expiresAt: Type.Optional(Type.Integer()),
  /** The `id` of the `auth` frame this welcome answers, when it had one. */
  id: Type.Optional(RequestId),
  /**
   * Anonymous connections only: a server-signed token naming this user, to
   * pass as the `resume` query parameter of the next connection so that a
   * reconnect keeps the same user id (and so is not a new person in a room).
   */
  resume: Type.Optional(Type.String())
})
export const AuthenticatedFrame = Type.Object({
  type: Type.Literal('authenticated'),
  id: Type.Optional(RequestId),
  expiresAt: Type.Optional(Type.Integer())
})
export const JoinedFrame = Type.Object({
  type: Type.Literal('joined'),
  id: Type.Optional(RequestId),
  room: RoomName,
  /** Members (users) in the room, the joiner included. */
  count: Type.Integer(),
  /** The first page of members, by id. */
  members: Type.Array(Member),
  /** Pass as `after` in a `members` request for the next page; null when this page was the last. */
  membersNext: Type.Union([MemberCursor, Type.Null()]),
  offset: Type.Integer(),
  epoch: Type.String(),
  recovered: Type.Optional(Type.Boolean())
})
export const LeftFrame = Type.Object({
  type: Type.Literal('left'),
  id: Type.Optional(RequestId),
  room: RoomName,
  /** Set on an unsolicited `left`: the server removed the connection from the room, and says why. */
  reason: Type.Optional(Type.String())
})
export const AckFrame = Type.Object({
  type: Type.Literal('ack'),
  id: RequestId,
  room: RoomName,
  /** Absent for an ephemeral publish. */
  offset: Type.Optional(Type.Integer())
})
export const MembersPageFrame = Type.Object({
  type: Type.Literal('members'),
  id: Type.Optional(RequestId),
  room: RoomName,
  members: Type.Array(Member),
  /** Pass as `after` for the next page; null when this page was the last. */
  next: Type.Union([MemberCursor, Type.Null()])
})
export const PongFrame = Type.Object({
  type: Type.Literal('pong'),
  id: Type.Optional(RequestId)
})
export const MessageFrame = Type.Object({
  type: Type.Literal('message'),
  room: RoomName,
  data: Type.Unknown(),
  /** Absent for an ephemeral message. */
  offset: Type.Optional(Type.Integer()),
  ts: Type.Integer(),
  from: Type.Optional(Member),
  ephemeral: Type.Optional(Type.Literal(true))
})
export const PresenceFrame = Type.Object({
  type: Type.Literal('presence'),
  room: RoomName,
  /** Users whose first connection joined since the last frame (or whose state a new member must learn). */
  joins: Type.Array(Member),
  /** Users whose last connection left. */
  leaves: Type.Array(Member),
  /** Members after this diff. */
  count: Type.Integer()
})
export const DirectFrame = Type.Object({
  type: Type.Literal('direct'),
  data: Type.Unknown(),
  from: Type.Optional(Member)
})
export const ErrorFrame = Type.Object({
  type: Type.Literal('error'),
  id: Type.Optional(RequestId),
  code: ErrorCodeSchema,
  message: Type.String(),
  room: Type.Optional(RoomName)
})
export const HistoryPageFrame = Type.Object({
  type: Type.Literal('history'),
  id: Type.Optional(RequestId),
  room: RoomName,
  /** The history the offsets belong to. */
  epoch: Type.String(),
  /** The room's last offset. */
  offset: Type.Integer(),
  /** `message` frames as they were delivered, oldest first, at most `limit`. */
  messages: Type.Array(MessageFrame)
})
/** A room and its member count; 0 in a `counts` update means the room has no members any more. */
export const RoomCount = Type.Object({
  name: RoomName,
  count: Type.Integer({ minimum: 0 })
})
export const RoomsPageFrame = Type.Object({
  type: Type.Literal('rooms'),
  /** Absent on a page the server sends by itself to restart a subscription (its view may have missed changes). */
  id: Type.Optional(RequestId),
  rooms: Type.Array(RoomCount),
  /** Pass as `after` for the next page; null when this page was the last. */
  next: Type.Union([Type.String(), Type.Null()]),
  /** Whether the connection is subscribed to `counts` updates after this reply. */
  subscribed: Type.Boolean()
})
/** Coalesced member-count changes of the subscribed rooms: at most one frame per interval, latest count per room. */
export const RoomCountsFrame = Type.Object({
  type: Type.Literal('counts'),
  rooms: Type.Array(RoomCount)
})
export const ServerFrame = Type.Union([
  WelcomeFrame, JoinedFrame, LeftFrame, AckFrame, PongFrame, MembersPageFrame,
  MessageFrame, PresenceFrame, DirectFrame, ErrorFrame, AuthenticatedFrame, RoomsPageFrame, RoomCountsFrame, HistoryPageFrame
])

export type RoomName = Static<typeof RoomName>
export type RequestId = Static<typeof RequestId>
export type Member = Static<typeof Member>
export type Position = Static<typeof Position>
export type JoinFrame = Static<typeof JoinFrame>
export type LeaveFrame = Static<typeof LeaveFrame>
export type PublishFrame = Static<typeof PublishFrame>
export type PingFrame = Static<typeof PingFrame>
export type MembersFrame = Static<typeof MembersFrame>
export type MembersPageFrame = Static<typeof MembersPageFrame>
export type AuthFrame = Static<typeof AuthFrame>
export type AuthenticatedFrame = Static<typeof AuthenticatedFrame>
export type ClientFrame = Static<typeof ClientFrame>
export type WelcomeFrame = Static<typeof WelcomeFrame>
export type JoinedFrame = Static<typeof JoinedFrame>
export type LeftFrame = Static<typeof LeftFrame>
export type AckFrame = Static<typeof AckFrame>
export type PongFrame = Static<typeof PongFrame>
export type MessageFrame = Static<typeof MessageFrame>
export type PresenceFrame = Static<typeof PresenceFrame>
export type DirectFrame = Static<typeof DirectFrame>
export type ErrorFrame = Static<typeof ErrorFrame>
export type ServerFrame = Static<typeof ServerFrame>
export type RoomsFrame = Static<typeof RoomsFrame>
export type RoomCount = Static<typeof RoomCount>
export type RoomsPageFrame = Static<typeof RoomsPageFrame>
export type RoomCountsFrame = Static<typeof RoomCountsFrame>
export type HistoryFrame = Static<typeof HistoryFrame>
export type HistoryPageFrame = Static<typeof HistoryPageFrame>

const validators = {
  join: Compile(JoinFrame),
  leave: Compile(LeaveFrame),
  publish: Compile(PublishFrame),
  members: Compile(MembersFrame),
  ping: Compile(PingFrame),
  auth: Compile(AuthFrame),
  rooms: Compile(RoomsFrame),
  history: Compile(HistoryFrame)
}
const requestIdValidator = Compile(RequestId)

/** A frame that failed validation, with the `id` to answer when it had a usable one. */
export interface FrameError {
  error: RoomsError
  id: RequestId | undefined
}

/** Tells whether a room name is inside the contract's alphabet and length. */
export function isRoomName (room: unknown): room is string {
  return typeof room === 'string' && roomRegExp.test(room)
}

/** The sentence sent with `INVALID_ROOM`. */
export function invalidRoomMessage (room: unknown): string {
  const shown = typeof room === 'string' ? JSON.stringify(room.length > 40 ? room.slice(0, 40) + '...' : room) : typeof room
  return `Room name ${shown} is invalid: use 1-128 characters of A-Z a-z 0-9 _ - . :`
}

/**
 * Parse and validate one text frame from a client. This is the only place a
 * client frame is checked: everything past it trusts the returned type.
 * @param text the frame's text
 * @returns the typed frame, or the error to answer with
 */
export function parseClientFrame (text: string): ClientFrame | FrameError {
  const scanned = scanPublish(text)
  // Refused by the schema: JSON.parse reads it again below, so that the error is the one any frame gets.
  if (scanned !== undefined && validators.publish.Check(scanned)) return scanned
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    return fail('INVALID_FRAME', 'Frame is not valid JSON: send one JSON object per text frame.')
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return fail('INVALID_FRAME', 'Frame must be a JSON object with a "type" field.')
  }
  const frame = value as Record<string, unknown>
  const id = requestIdValidator.Check(frame.id) ? frame.id : undefined
  const type = frame.type
  if (typeof type !== 'string') {
    return fail('INVALID_FRAME', 'Frame must have a string "type" field.', id)
  }
  const validator = Object.hasOwn(validators, type) ? validators[type as keyof typeof validators] : undefined
  if (validator === undefined) {
    return fail('UNKNOWN_TYPE', `Unknown frame type ${JSON.stringify(type.slice(0, 32))}: use auth, join, leave, publish, members, history, rooms or ping.`, id)
  }
  if (validator.Check(frame)) return frame
  if ('room' in frame && !isRoomName(frame.room)) {
    return fail('INVALID_ROOM', invalidRoomMessage(frame.room), id)
  }
  return fail('INVALID_FRAME', `Invalid "${type}" frame: ${describeErrors(validator.Errors(frame))}.`, id)
}

/**
 * The `id` of a frame that is refused before it is handled (rate limit), so
 * that even the refusal answers the request it refuses.
 */
export function peekRequestId (text: string): RequestId | undefined {
  try {
    const value: unknown = JSON.parse(text)
    const id = typeof value === 'object' && value !== null ? (value as { id?: unknown }).id : undefined
    return requestIdValidator.Check(id) ? id : undefined
  } catch {
    return undefined
  }
}

/** True when `parseClientFrame` returned an error rather than a frame. */
export function isFrameError (result: ClientFrame | FrameError): result is FrameError {
  return 'error' in result
}

function fail (code: ErrorCode, message: string, id?: RequestId): FrameError {
  return { error: new RoomsError(code, message), id }
}

/** The JSON pointer of a field inside the user's `data`, as shown in `INVALID_DATA`. */
interface SchemaError { instancePath: string, message: string, keyword?: string, params?: unknown }

/**
 * One short sentence naming the first failing path. The first error is the
 * most specific one TypeBox reports, so it is the one a person should fix.
 */
export function describeErrors (errors: readonly SchemaError[], root = ''): string {
  const first = errors.find((e) => e.keyword !== 'anyOf') ?? errors[0]
  if (first === undefined) return 'it does not match the schema'
  const path = root + first.instancePath
  if (first.keyword === 'required') {
    const props = (first.params as { requiredProperties?: string[] } | undefined)?.requiredProperties
    if (props !== undefined && props.length > 0) return `${path === '' ? 'the frame' : path} is missing ${props.map((p) => `"${p}"`).join(', ')}`
  }
  return `${path === '' ? 'the value' : path} ${first.message}`
}

/** A compiled check of the user's `dataSchema`. */
export interface DataValidator {
  /** Returns an error sentence naming the failing path, or undefined when valid. */
  (data: unknown): string | undefined
}

/**
 * Compile the app's `dataSchema` once; published `data` is checked with it.
 * @param schema a TypeBox schema
 */
export function compileDataValidator (schema: TSchema): DataValidator {
  const validator = Compile(schema)
  return (data) => validator.Check(data) ? undefined : `Invalid data: ${describeErrors(validator.Errors(data), '/data')}.`
}

/**
 * The JSON of a publish frame's `data` as the encoder would write it, when the
 * frame's text holds it in that form already (read by the fast path, or
 * found by `canonicalMember`); otherwise undefined, and the data is encoded.
 * @param text the text the frame was parsed from
 */
export function encodedData (frame: PublishFrame, text: string): string | undefined {
  return frame instanceof ScannedPublishFrame ? frame.dataJson : canonicalMember(text, frame, 'data')
}

/**
 * What the JSON of a publish's data can weigh at most without measuring it:
 * the frame's size when that JSON is text of the frame, else unknown
 * (Infinity). Data encoded again may be larger than the frame that carried
 * it: the encoder writes `1e20` as 21 digits.
 * @param encoded what `encodedData` returned for the frame
 */
export function dataBytesBound (frame: PublishFrame, encoded: string | undefined, frameBytes: number): number {
  if (encoded === undefined) return Infinity
  return !(frame instanceof ScannedPublishFrame) || frame.dataJsonInFrame ? frameBytes : Infinity
}

/** A publish as it travels to the adapter: data and sender already encoded, once. */
export interface EncodedPublish {
  /** `data` as JSON. */
  data: string
  /** The publishing member as JSON; absent for server publishes. */
  from?: string | undefined
  /** No offset, not stored: delivered to the members of the moment only. */
  ephemeral?: boolean | undefined
}

/**
 * Encode published data once, at the edge. Data that cannot be encoded (nested
 * deeper than the JSON encoder's stack) is refused here, before it could take
 * an offset.
 */
export function encodeData (data: unknown, room: string): string {
  let json: string | undefined
  try {
    json = JSON.stringify(data)
  } catch {
    throw new RoomsError('INVALID_DATA', 'Message data cannot be encoded as JSON (nested too deeply, a cycle, or a BigInt): send plain JSON.', room)
  }
  if (json === undefined) throw new RoomsError('INVALID_DATA', 'Message data must be a JSON value (not undefined or a function).', room)
  return json
}

/**
 * Everything a publish's data must pass, for a member's publish and a server
 * publish alike: it encodes as JSON, fits `maxMessageBytes`, and matches the
 * data schema. Returns the encoded data.
 * @param frameBytes what the encoded data can weigh at most, when known
 *   (`dataBytesBound`): data within a small frame needs no measuring
 * @param encoded the data's JSON when it is known already, exactly as
 *   `encodeData` would write it (see `canonicalMember`)
 */
export function checkPublish (data: unknown, room: string, maxMessageBytes: number, validate: DataValidator | undefined, frameBytes = Infinity, encoded?: string): string {
  const json = encoded ?? encodeData(data, room)
  if (frameBytes > maxMessageBytes && Buffer.byteLength(json) > maxMessageBytes) {
    throw new RoomsError('PAYLOAD_TOO_LARGE', `Message data is larger than ${maxMessageBytes} bytes: send less per message.`, room)
  }
  const invalid = validate?.(data)
  if (invalid !== undefined) throw new RoomsError('INVALID_DATA', invalid, room)
  return json
}

/**
 * Build a `message` frame from pre-encoded parts. Room names are ASCII without
 * quotes or backslashes (the contract's alphabet), so they need no escaping;
 * `ts` and `offset` are integers. An ephemeral message has no offset.
 */
export function messageFrame (room: string, publish: EncodedPublish, offset: number | undefined, ts: number): string {
  const from = publish.from === undefined ? '' : `,"from":${publish.from}`
  if (offset === undefined) return `{"type":"message","room":"${room}","data":${publish.data},"ts":${ts}${from},"ephemeral":true}`
  return `{"type":"message","room":"${room}","data":${publish.data},"offset":${offset},"ts":${ts}${from}}`
}

/**
 * Encode an `ack`, the same bytes as `JSON.stringify` of the object: an integer
 * id prints as the encoder prints it, a string id (client-chosen) goes through
 * the encoder, and the room needs no escaping (see `messageFrame`).
 */
export function encodeAck (id: RequestId, room: string, offset: number | undefined): string {
  const idJson = typeof id === 'number' ? String(id) : JSON.stringify(id)
  if (offset === undefined) return `{"type":"ack","id":${idJson},"room":"${room}"}`
  return `{"type":"ack","id":${idJson},"room":"${room}","offset":${offset}}`
}

/**
 * Encode a `joined` frame whose members page is JSON already (`membersJson`,
 * the `members` array's text): the same text as `JSON.stringify(frame)`, with
 * the page not encoded again. Room names need no escaping (see RoomName).
 */
export function encodeJoined (frame: JoinedFrame, membersJson: string): string {
  const next = frame.membersNext === null ? 'null' : JSON.stringify(frame.membersNext)
  const id = frame.id === undefined ? '' : `,"id":${JSON.stringify(frame.id)}`
  const recovered = frame.recovered === undefined ? '' : `,"recovered":${String(frame.recovered)}`
  return `{"type":"joined","room":"${frame.room}","count":${frame.count},"members":${membersJson},"membersNext":${next},"offset":${frame.offset},"epoch":${JSON.stringify(frame.epoch)}${id}${recovered}}`
}

/** Encode a `presence` diff from members already encoded as JSON. */
export function encodePresence (room: string, joins: readonly string[], leaves: readonly string[], count: number): string {
  return `{"type":"presence","room":"${room}","joins":[${joins.join(',')}],"leaves":[${leaves.join(',')}],"count":${count}}`
}

/**
 * Encode a `history` reply around stored `message` frames, as they are: they
 * are JSON already, so the page is never parsed.
 */
export function encodeHistory (id: RequestId | undefined, room: string, epoch: string, offset: number, messages: ReadonlyArray<{ frame: string }>): string {
  const head = id === undefined ? '{"type":"history"' : `{"type":"history","id":${JSON.stringify(id)}`
  return `${head},"room":"${room}","epoch":${JSON.stringify(epoch)},"offset":${offset},"messages":[${messages.map((m) => m.frame).join(',')}]}`
}

/** Encode a `direct` frame. */
export function encodeDirect (data: unknown, from?: Member): string {
  const frame: DirectFrame = { type: 'direct', data }
  if (from !== undefined) frame.from = from
  return JSON.stringify(frame)
}
