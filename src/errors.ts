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

/**
 * Every error the plugin raises in Fastify's shape, each class created once,
 * as Fastify's own `errorCodes` are: match on `err.code`, or use
 * `err instanceof errorCodes.FST_ROOMS_INVALID_OPTION`. `FST_ROOMS_*` are
 * mistakes of the app (registration, server API); the others are the
 * contract's HTTP answers to REST requests and refused upgrades. A code with
 * more than one cause takes its sentence as the argument (`httpMessages`).
 */
export const errorCodes = {
  /** `app.register(rooms, options)`: an option is wrong; the message names it. */
  FST_ROOMS_INVALID_OPTION: createError<[string]>('FST_ROOMS_INVALID_OPTION', 'fastify-rooms: invalid options: %s', 500, TypeError),
  /** A second registration in one encapsulation context. */
  FST_ROOMS_ALREADY_REGISTERED: createError('FST_ROOMS_ALREADY_REGISTERED', 'fastify-rooms: already registered in this context; register it again inside its own encapsulated plugin (app.register(async (child) => child.register(rooms, ...))).', 500),
  /** Registrations in sibling contexts, each of which would register @fastify/websocket on the same server. */
  FST_ROOMS_WEBSOCKET_NOT_AT_ROOT: createError('FST_ROOMS_WEBSOCKET_NOT_AT_ROOT', 'fastify-rooms: to register the plugin in several encapsulated contexts, register @fastify/websocket once at the root first.', 500),
  /** A server API call (`app.rooms.*`) got an argument of the wrong kind or range; the message says which and what it must be. */
  FST_ROOMS_INVALID_ARGUMENT: createError<[string]>('FST_ROOMS_INVALID_ARGUMENT', 'fastify-rooms: %s.', 500, TypeError),

  /** REST and upgrade: a room name outside the contract's alphabet or length. */
  INVALID_ROOM: createError<[string]>('INVALID_ROOM', '%s', 400),
  /** REST publish: `data` fails `dataSchema` or cannot be encoded. */
  INVALID_DATA: createError<[string]>('INVALID_DATA', '%s', 400),
  /** Upgrade: the anonymous `name` query parameter is not 1-32 printable characters. */
  INVALID_NAME: createError('INVALID_NAME', 'The name query parameter must be 1-32 printable characters.', 400),
  /** Upgrade or REST without credentials that would be accepted. */
  UNAUTHORIZED: createError<[string]>('UNAUTHORIZED', '%s', 401),
  /** REST: `onJoin` (or `onPublish`) refused. */
  FORBIDDEN: createError<[string]>('FORBIDDEN', '%s', 403),
  /** Upgrade: `allowedOrigins` is set and the Origin header is not in it. */
  ORIGIN_NOT_ALLOWED: createError<[string]>('ORIGIN_NOT_ALLOWED', 'Origin %s is not allowed to open a connection.', 403),
  /** REST: a GET (or REST publish POST) path under the prefix that no route serves (`/rooms/a/b`). */
  NOT_FOUND: createError<[string, string]>('NOT_FOUND', 'No route serves %s %s.', 404),
  /** A plain HTTP GET of the socket's path that passed every check of an upgrade: it is no upgrade. */
  UPGRADE_REQUIRED: createError('UPGRADE_REQUIRED', 'This path takes WebSocket connections: open it with a WebSocket client.', 426),
  /** REST: the room has no members (and, for history, no stored messages). */
  ROOM_NOT_FOUND: createError<[string]>('ROOM_NOT_FOUND', '%s', 404),
  /** REST publish: the body or the message is larger than the limits. */
  PAYLOAD_TOO_LARGE: createError<[string]>('PAYLOAD_TOO_LARGE', '%s', 413),
  /** REST: a valid room name longer than the router's `maxParamLength`. */
  ROOM_NAME_TOO_LONG: createError<[number, number]>('ROOM_NAME_TOO_LONG', 'This room name has %d characters, more than this server\'s router takes (routerOptions.maxParamLength = %d): create Fastify with { routerOptions: { maxParamLength: 256 } }.', 414),
  /** REST: an unexpected failure; the details go to the log, never to the client. */
  INTERNAL: createError('INTERNAL', 'The server failed to handle this request; it has been logged. Try again later.', 500),
  /** REST: the adapter's store is unreachable. */
  UNAVAILABLE: createError<[string]>('UNAVAILABLE', '%s', 503),
  /** Upgrade: `maxConnections` reached. */
  TOO_MANY_CONNECTIONS: createError<[number]>('TOO_MANY_CONNECTIONS', 'The server holds its maximum of %d connections: retry later or on another instance.', 503),
  /** Upgrade: the server is shutting down. */
  SHUTTING_DOWN: createError('SHUTTING_DOWN', 'The server is shutting down; reconnect to another instance.', 503)
} as const

/** The contract's HTTP answers among them: everything but the app's own mistakes (`FST_ROOMS_*`). */
const CONTRACT_ERRORS = Object.entries(errorCodes).filter(([code]) => !code.startsWith('FST_')).map(([, HttpError]) => HttpError)

/** An error the plugin raised as one of the contract's HTTP answers, to send as it is. */
export function isContractError (err: unknown): err is Error & { statusCode: number, code: string } {
  return CONTRACT_ERRORS.some((HttpError) => err instanceof HttpError)
}

/** The sentences of the HTTP errors whose code has more than one cause. */
export const httpMessages = {
  upgradeUnauthorized: 'Authentication failed: the upgrade request carried no valid credentials.',
  restUnauthorized: 'This API needs the credentials a connection needs: the session cookie or header, or Authorization: Bearer <token>.',
  roomForbidden: (room: string): string => `You may not see room "${room}".`,
  roomNotFound: (room: string): string => `Room "${room}" has no members.`,
  noHistory: (room: string): string => `Room "${room}" has no members and no stored messages.`,
  bodyTooLarge: 'The request body is larger than the server accepts: send less per message.',
  guardRefused: 'This route\'s guard refused the request.'
} as const

/** Protocol codes a REST request can meet, each with its HTTP error; the rest are internal failures. */
const HTTP_OF: Partial<Record<ErrorCode, new (message: string) => Error>> = {
  INVALID_ROOM: errorCodes.INVALID_ROOM,
  INVALID_DATA: errorCodes.INVALID_DATA,
  PAYLOAD_TOO_LARGE: errorCodes.PAYLOAD_TOO_LARGE,
  FORBIDDEN: errorCodes.FORBIDDEN,
  UNAVAILABLE: errorCodes.UNAVAILABLE
}

/** A protocol error as the HTTP error of its code, keeping its sentence; undefined when REST has no answer for it but 500. */
export function httpErrorOf (err: RoomsError): Error | undefined {
  const Http = HTTP_OF[err.code]
  return Http === undefined ? undefined : new Http(err.message)
}

/** The adapter's store is unreachable or did not answer in time; the same call may be retried. */
export function storeUnavailable (): RoomsError {
  return new RoomsError('UNAVAILABLE', 'The message store is unreachable right now: retry in a moment.')
}
