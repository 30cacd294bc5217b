import { STATUS_CODES } from 'node:http'
import Type, { type Static, type TSchema } from 'typebox'
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest, FastifySchemaCompiler, HookHandlerDoneFunction, preHandlerHookHandler, RouteGenericInterface } from 'fastify'
import { TypeBoxValidatorCompiler, type TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { MAX_MEMBERS_PAGE, Member, MemberCursor, MessageFrame, RoomName, invalidRoomMessage, isRoomName } from './protocol.js'
import { errorCodes, httpErrorOf, httpMessages, isContractError, isRoomsError } from './errors.js'
import type { Credentials } from './identity.js'
import type { ResolvedOptions, RestPublishGuard, RouteGuard } from './options.js'
import type { Registry } from './registry.js'

export const HttpError = Type.Object({
  statusCode: Type.Integer(),
  code: Type.String(),
  error: Type.String(),
  message: Type.String()
})

export const RoomSummary = Type.Object({ name: RoomName, count: Type.Integer() })

export const RoomListQuery = Type.Object({
  prefix: Type.Optional(Type.String({ maxLength: 128 })),
  after: Type.Optional(Type.String({ maxLength: 128 })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, description: 'default 100' }))
})

export const RoomList = Type.Object({
  rooms: Type.Array(RoomSummary),
  next: Type.Union([RoomName, Type.Null()])
})

export const RoomParams = Type.Object({ room: RoomName })

export const RoomQuerystring = Type.Object({
  membersAfter: Type.Optional(MemberCursor),
  membersLimit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_MEMBERS_PAGE, description: 'default: the membersPageSize option (100)' }))
})

export const RoomDetail = Type.Object({
  name: RoomName,
  count: Type.Integer(),
  /** One page of members, by id. */
  members: Type.Array(Member),
  /** Pass as `membersAfter` for the next page; null when this page was the last. */
  membersNext: Type.Union([MemberCursor, Type.Null()]),
  offset: Type.Integer(),
  epoch: Type.String()
})

/** Longest room name of the contract, which the router must let through as a path parameter. */
const MAX_ROOM_LENGTH = 128

/** Rooms per page when `limit` is not given. */
export const DEFAULT_PAGE = 100

export const HistoryQuery = Type.Object({
  after: Type.Optional(Type.Integer({ minimum: 0, description: 'default 0' })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, description: 'default 100' }))
})

/** A stored message as REST shows it: the `message` frame without its type. */
export const StoredMessageSchema = Type.Omit(MessageFrame, ['type'])

export const HistoryResponse = Type.Object({
  messages: Type.Array(StoredMessageSchema),
  epoch: Type.String()
})

export const PublishBody = Type.Object({ data: Type.Unknown() })
export const PublishResult = Type.Object({ offset: Type.Integer() })

/**
 * REST is never more open than the socket: with authentication configured,
 * every route asks for the credentials a connection would need, and routes
 * about one room ask `onJoin` too.
 */
export interface RestAccess {
  /** Reads (GET) need no credentials: the app opted in with `publicRest`. */
  publicReads: boolean
  /** The request's user; throws 401 without valid credentials. */
  identify: (request: FastifyRequest, reply: FastifyReply) => Promise<Member>
  /** Throws 403 when `onJoin` refuses the user the room. */
  mayJoin: (user: Member, room: string, request: FastifyRequest) => Promise<void>
}

/** The access checks for the configured credentials; undefined when the app configured none. */
export function restAccess (options: ResolvedOptions, credentials: Credentials): RestAccess | undefined {
  if (!credentials.required) return undefined
  const { onJoin } = options
  return {
    publicReads: options.publicRest,
    async identify (request, reply) {
      const identity = await credentials.identify(request).catch((err: unknown) => {
        if (isRoomsError(err)) return null
        // The app's bug (a malformed user): its details go to the log, not to the client, as for an upgrade.
        request.log.error({ err }, 'fastify-rooms: checking the credentials of a request failed')
        throw new errorCodes.INTERNAL()
      })
      if (identity !== null) return identity.user
      if (credentials.tokens) void reply.header('www-authenticate', 'Bearer')
      throw new errorCodes.UNAUTHORIZED(httpMessages.restUnauthorized)
    },
    async mayJoin (user, room, request) {
      if (onJoin === undefined) return
      let verdict
      try {
        verdict = await onJoin({ connectionId: '', user, room, request })
      } catch (err) {
        if (isRoomsError(err) && err.code === 'FORBIDDEN') throw new errorCodes.FORBIDDEN(err.message)
        throw err
      }
      if (verdict === false) throw new errorCodes.FORBIDDEN(httpMessages.roomForbidden(room))
    }
  }
}

/**
 * An app's guard (`restPublish`, `metrics.preHandler`) as a route's
 * preHandler, called with the instance as `this`. It lets the request on
 * once, however it is written: when it calls `done()` (as @fastify/auth's
 * guards do), when its promise resolves, or, for a plain function that takes
 * no `done`, when it returns. A throw, a rejection or `done(err)` refuses
 * with that error, and so does a return of `false` (403 `FORBIDDEN`): a
 * predicate must not let everyone in. A guard that replied (`reply.send`)
 * has answered: the request goes no further, even when the reply is still
 * in the app's async `onSend` hooks as the guard returns. Fastify's own
 * runner would call the next step twice for a guard that both calls `done`
 * and returns a promise, and an async guard taking `done` would let a
 * predicate's `false` through.
 */
export function guardHook<Route extends RouteGenericInterface> (guard: RouteGuard<Route>): preHandlerHookHandler {
  return function (this: FastifyInstance, request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) {
    let outcome: 'on' | 'refused' | 'replied' | undefined
    let replied = false
    const send = reply.send
    reply.send = function (this: FastifyReply, ...args: Parameters<FastifyReply['send']>) {
      try {
        const sent = send.apply(this, args)
        replied = true
        return sent
      } catch (err) {
        // A send that threw (a bad payload or header) answered nothing, unless it got as far as the headers.
        replied = reply.sent || reply.raw.headersSent
        throw err
      }
    }
    /** `byFalse`: the refusal is the guard's own `false`, which means nothing more once it replied. */
    const finish = (err?: unknown, byFalse = false): void => {
      const refusal = err !== undefined && err !== null
      if (outcome !== undefined) {
        // Too late to refuse. A guard whose done is not a declared parameter (rest or default parameters) was taken at its return.
        if (refusal && outcome !== 'refused' && !(byFalse && outcome === 'replied')) {
          const hint = guard.length < 3 ? '; declare done as its third parameter' : ''
          request.log.error({ err }, outcome === 'on' ? `fastify-rooms: a route guard refused after it had let the request on${hint}` : 'fastify-rooms: a route guard failed after it had replied')
        }
        return
      }
      reply.send = send
      outcome = replied ? 'replied' : refusal ? 'refused' : 'on'
      if (outcome === 'replied') {
        if (refusal && !byFalse) request.log.error({ err }, 'fastify-rooms: a route guard failed after it had replied')
        return
      }
      done(refusal ? err as Error : undefined)
    }
    const verdict = (value: unknown): void => { finish(value === false ? new errorCodes.FORBIDDEN(httpMessages.guardRefused) : undefined, true) }
    let result: unknown
    try {
      // The route's schema has checked the request against `Route` by now.
      result = guard.call(this, request as FastifyRequest<Route>, reply, finish)
    } catch (err) {
      finish(err ?? new Error('The guard threw without an error'))
      return
    }
    if (typeof (result as PromiseLike<unknown> | undefined)?.then === 'function') {
      (result as PromiseLike<unknown>).then(verdict, (err: unknown) => { finish(err ?? new Error('The guard rejected without an error')) })
    } else if (guard.length < 3 || result === false) {
      verdict(result)
    }
  }
}

export interface RoutesOptions {
  registry: Registry
  /** Members per page when `membersLimit` is not given. */
  membersPageSize: number
  /** Credentials and room checks; absent when the app configured no authentication. */
  access: RestAccess | undefined
  /** The REST publish route, when the app turned it on. */
  publish?: {
    guard: RestPublishGuard
    serverPublish: (room: string, data: unknown) => Promise<number>
    bodyLimit: number
  } | undefined
  /** The routes have a path segment of their own (`prefix` is not `/`): unserved paths below it are theirs to answer. */
  ownPrefix: boolean
}

/** A whole number as a query writes it: digits only (the schema bounds its value; an `after` past the last offset is an empty page). */
const DIGITS = /^[0-9]+$/

/**
 * TypeBox's compiler, except that a query's integers must be written in
 * digits: its conversion takes `limit=1.5` as 1 and `1e2` as 100, where a
 * client that sent them most likely meant something else.
 */
const queryValidatorCompiler: FastifySchemaCompiler<TSchema> = (route) => {
  const check = TypeBoxValidatorCompiler(route)
  const properties = (route.schema as { properties?: Record<string, { type?: unknown }> }).properties ?? {}
  const integers = route.httpPart === 'querystring' ? Object.keys(properties).filter((key) => properties[key]?.type === 'integer') : []
  if (integers.length === 0) return check
  return (value) => {
    const query = value as Record<string, unknown>
    for (const key of integers) {
      const raw = query[key]
      if (raw === undefined) continue
      if (typeof raw !== 'string' || !DIGITS.test(raw)) {
        return { error: [{ keyword: 'type', instancePath: `/${key}`, schemaPath: `#/properties/${key}/type`, params: { type: 'integer' }, message: 'must be a whole number written in digits' }] }
      }
      // Digits past about 309 of them read as Infinity, which is no integer: as large as a number can safely be
      // instead, which the schema's maximum refuses where there is one (an `after` past every offset is an empty page).
      if (Number(raw) > Number.MAX_SAFE_INTEGER) query[key] = String(Number.MAX_SAFE_INTEGER)
    }
    return check(value)
  }
}

/**
 * The REST API: room listing and room details. Registered in its own
 * encapsulated context, so its validator and error handler stay ours.
 */
export const routes: FastifyPluginAsync<RoutesOptions> = async (parent, { registry, membersPageSize, access, publish, ownPrefix }) => {
  const app = parent.withTypeProvider<TypeBoxTypeProvider>()
  app.setValidatorCompiler(queryValidatorCompiler)
  app.setErrorHandler(roomErrors)
  const users = new WeakMap<FastifyRequest, Member>()
  if (access !== undefined || !ownPrefix) {
    app.addHook('onRequest', async (request, reply) => {
      // At a prefix shared with the app (`prefix: '/'`), a path no route of ours serves is the app's: its
      // 404 at once, before our credentials check (a 401) or our reading of a POST body.
      if (!ownPrefix && unservedPath(request)) {
        reply.callNotFound()
        return reply
      }
      // Before any validation: without credentials nothing is answered but 401.
      if (access === undefined || (access.publicReads && isRead(request))) return
      users.set(request, await access.identify(request, reply))
    })
  }
  /** preHandler of the routes about one room: `onJoin` must let the user in. */
  const roomAccess = async (request: FastifyRequest): Promise<void> => {
    const user = users.get(request)
    if (access === undefined || user === undefined) return
    await access.mayJoin(user, (request.params as { room: string }).room, request)
  }
  // Fastify 5.5 moved maxParamLength into routerOptions; before it only the top-level option exists.
  const config = app.initialConfig as { routerOptions?: { maxParamLength?: number }, maxParamLength?: number }
  const maxParamLength = config.routerOptions?.maxParamLength ?? config.maxParamLength ?? 100
  if (maxParamLength < MAX_ROOM_LENGTH) {
    app.log.warn({ maxParamLength }, `fastify-rooms: room names longer than ${maxParamLength} characters will get 414 from the REST routes; create Fastify with { routerOptions: { maxParamLength: 256 } }`)
  }

  tooLongForRouter(app, maxParamLength, publish !== undefined)

  app.get('/', {
    schema: {
      summary: 'List rooms with members, sorted by name',
      querystring: RoomListQuery,
      response: { 200: RoomList, 400: HttpError, 401: HttpError }
    }
  }, async (request) => {
    const { prefix, after, limit = DEFAULT_PAGE } = request.query
    return await registry.list({ prefix, after, limit })
  })

  app.get('/:room', {
    preHandler: roomAccess,
    schema: {
      summary: 'A room with a page of its members, last offset and epoch',
      params: RoomParams,
      querystring: RoomQuerystring,
      response: { 200: RoomDetail, 400: HttpError, 401: HttpError, 403: HttpError, 404: HttpError }
    }
  }, async (request) => {
    const { membersAfter, membersLimit = membersPageSize } = request.query
    const room = await registry.room(request.params.room, { after: membersAfter, limit: membersLimit })
    if (room === null) throw new errorCodes.ROOM_NOT_FOUND(httpMessages.roomNotFound(request.params.room))
    return room
  })

  app.get('/:room/messages', {
    preHandler: roomAccess,
    schema: {
      summary: 'Stored messages of a room after an offset, oldest first',
      params: RoomParams,
      querystring: HistoryQuery,
      response: { 200: HistoryResponse, 400: HttpError, 401: HttpError, 403: HttpError, 404: HttpError }
    }
  }, async (request) => {
    const { after = 0, limit = DEFAULT_PAGE } = request.query
    const page = await registry.history(request.params.room, after, limit)
    if (page === null) throw new errorCodes.ROOM_NOT_FOUND(httpMessages.noHistory(request.params.room))
    // Stored frames are parsed only here, on the rare REST read, so the hot path stores one string.
    return { epoch: page.epoch, messages: page.messages.map((m) => JSON.parse(m.frame) as Static<typeof StoredMessageSchema>) }
  })

  if (publish === undefined) return
  app.post('/:room/messages', {
    // Awaited here, so a guard written as a plain function that lets the request through does not hang it.
    preHandler: [roomAccess, guardHook(publish.guard)],
    bodyLimit: publish.bodyLimit,
    schema: {
      summary: 'Publish to a room as the server (no from); guarded by the restPublish option',
      params: RoomParams,
      body: PublishBody,
      // No schema for 401 and 403: they are the guard's answers too, in whatever shape it replies.
      response: { 201: PublishResult, 400: HttpError, 413: HttpError }
    }
  }, async (request, reply) => {
    const offset = await publish.serverPublish(request.params.room, request.body.data)
    return await reply.code(201).send({ offset })
  })
}

/**
 * The router refuses a path parameter longer than `maxParamLength` with its
 * own 414 before any route runs; a wildcard is not length-limited, so paths
 * the `:room` routes could not take land here and get the contract's answer.
 * So do the GET (and, with `restPublish`, POST) paths no route serves: a
 * 404 `NOT_FOUND` with a code, which Fastify's own 404 lacks. It is a route,
 * not a not-found handler: an app may have its own 404 handler at the same
 * prefix, and Fastify takes only one. (At a prefix shared with the app, the
 * onRequest hook has handed such paths to the app's 404 before this runs.)
 */
function tooLongForRouter (app: FastifyInstance, maxParamLength: number, withPublish: boolean): void {
  const handler = async (request: FastifyRequest<{ Params: { '*': string } }>): Promise<void> => {
    const room = roomOfPath(request.params['*'], request.method)
    if (room === undefined) {
      const path = request.url.split('?', 1)[0] as string
      throw new errorCodes.NOT_FOUND(request.method, path.length > 200 ? `${path.slice(0, 200)}...` : path)
    }
    if (!isRoomName(room)) throw new errorCodes.INVALID_ROOM(invalidRoomMessage(room))
    throw new errorCodes.ROOM_NAME_TOO_LONG(room.length, maxParamLength)
  }
  app.get('/*', handler)
  if (withPublish) app.post('/*', handler)
}

/**
 * The room of a path below the prefix that a `:room` route serves (GET /:room
 * and /:room/messages, POST /:room/messages), or undefined for any other path.
 */
function roomOfPath (path: string, method: string): string | undefined {
  const [room, rest, ...more] = path.split('/')
  const served = rest === 'messages' || (rest === undefined && method !== 'POST')
  return more.length > 0 || !served || room === '' ? undefined : room
}

/** A request the wildcard route took for a path no route of ours serves. */
function unservedPath (request: FastifyRequest): boolean {
  const path = (request.params as { '*'?: unknown })['*']
  return typeof path === 'string' && roomOfPath(path, request.method) === undefined
}

/**
 * Answer with an error's status in Fastify's shape, as a body: an Error sent
 * from inside an error handler goes on to the app's own error handler, which
 * may log it as a failure or reshape it.
 */
export function answer (reply: FastifyReply, error: { statusCode?: number, code?: string, message: string }): void {
  const status = error.statusCode ?? 500
  void reply.code(status).send({ statusCode: status, code: error.code ?? 'INTERNAL', error: STATUS_CODES[status] ?? 'Error', message: error.message })
}

/**
 * Errors in Fastify's shape. A bad room name in the path is `INVALID_ROOM`, as
 * on the socket; protocol errors keep their code with an HTTP status; anything
 * unexpected (an adapter's own error text, say) is logged and answered with a
 * generic 500, so no internal detail reaches a client.
 */
function roomErrors (this: FastifyInstance, error: Error & { validationContext?: string, statusCode?: number }, request: FastifyRequest, reply: FastifyReply): void {
  if (error.validationContext === 'params') {
    const room = (request.params as { room?: unknown }).room
    answer(reply, new errorCodes.INVALID_ROOM(invalidRoomMessage(room)))
    return
  }
  if ((error as { code?: string }).code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
    // The same limit as a frame's, so the same code as on the socket.
    answer(reply, new errorCodes.PAYLOAD_TOO_LARGE(httpMessages.bodyTooLarge))
    return
  }
  restErrors(error, request, reply)
}

const restErrors = answerErrors('a REST request')

/**
 * The error handler of the socket's path and of the metrics route: the
 * contract's answers (401, 403, 503...) as they are, whatever the app's own
 * error handler would make of them; anything else (an error of the app's
 * own hooks, such as a load-shedding 503) goes on to the app's error
 * handler, as on the app's own routes.
 */
export function contractErrors (error: unknown, _request: FastifyRequest, reply: FastifyReply): void {
  if (!isContractError(error)) throw error
  answer(reply, error)
}

/**
 * The error handler of the admin view, whose guard is the plugin's to run, and
 * the end of REST's: the contract's answers as they are, a refusal (the
 * plugin's, or a guard's 4xx) in Fastify's shape, anything else logged as
 * `what` failing and answered with a generic 500.
 */
export function answerErrors (what: string): (error: unknown, request: FastifyRequest, reply: FastifyReply) => void {
  return (error, request, reply) => {
    if (isContractError(error)) {
      answer(reply, error)
      return
    }
    if (sendRefusal(error, reply)) return
    request.log.error({ err: error }, `fastify-rooms: ${what} failed`)
    answer(reply, new errorCodes.INTERNAL())
  }
}

/**
 * Answer a refusal in Fastify's error shape: the plugin's own (UNAUTHORIZED,
 * FORBIDDEN...) or any 4xx an app's guard threw, Error or not. False for
 * anything else, which the caller logs and answers with a generic 500.
 */
export function sendRefusal (error: unknown, reply: FastifyReply): boolean {
  if (isRoomsError(error)) {
    const http = httpErrorOf(error)
    if (http === undefined) return false
    answer(reply, http)
    return true
  }
  if (typeof error !== 'object' || error === null || !isClientStatus(error)) return false
  // An app's guard may refuse with any error of a 4xx status (Fastify reads `status` too): without a code, its status names it.
  const { statusCode, status, code, message } = error as { statusCode?: unknown, status?: unknown, code?: unknown, message?: unknown }
  const number = Number(statusCode ?? status)
  const name = STATUS_CODES[number] ?? 'Error'
  // As Fastify's own handler does: a Basic-auth 401 needs its WWW-Authenticate, a 429 its Retry-After.
  const headers = (error as { headers?: unknown }).headers
  if (typeof headers === 'object' && headers !== null) void reply.headers(headers as Record<string, string>)
  answer(reply, { statusCode: number, code: typeof code === 'string' ? code : name.toUpperCase().replace(/[^A-Z]+/g, '_'), message: typeof message === 'string' ? message : name })
  return true
}

/** An error of a 4xx status, given as `statusCode` or (as http-errors and Fastify allow) `status`. */
function isClientStatus (error: { statusCode?: unknown, status?: unknown }): boolean {
  const status = Number(error.statusCode ?? error.status)
  return Number.isInteger(status) && status >= 400 && status < 500
}

function isRead (request: FastifyRequest): boolean {
  return request.method === 'GET' || request.method === 'HEAD'
}
