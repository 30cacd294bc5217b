import Type from 'typebox'
import { Compile, type Validator } from 'typebox/compile'
import type { MembersQuery, RoomQuery } from './adapters/adapter.js'
import { RoomsError, errorCodes } from './errors.js'
import { describeErrors, encodeDirect, invalidRoomMessage, isRoomName } from './protocol.js'
import { RoomListQuery, RoomQuerystring } from './routes.js'

// The server API (`app.rooms`) is an edge too: the app's arguments are
// checked here, against the REST routes' own schemas where they mean the
// same, so that a wrong one fails with a sentence rather than a page that
// looks complete (a limit of 0 gave no rooms and `next: null`).

const listQuery = Compile(RoomListQuery)
const membersQuery = Compile(RoomQuerystring)
// A limit of 0 is the default with `historySize: 0`: an empty page, not a
// mistake. An `after` past the last offset (Infinity too) is an empty page,
// and a fractional one counts from its whole part, as documented.
const historyLimit = Compile(Type.Integer({ minimum: 0 }))

function invalid (sentence: string): never {
  throw new errorCodes.FST_ROOMS_INVALID_ARGUMENT(sentence)
}

/** An id or reason: a non-empty string. */
export function text (value: unknown, name: string): string {
  if (typeof value !== 'string' || value === '') invalid(`${name} must be a non-empty string`)
  return value as string
}

export function roomName (room: unknown): string {
  if (!isRoomName(room)) throw new RoomsError('INVALID_ROOM', invalidRoomMessage(room))
  return room
}

/**
 * An options object: `pick` takes the fields a schema knows (with their
 * defaults) out of it, and they are checked against the schema.
 */
function checked<Q, T> (validator: Validator, query: unknown, what: string, pick: (query: Q) => T): T {
  if (typeof query !== 'object' || query === null) invalid(`${what} must be an object`)
  const fields = pick(query as Q)
  if (!validator.Check(fields)) invalid(describeErrors(validator.Errors(fields), 'query'))
  return fields
}

/** `list`'s query, with its default page size. */
export function roomQuery (query: unknown, defaultLimit: number): RoomQuery {
  return checked(listQuery, query, 'the query', ({ prefix, after, limit = defaultLimit }: Partial<RoomQuery>) => ({ prefix, after, limit }))
}

/** `get`'s page of members, with its default page size. */
export function membersPage (query: unknown, defaultLimit: number): MembersQuery {
  const { membersAfter, membersLimit } = checked(membersQuery, query, 'the members query',
    ({ membersAfter, membersLimit = defaultLimit }: { membersAfter?: string, membersLimit?: number }) => ({ membersAfter, membersLimit }))
  return { after: membersAfter, limit: membersLimit }
}

/** `history`'s range. */
export function historyPage (after: unknown, limit: unknown): { after: number, limit: number } {
  if (typeof after !== 'number' || !(after >= 0)) invalid('history/after must be a number of at least 0')
  if (!historyLimit.Check(limit)) invalid(describeErrors(historyLimit.Errors(limit), 'history/limit'))
  return { after: after as number, limit: limit as number }
}

/** A `direct` frame, or `INVALID_DATA` for data JSON cannot encode (a BigInt, a cycle, `undefined`). */
export function directFrame (data: unknown): string {
  let frame: string | undefined
  try {
    frame = encodeDirect(data)
  } catch {}
  if (frame === undefined || !frame.includes('"data":')) throw new RoomsError('INVALID_DATA', 'The data must be a JSON value: not undefined, a BigInt or a structure with a cycle.')
  return frame
}
