import createError from '@fastify/error'

/**
 * Every code an `error` frame can carry. Clients match on the code, never on
 * the message, exactly as Fastify users match on `FST_ERR_*`.
 */
export const ERROR_CODES = [
  'INVALID_FRAME',
  'UNKNOWN_TYPE',
  'INVALID_ROOM',
  'INVALID_DATA',
  'NOT_IN_ROOM',
  'PAYLOAD_TOO_LARGE',
  'ROOM_FULL',
  'TOO_MANY_ROOMS',
  'FORBIDDEN',
  'UNAUTHORIZED',
  'RATE_LIMITED',
  'UNAVAILABLE',
  'INTERNAL'
] as const

export type ErrorCode = (typeof ERROR_CODES)[number]

/**
 * An error with a protocol code. Thrown anywhere inside the server, it becomes
 * an `error` frame whose `message` is shown to the client as is, so the message
 * must be a sentence a person can act on and must not leak internals.
 */
export class RoomsError extends Error {
  readonly code: ErrorCode
  readonly room: string | undefined

  constructor (code: ErrorCode, message: string, room?: string) {
    super(message)
    this.name = 'RoomsError'
    this.code = code
    this.room = room
  }
}

/**
 * Build the error an `onJoin` or `onPublish` hook throws to refuse with its own
 * message (returning `false` refuses with a generic one).
 * @param message shown to the client in the `FORBIDDEN` error frame
 */
export function forbidden (message = 'You are not allowed to do that.'): RoomsError {
  return new RoomsError('FORBIDDEN', message)
}

/**
 * Why a connection is refused with `UNAUTHORIZED`. Each sentence is both the
 * `error` frame's message and the reason of the 4001 close that follows, so it
 * stays under the 123 bytes a close reason may hold, and never quotes the token.
 */
export const UNAUTHORIZED_REASONS = {
  badToken: 'Authentication failed: the token was not accepted.',
  notAuth: 'Authenticate first: the first frame must be {"type":"auth","token":"..."}.',
  early: 'Wait for welcome: send nothing after auth until welcome arrives.',
  timeout: 'Authentication timed out: send an auth frame as soon as the socket opens.',
  expired: 'Token expired: reconnect with a fresh token.',
  otherUser: 'Token refresh refused: the new token is for another user.',
  unanswered: 'Authentication failed: the token could not be checked in time.'
} as const

export type UnauthorizedReason = keyof typeof UNAUTHORIZED_REASONS

/** The `UNAUTHORIZED` error for one of the reasons above; the connection closes with 4001 after it. */
export function unauthorized (reason: UnauthorizedReason): RoomsError {
  return new RoomsError('UNAUTHORIZED', UNAUTHORIZED_REASONS[reason])
}

/** An `auth` frame reached a server that identifies connections at the upgrade only. */
export function tokensNotEnabled (): RoomsError {
  return new RoomsError('INVALID_FRAME', 'This server takes no auth frames: it identifies connections when they connect.')
}

/** Tells whether an unknown thrown value is one of ours. */
export function isRoomsError (err: unknown): err is RoomsError {
  return err instanceof RoomsError
}

/** REST: an unexpected failure; the details go to the log, never to the client. */
export const InternalError = createError('INTERNAL', 'The server failed to handle this request; it has been logged. Try again later.', 500)
/** REST: a valid room name longer than the router's `maxParamLength`. */
export const RoomNameTooLongError = createError<[number, number]>('ROOM_NAME_TOO_LONG', 'This room name has %d characters, more than this server\'s router takes (routerOptions.maxParamLength = %d): create Fastify with { routerOptions: { maxParamLength: 256 } }.', 414)
/** REST: the room has no members (rooms exist while someone is in them). */
export const RoomNotFoundError = createError<[string]>('ROOM_NOT_FOUND', 'Room "%s" has no members.', 404)
/** One error class per code and status, made once, as Fastify's own errors are. */
const httpErrors = new Map<string, ReturnType<typeof createError>>()

/** A protocol error as an HTTP error in Fastify's shape, keeping its code. */
export function httpError (code: ErrorCode, message: string, statusCode: number): Error {
  const key = `${code} ${statusCode}`
  let Err = httpErrors.get(key)
  if (Err === undefined) {
    Err = createError(code, '%s', statusCode)
    httpErrors.set(key, Err)
  }
  return new Err(message)
}

/** REST history: the room has neither members nor stored messages. */
export const NoHistoryError = createError<[string]>('ROOM_NOT_FOUND', 'Room "%s" has no members and no stored messages.', 404)
/** REST and upgrade: a room name outside the contract's alphabet or length. */
export const InvalidRoomError = createError<[string]>('INVALID_ROOM', '%s', 400)
/** Upgrade: `authenticate` threw or returned nothing. */
export const UnauthorizedError = createError('UNAUTHORIZED', 'Authentication failed: the upgrade request carried no valid credentials.', 401)
/** REST: auth is configured and the request carries no credentials a connection would be accepted with. */
export const RestUnauthorizedError = createError('UNAUTHORIZED', 'This API needs the credentials a connection needs: the session cookie or header, or Authorization: Bearer <token>.', 401)
/** REST: `onJoin` refused this user the room the route is about. */
export const RoomForbiddenError = createError<[string]>('FORBIDDEN', 'You may not see room "%s".', 403)
/** Upgrade: the anonymous `name` query parameter is not 1-32 printable characters. */
export const InvalidNameError = createError('INVALID_NAME', 'The name query parameter must be 1-32 printable characters.', 400)
/** Upgrade: `allowedOrigins` is set and the Origin header is not in it. */
export const OriginNotAllowedError = createError<[string]>('ORIGIN_NOT_ALLOWED', 'Origin %s is not allowed to open a connection.', 403)
/** Upgrade: `maxConnections` reached. */
export const TooManyConnectionsError = createError<[number]>('TOO_MANY_CONNECTIONS', 'The server holds its maximum of %d connections: retry later or on another instance.', 503)
/** Upgrade: the server is shutting down. */
export const ShuttingDownError = createError('SHUTTING_DOWN', 'The server is shutting down; reconnect to another instance.', 503)
