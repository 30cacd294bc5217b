import Type, { type Static, type TSchema } from 'typebox'
import { Compile } from 'typebox/compile'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction, RouteGenericInterface } from 'fastify'
import type { Adapter } from './adapters/adapter.js'
import { errorCodes } from './errors.js'
import { describeErrors, type Member } from './protocol.js'
import { resolveMetricsOptions, type MetricsOptions, type ResolvedMetricsOptions } from './metrics.js'
import { resolveAdminOptions, type AdminOptions, type ResolvedAdminOptions } from './admin.js'
import type { PublishBody, RoomParams } from './routes.js'

/**
 * Declaration-merging hook for the type of published `data`. Apps that pass a
 * `dataSchema` add `interface RoomsRegister { data: Static<typeof MySchema> }`
 * inside `declare module 'fastify-rooms'`, and every hook and `app.rooms`
 * method is typed with it.
 */
// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface RoomsRegister {}

/** The type of `data`: from `RoomsRegister` when the app declared it, else unknown. */
export type RoomData = RoomsRegister extends { data: infer D } ? D : unknown

/** Node runs a timer of more than this (about 24.8 days) after 1 ms, with a warning. */
export const MAX_TIMER_MS = 2 ** 31 - 1

/** The plain (non-function) options, with their defaults: the one source of their types. */
export const SettingsSchema = Type.Object({
  path: Type.String({ pattern: '^/', default: '/ws' }),
  prefix: Type.String({ pattern: '^/', default: '/rooms' }),
  rest: Type.Boolean({ default: true }),
  demo: Type.Union([Type.Boolean(), Type.String({ pattern: '^/' })], { default: false }),
  heartbeatMs: Type.Integer({ minimum: 10, maximum: MAX_TIMER_MS, default: 25_000 }),
  maxMessageBytes: Type.Integer({ minimum: 1, default: 64 * 1024 }),
  maxFrameBytes: Type.Integer({ minimum: 64, default: 256 * 1024 }),
  maxRoomsPerConnection: Type.Integer({ minimum: 1, default: 100 }),
  maxMembersPerRoom: Type.Integer({ minimum: 1, default: 10_000 }),
  maxConnections: Type.Integer({ minimum: 1, default: 10_000 }),
  maxBufferedBytes: Type.Integer({ minimum: 1024, default: 4 * 1024 * 1024 }),
  maxFramesPerSecond: Type.Number({ exclusiveMinimum: 0, default: 100 }),
  frameBurst: Type.Integer({ minimum: 1, default: 200 }),
  historySize: Type.Integer({ minimum: 0, default: 100 }),
  historyTtlMs: Type.Integer({ minimum: 1, default: 5 * 60_000 }),
  maxHistoryRooms: Type.Integer({ minimum: 1, default: 10_000 }),
  maxHistoryBytes: Type.Integer({ minimum: 0, default: 64 * 1024 * 1024 }),
  closeTimeoutMs: Type.Integer({ minimum: 0, maximum: MAX_TIMER_MS, default: 2_000 }),
  presenceEvents: Type.Boolean({ default: true }),
  presenceIntervalMs: Type.Integer({ minimum: 0, maximum: 60_000, default: 100 }),
  presenceGraceMs: Type.Integer({ minimum: 0, maximum: 600_000, default: 5_000 }),
  membersPageSize: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
  /** Answer `rooms` frames (pages and live count subscriptions); by default whenever the REST listing is on (`rest`). */
  roomList: Type.Optional(Type.Boolean()),
  /** A room list subscriber gets at most one `counts` frame per this many ms. */
  roomListIntervalMs: Type.Integer({ minimum: 10, maximum: 60_000, default: 250 }),
  allowedOrigins: Type.Optional(Type.Array(Type.String())),
  authTimeoutMs: Type.Integer({ minimum: 10, maximum: MAX_TIMER_MS, default: 10_000 }),
  publicRest: Type.Boolean({ default: false }),
  publicUserFields: Type.Array(Type.String({ minLength: 1 }), { default: ['id', 'name'] }),
  /**
   * Signs anonymous users' resume tokens. By default the adapter's shared
   * secret (Redis), or a random one per process (memory): set it so that
   * guests keep their id across a restart of a memory-adapter server.
   */
  resumeSecret: Type.Optional(Type.String({ minLength: 16 }))
})

export type Settings = Static<typeof SettingsSchema>

/** What every connection hook is told: which connection, whose, and how it connected. */
export interface ConnectContext<TUser extends Member = Member> {
  /** The connection; `''` when a REST request about a room is being authorized (`onJoin` only). */
  connectionId: string
  /** The full user (all its fields, whatever `publicUserFields` shows others). */
  user: TUser
  /** The upgrade request of the connection, or the REST request (headers, query, your decorations). */
  request: FastifyRequest
}

/** What `onJoin` is asked about. */
export interface JoinContext<TUser extends Member = Member> extends ConnectContext<TUser> {
  room: string
}

/** What `onPublish` is asked about. */
export interface PublishContext<TData = RoomData, TUser extends Member = Member> extends JoinContext<TUser> {
  data: TData
}

/**
 * How a connection's membership of a room ended: it sent `leave`, the server
 * took it out (`removeFromRoom`, `removeUserFromRoom`, `app.rooms.leave`), or
 * the connection closed (after its grace time when it dropped).
 */
export type LeaveCause = 'leave' | 'removed' | 'closed'

/** What `onLeave` is told. */
export interface LeaveContext<TUser extends Member = Member> extends JoinContext<TUser> {
  cause: LeaveCause
}

/** What `onDisconnect` is told: the close code and reason as the server saw them (1006 for a cut without a close frame). */
export interface DisconnectContext<TUser extends Member = Member> extends ConnectContext<TUser> {
  code: number
  reason: string
}

/** A notification hook: what it returns is ignored, a throw or rejection is logged. */
type Notify<C> = (ctx: C) => unknown

/** What `verifyToken` resolves with: the user, and when the token stops being valid. */
export interface TokenIdentity<TUser extends Member = Member> {
  user: TUser
  /** Epoch ms; at this time a connection that did not send a fresh token is closed with 4001. */
  expiresAt?: number | undefined
}

/**
 * Hooks the app passes as options. `TData` is the type of published `data`
 * (from `dataSchema`), `TUser` the user `authenticate`/`verifyToken` return.
 */
export interface RoomsHooks<TData = RoomData, TUser extends Member = Member> {
  /**
   * Identify the user of an upgrade (or REST) request from its cookie or
   * headers. Return `{ id, name, ...extra }`; throw to refuse with 401. Return
   * nothing to refuse with 401, or, when `verifyToken` is set, to let the
   * connection authenticate in band with a token instead.
   */
  authenticate?: (request: FastifyRequest) => TUser | null | undefined | Promise<TUser | null | undefined>
  /**
   * Verify a token: the one a client sends in its first frame (`auth`), a
   * refresh, or a REST request's `Authorization: Bearer`. Resolve with
   * `{ user, expiresAt? }`; throw to refuse (the client gets `UNAUTHORIZED`).
   * With it set, a connection may connect without credentials and authenticate
   * in band within `authTimeoutMs`.
   */
  verifyToken?: (token: string, request: FastifyRequest) => TokenIdentity<TUser> | Promise<TokenIdentity<TUser>>
  /** Authorize a join: return `false` or throw `forbidden(msg)` to refuse with `FORBIDDEN`. */
  onJoin?: (ctx: JoinContext<TUser>) => boolean | undefined | void | Promise<boolean | undefined | void>
  /**
   * Authorize or transform a publish: return `false` or throw `forbidden(msg)`
   * to refuse; return `{ data }` to publish other data instead.
   */
  onPublish?: (ctx: PublishContext<TData, TUser>) => PublishVerdict<TData> | Promise<PublishVerdict<TData>>
  /** A connection is authenticated and its `welcome` written. Notification only. */
  onConnect?: Notify<ConnectContext<TUser>>
  /** An authenticated connection closed. Notification only; called before the `onLeave` of its rooms. */
  onDisconnect?: Notify<DisconnectContext<TUser>>
  /** A connection's membership of a room (one that got `joined`) ended; see `cause`. Notification only. */
  onLeave?: Notify<LeaveContext<TUser>>
}

export type PublishVerdict<TData = RoomData> = boolean | undefined | void | { data: TData }

/**
 * A Fastify preHandler guarding one of the plugin's HTTP routes (async, plain,
 * or calling `done`): it throws, replies or calls `done(err)` to refuse, e.g.
 * with a 401; returning `false` refuses with 403. `Route` types the request
 * as the route's schema has already checked it.
 */
export type RouteGuard<Route extends RouteGenericInterface = RouteGenericInterface> = (this: FastifyInstance, request: FastifyRequest<Route>, reply: FastifyReply, done: HookHandlerDoneFunction) => unknown

/**
 * Turns on `POST {prefix}/:room/messages` and authorizes it. It runs after the
 * route's schema, so `request.params.room` is a valid room name and
 * `request.body.data` is there (not yet checked against `dataSchema`).
 */
export type RestPublishGuard = RouteGuard<{ Params: Static<typeof RoomParams>, Body: Static<typeof PublishBody> }>

/**
 * Options of `app.register(rooms, options)`; every field is optional. Passed
 * inline to `app.register`, `data` in the hooks is `Static<typeof dataSchema>`
 * and `user` what `authenticate` or `verifyToken` returns.
 */
export type RoomsOptions<TData = RoomData, TUser extends Member = Member> = Partial<Settings> & RoomsHooks<TData, TUser> & {
  /** Where cluster-wide state lives: `memoryAdapter()` (default) or `redisAdapter(...)`. */
  adapter?: Adapter
  /** A TypeBox schema every published `data` must match (`INVALID_DATA`). */
  dataSchema?: TSchema
  /** Turns on the REST publish route, guarded by this preHandler; off when absent. */
  restPublish?: RestPublishGuard
  /** Prometheus metrics at an opt-in route (`true`: at `/metrics`); off by default. */
  metrics?: boolean | MetricsOptions
  /** An admin page with rooms, members and message rates, at an opt-in guarded route; off by default. */
  admin?: boolean | AdminOptions
}

/** The data type a `dataSchema` gives: `Static<S>`, or `RoomData` when no schema says more. */
export type SchemaData<S extends TSchema> = TSchema extends S ? RoomData : Static<S>

export type ResolvedOptions = Settings & RoomsHooks<unknown> & { adapter?: Adapter, dataSchema?: TSchema, restPublish?: RestPublishGuard, metrics?: ResolvedMetricsOptions | undefined, admin?: ResolvedAdminOptions | undefined }

const settingsValidator = Compile(SettingsSchema)
type FastifyRegisterOptions = { logLevel?: unknown, logSerializers?: unknown }
const ADAPTER_METHODS = ['start', 'close', 'publish', 'join', 'leave', 'control', 'direct', 'room', 'rooms', 'history'] as const

function isAdapter (value: unknown): value is Adapter {
  return typeof value === 'object' && value !== null && ADAPTER_METHODS.every((name) => typeof (value as Record<string, unknown>)[name] === 'function')
}
const HOOKS = ['authenticate', 'verifyToken', 'onJoin', 'onPublish', 'onConnect', 'onDisconnect', 'onLeave', 'restPublish'] as const

/**
 * Fill defaults and check every option, so a mistake fails `app.register`
 * with a sentence naming the option rather than misbehaving later.
 */
export function resolveOptions (input: RoomsOptions<unknown> = {}): ResolvedOptions {
  // Fastify's own register options (`prefix` is ours as well) come with the plugin's.
  const { adapter, dataSchema, authenticate, verifyToken, onJoin, onPublish, onConnect, onDisconnect, onLeave, restPublish, metrics, admin, logLevel, logSerializers, ...plain } = input as RoomsOptions<unknown> & FastifyRegisterOptions
  // A misspelt option would otherwise be left at its default without a word.
  const unknown = Object.keys(plain).filter((name) => !Object.hasOwn(SettingsSchema.properties, name))
  if (unknown.length > 0) throw new errorCodes.FST_ROOMS_INVALID_OPTION(`${unknown.map((name) => `"${name}"`).join(', ')} ${unknown.length === 1 ? 'is not an option' : 'are not options'} of fastify-rooms.`)
  if (adapter !== undefined && !isAdapter(adapter)) {
    throw new errorCodes.FST_ROOMS_INVALID_OPTION('adapter must be an adapter object, such as memoryAdapter() or redisAdapter({ ... }) (called, not the function itself).')
  }
  const settings = settingsValidator.Default(structuredClone(plain))
  if (!settingsValidator.Check(settings)) {
    throw new errorCodes.FST_ROOMS_INVALID_OPTION(`${describeErrors(settingsValidator.Errors(settings), 'options')}.`)
  }
  for (const name of HOOKS) {
    if (input[name] !== undefined && typeof input[name] !== 'function') {
      throw new errorCodes.FST_ROOMS_INVALID_OPTION(`${name} must be a function.`)
    }
  }
  if (settings.maxFrameBytes <= settings.maxMessageBytes) {
    throw new errorCodes.FST_ROOMS_INVALID_OPTION('maxFrameBytes must be larger than maxMessageBytes, or a full message could not fit in a frame.')
  }
  if (!settings.publicUserFields.includes('id') || !settings.publicUserFields.includes('name')) {
    throw new errorCodes.FST_ROOMS_INVALID_OPTION('publicUserFields must include "id" and "name", the fields every member has.')
  }
  for (const origin of settings.allowedOrigins ?? []) {
    // Compared as they are with the Origin header, which browsers send in one form: an entry in another never matches.
    const written = origin === 'null' ? origin : originOf(origin)
    if (written !== origin) {
      throw new errorCodes.FST_ROOMS_INVALID_OPTION(`allowedOrigins: "${origin}" is not an origin as browsers send it: ${written === undefined ? 'write it as scheme://host[:port], such as "https://app.example.com"' : `write it as "${written}"`}.`)
    }
  }
  if (dataSchema !== undefined && (dataSchema === null || typeof dataSchema !== 'object')) {
    throw new errorCodes.FST_ROOMS_INVALID_OPTION('dataSchema must be a TypeBox schema.')
  }
  return { ...settings, adapter, dataSchema, authenticate, verifyToken, onJoin, onPublish, onConnect, onDisconnect, onLeave, restPublish, metrics: resolveMetricsOptions(metrics),
    admin: resolveAdminOptions(admin, { authenticated: authenticate !== undefined || verifyToken !== undefined, rest: settings.rest, roomList: settings.roomList ?? settings.rest }) }
}

/** An origin as a browser writes it in `Origin` (scheme, host and port, lower case, no default port); undefined when it has none. */
function originOf (text: string): string | undefined {
  let origin: string
  try {
    origin = new URL(text).origin
  } catch {
    return undefined
  }
  return origin === 'null' ? undefined : origin
}
