import { randomBytes } from 'node:crypto'
import type { IncomingMessage, Server } from 'node:http'
import type { Duplex } from 'node:stream'
import fp from 'fastify-plugin'
import websocket from '@fastify/websocket'
import type { FastifyPluginAsync, FastifySchema, RegisterOptions } from 'fastify'
import type { TSchema } from 'typebox'
import { memoryAdapter } from './adapters/memory.js'
import type { HistoryPage, RoomInfo, RoomPage, RoomQuery } from './adapters/adapter.js'
import { Connection, type ConnectionContext } from './connection.js'
import { errorCodes } from './errors.js'
import { Credentials } from './identity.js'
import { Metrics } from './metrics.js'
import { admin } from './admin.js'
import { resolveOptions, type RoomData, type RoomsOptions, type SchemaData } from './options.js'
import { page } from './page.js'
import { checkPublish, compileDataValidator, type Member } from './protocol.js'
import { Registry } from './registry.js'
import { releaseUpgrade, untrack } from './release.js'
import { ResumeTokens } from './resume.js'
import { RoomList } from './roomlist.js'
import { directFrame, historyPage, membersPage, roomName, roomQuery, text } from './arguments.js'
import { RESUME_PROTOCOL, SUBPROTOCOL } from './client/subprotocol.js'
import { DEFAULT_PAGE, answer, contractErrors, restAccess, routes } from './routes.js'
import { releaseHead, upgradeGuard } from './upgrade.js'

/**
 * The server API, decorated as `app.rooms`. `TData` types `broadcast`'s data:
 * `const chat: RoomsApi<Static<typeof Chat>> = app.rooms` gives the typed view.
 */
export interface RoomsApi<TData = RoomData> {
  /** Publish to a room as the server (the `message` has no `from`). Resolves with its offset. */
  broadcast (room: string, data: TData, options?: { ephemeral?: false }): Promise<number>
  /** An ephemeral broadcast: no offset, not stored, delivered to the members of the moment (typing, cursors). */
  broadcast (room: string, data: TData, options: { ephemeral: true }): Promise<undefined>
  /** Push a `direct` frame to one connection. Resolves false when no such connection is open. */
  send (connectionId: string, data: unknown): Promise<boolean>
  /** Rooms with members, sorted by name, a page at a time. */
  list (query?: Partial<RoomQuery>): Promise<RoomPage>
  /**
   * A room with one page of its members (by id, `membersLimit` of them after
   * `membersAfter`; default the first `membersPageSize`), or null when nobody is in it.
   * A bad name throws `INVALID_ROOM`, a page size outside 1-1000 `FST_ROOMS_INVALID_ARGUMENT`.
   */
  get (room: string, members?: { membersAfter?: string, membersLimit?: number }): Promise<RoomInfo | null>
  /** Stored messages of a room after `after`, oldest first; null when the room has neither members nor history. */
  history (room: string, after?: number, limit?: number): Promise<HistoryPage | null>
  /**
   * Close one connection, on whichever node holds it, with 4003 and `reason`.
   * Resolves true when it was open on this node or its node got the command
   * (as `send` does), false when no node holds it.
   */
  disconnect (connectionId: string, reason?: string): Promise<boolean>
  /**
   * Close every connection of a user, on every node, with 4003 and `reason`.
   * Resolves with how many this node closed (other nodes close theirs too).
   */
  disconnectUser (userId: string, reason?: string): Promise<number>
  /**
   * Take one connection out of a room without closing it: it gets
   * `{type:'left', room, reason}`, the others see it leave. Resolves as `disconnect`
   * does; false also when this node holds it and it is not in the room.
   */
  removeFromRoom (connectionId: string, room: string, reason?: string): Promise<boolean>
  /**
   * Take every connection of a user out of a room, on every node. Resolves with
   * how many this node removed. To keep them out, make `onJoin` refuse them.
   */
  removeUserFromRoom (userId: string, room: string, reason?: string): Promise<number>
  /**
   * Put a connection into a room, on whichever node holds it, as if it had sent
   * `join`: it gets an unsolicited `joined`, the others see it in presence;
   * `onJoin` is not asked. Resolves true when it is in the room now (or its node
   * got the command), false when no node holds it; rejects with `RoomsError`
   * `TOO_MANY_ROOMS`/`ROOM_FULL` when it is on this node and a limit refuses it.
   */
  join (connectionId: string, room: string): Promise<boolean>
  /**
   * Take a connection out of a room as if it had sent `leave`: it gets an
   * unsolicited `{type:'left', room}` (no reason). Resolves as `removeFromRoom`.
   */
  leave (connectionId: string, room: string): Promise<boolean>
  /**
   * Push a `direct` frame to every connection of a user on every node.
   * Resolves with how many this node reached (other nodes send theirs too).
   */
  sendToUser (userId: string, data: unknown): Promise<number>
  /** Open connections of this registration on this node, including those still to authenticate. */
  readonly connections: number
}

/** Marks the plugin's type, so that `app.register` can type its options from `dataSchema` (below). */
declare const ROOMS_PLUGIN: unique symbol

/**
 * The type of the plugin, `rooms`. Its options are typed by the overload of
 * `app.register` below; the `never`s make Fastify's own overloads refuse what
 * that one refused, rather than accept it untyped.
 */
export type RoomsPlugin = FastifyPluginAsync<RoomsOptions<never, never>> & { readonly [ROOMS_PLUGIN]: true }

declare module 'fastify' {
  interface FastifyInstance {
    rooms: RoomsApi
  }
  // One more overload of `app.register`, for this plugin only: options passed
  // inline get `data` typed from their `dataSchema` and `user` from what
  // `authenticate`/`verifyToken` return, with no global declaration.
  interface FastifyRegister<T, RawServer, TypeProviderDefault, LoggerDefault> {
    <S extends TSchema = TSchema, U extends Member = Member>(plugin: RoomsPlugin, opts?: RoomsOptions<SchemaData<S>, U> & { dataSchema?: S } & RegisterOptions): T
  }
}

/** The 503 body of an upgrade refused during shutdown, in Fastify's error shape. */
const SHUTTING_DOWN_BODY = JSON.stringify({ statusCode: 503, code: 'SHUTTING_DOWN', error: 'Service Unavailable', message: new errorCodes.SHUTTING_DOWN().message })

/** A path under a context's prefix, joined as Fastify joins them: `/chat/` and `/ws` make `/chat/ws`. */
function underPrefix (prefix: string, path: string): string {
  return prefix.endsWith('/') && path.startsWith('/') ? prefix + path.slice(1) : prefix + path
}

function pathOf (url: string | undefined): string {
  const end = url?.indexOf('?') ?? -1
  return end === -1 ? url ?? '' : (url as string).slice(0, end)
}

/**
 * The subprotocol to answer with: ours when offered. Never the resume token's
 * (ws would pick the first offered by default): it would go back in the
 * response's headers.
 */
function pickProtocol (offered: Set<string>): string | false {
  if (offered.has(SUBPROTOCOL)) return SUBPROTOCOL
  for (const protocol of offered) if (!protocol.startsWith(RESUME_PROTOCOL)) return protocol
  return false
}

/** Servers on which this package registered @fastify/websocket, to catch a second, conflicting registration. */
const ownWebsocket = new WeakSet<Server>()
/** The WebSocket servers of the @fastify/websocket registrations this package made: they run its default errorHandler. */
const ownWebsocketServers = new WeakSet<object>()

const roomsPlugin: FastifyPluginAsync<RoomsOptions> = async (app, input) => {
  const options = resolveOptions(input)
  if (app.hasDecorator('rooms')) {
    throw new errorCodes.FST_ROOMS_ALREADY_REGISTERED()
  }
  const adapter = options.adapter ?? memoryAdapter()
  const metrics = options.metrics === undefined ? undefined : await Metrics.create(options.metrics)
  // At once: an app closed after a registration that failed further on frees its registry for another.
  if (metrics !== undefined) app.addHook('onClose', async () => { metrics.release() })
  // The admin view's rates come from the same tallies: it counts even when no metrics are served.
  const counters = metrics ?? (options.admin === undefined ? undefined : await Metrics.create({ path: false, rooms: [], register: undefined, preHandler: undefined }))
  const registry = new Registry(adapter, {
    log: app.log,
    maxRoomsPerConnection: options.maxRoomsPerConnection,
    presenceEvents: options.presenceEvents,
    presenceIntervalMs: options.presenceIntervalMs,
    presenceGraceMs: options.presenceGraceMs,
    membersPageSize: options.membersPageSize,
    maxBufferedBytes: options.maxBufferedBytes,
    metrics: counters
  })
  const nodeId = randomBytes(4).toString('hex')
  await adapter.start(registry, {
    log: app.log,
    nodeId,
    maxMembersPerRoom: options.maxMembersPerRoom,
    historySize: options.historySize,
    historyTtlMs: options.historyTtlMs,
    maxHistoryRooms: options.maxHistoryRooms,
    maxHistoryBytes: options.maxHistoryBytes,
    membersPageSize: options.membersPageSize,
    presenceEvents: options.presenceEvents,
    metrics
  })
  const resume = new ResumeTokens(options.resumeSecret ?? await adapter.secret?.())

  const roomList = new RoomList(adapter, { log: app.log, enabled: options.roomList ?? options.rest, intervalMs: options.roomListIntervalMs, pageSize: DEFAULT_PAGE })
  const credentials = new Credentials(options)
  const open = new Set<Connection>()
  let allClosed: (() => void) | undefined
  const ctx: ConnectionContext = {
    registry,
    options,
    log: app.log,
    validateData: options.dataSchema === undefined ? undefined : compileDataValidator(options.dataSchema),
    credentials,
    publicFields: new Set(options.publicUserFields),
    keepRequest: options.onJoin !== undefined || options.onPublish !== undefined || credentials.tokens ||
      options.onConnect !== undefined || options.onDisconnect !== undefined || options.onLeave !== undefined,
    onClosed (connection) {
      open.delete(connection)
      if (open.size === 0) allClosed?.()
    },
    metrics: counters,
    roomList,
    pipelinePublishes: adapter.orderedPublishes === true && options.onPublish === undefined,
    utf8Checked: false
  }
  const state = { closing: false, connections: () => open.size }
  // Where the socket and REST routes are served, under the prefix of the context that registered the plugin: for the pages and the shutdown answer.
  const wsPath = underPrefix(app.prefix, options.path)
  const restPrefix = underPrefix(app.prefix, options.prefix)
  let sequence = 0

  // Connections a round found silent, until their verdict: a round that runs before it leaves them alone.
  const suspects = new Set<Connection>()
  const heartbeat = setInterval(() => {
    const silent: Connection[] = []
    for (const connection of open) if (!suspects.has(connection) && !connection.heartbeat()) silent.push(connection)
    if (silent.length === 0) return
    for (const connection of silent) suspects.add(connection)
    // Two turns later, after two reads of the sockets: a pong that came while
    // the process was busy (and a ping the busy process had not read yet, when
    // the peer is in the same process) is counted before anyone is cut.
    setImmediate(() => setImmediate(() => {
      for (const connection of silent) {
        suspects.delete(connection)
        connection.missedHeartbeat()
      }
    }))
  }, options.heartbeatMs)

  // From the moment app.close() starts, Fastify's router answers every request
  // with a bare 503 and, once @fastify/websocket has let go of the server,
  // nobody answers an upgrade at all. Upgrades to our path get the contract's
  // 503 SHUTTING_DOWN instead; any other upgrade's socket is ended, since it
  // has no HTTP parser to end it and a client holding it would hold
  // server.close() for ever.
  const shuttingDown = `HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(SHUTTING_DOWN_BODY)}\r\n\r\n${SHUTTING_DOWN_BODY}`
  const refuseUpgrade = (request: IncomingMessage, socket: Duplex): void => {
    if (!state.closing) return
    if (pathOf(request.url) === wsPath) socket.end(shuttingDown)
    else setImmediate(() => socket.end())
  }
  // Added before @fastify/websocket's own preClose, so clients get 1001 rather than a bare close.
  app.addHook('preClose', async () => {
    state.closing = true
    registry.shutdown()
    app.server.prependListener('upgrade', refuseUpgrade)
    clearInterval(heartbeat)
    if (open.size === 0) return
    const closed = new Promise<void>((resolve) => { allClosed = resolve })
    for (const connection of open) connection.close(1001, 'Server shutting down')
    const timer = setTimeout(() => { for (const connection of open) connection.terminate() }, options.closeTimeoutMs)
    await closed
    clearTimeout(timer)
  })
  app.addHook('onClose', async () => {
    app.server.off('upgrade', refuseUpgrade)
    clearInterval(heartbeat)
    await registry.close()
    await roomList.close()
    await adapter.close()
  })

  // Only a registration that adds @fastify/websocket itself has its preClose run before @fastify/websocket's.
  const closesFirst = !app.hasDecorator('websocketServer')
  if (closesFirst) {
    if (ownWebsocket.has(app.server)) {
      throw new errorCodes.FST_ROOMS_WEBSOCKET_NOT_AT_ROOT()
    }
    ownWebsocket.add(app.server)
    await app.register(websocket, { options: { maxPayload: options.maxFrameBytes, handleProtocols: pickProtocol } })
    ownWebsocketServers.add(app.websocketServer)
  }
  // Connection.onSocketError stands in for @fastify/websocket's default
  // errorHandler only; an application's own errorHandler keeps its listener.
  const onSocketError = ownWebsocketServers.has(app.websocketServer) ? Connection.onSocketError : undefined
  // An app's own server may skip ws's UTF-8 check; unknown counts as skipped.
  ctx.utf8Checked = (app.websocketServer as { options?: { skipUTF8Validation?: unknown } }).options?.skipUTF8Validation === false

  /** A publish by the server (`broadcast`, REST): the same checks as a member's publish, no `from`. */
  async function serverPublish (room: string, data: unknown, ephemeral = false): Promise<number | undefined> {
    roomName(room)
    return await registry.publish(room, { data: checkPublish(data, room, options.maxMessageBytes, ctx.validateData), ephemeral })
  }

  const guard = upgradeGuard(options, credentials, state, resume)
  app.route({
    method: 'GET',
    url: options.path,
    // `wsHandler` rather than `websocket: true`, which answers a plain GET with an empty 404: one that
    // passed every check of an upgrade gets 426 in Fastify's shape, so a page that repeats its refused
    // upgrade as a GET (to read why) learns that nothing refused it.
    schema: { hide: true } as FastifySchema,
    handler: async (request, reply) => {
      // HTTP/2 forbids the header (Node throws on it); sent, not thrown: an answer, not an error to log.
      if (request.raw.httpVersionMajor === 1) void reply.header('upgrade', 'websocket')
      answer(reply, new errorCodes.UPGRADE_REQUIRED())
      return reply
    },
    preValidation: guard.hook,
    preHandler: guard.ready,
    // The contract's refusals (401, 403, 503), not what the app's own error handler makes of them.
    errorHandler: contractErrors,
    onResponse: async (request) => {
      // Only refusals get here (an accepted upgrade is hijacked): end their socket, see above.
      guard.release(request)
      if (request.headers.upgrade !== undefined) request.raw.socket.end()
    },
    wsHandler: (socket, request) => {
      const identity = guard.takeIdentity(request)
      const connection = new Connection(socket, request, `${nodeId}-${(++sequence).toString(36)}`, ctx)
      releaseUpgrade(socket, onSocketError)
      if (!closesFirst) untrack(app.websocketServer, socket)
      if (ctx.keepRequest) releaseHead(request)
      open.add(connection)
      connection.start(identity)
    }
  })

  if (options.rest) await app.register(routes, { prefix: options.prefix, registry, access: restAccess(options, credentials), membersPageSize: options.membersPageSize, ownPrefix: options.prefix.replace(/\/+$/, '') !== '', publish: options.restPublish === undefined ? undefined : { guard: options.restPublish, serverPublish: async (room, data) => await serverPublish(room, data) as number, bodyLimit: options.maxFrameBytes } })
  if (metrics !== undefined) await metrics.serve(app, { connections: () => open.size, registry }, restAccess(options, credentials))
  if (options.demo !== false) {
    // Without its trailing slash ('/chat/' is '/chat'): the page answers both `/chat/` and, with a redirect to it, `/chat`.
    await app.register(page, { prefix: options.demo === true ? '' : options.demo.replace(/\/+$/, ''), path: wsPath, restPrefix: options.rest ? restPrefix : false })
  }
  if (options.admin !== undefined && counters !== undefined) {
    await app.register(admin, {
      prefix: options.admin.path,
      guard: options.admin.preHandler,
      access: restAccess(options, credentials),
      tokenOnly: credentials.tokens && options.authenticate === undefined,
      counters,
      connections: () => open.size,
      localCounts: () => registry.localCounts(),
      wsPath,
      restPrefix
    })
  }

  const api: RoomsApi = {
    async broadcast (room: string, data: RoomData, options?: { ephemeral?: boolean }): Promise<never> {
      return await serverPublish(room, data, options?.ephemeral === true) as never
    },
    async send (connectionId, data) {
      const id = text(connectionId, 'connectionId')
      directFrame(data)
      return await registry.sendDirect(id, data)
    },
    async list (query = {}) {
      return await registry.list(roomQuery(query, DEFAULT_PAGE))
    },
    async get (room, members = {}) {
      return await registry.room(roomName(room), membersPage(members, options.membersPageSize))
    },
    async history (room, after = 0, limit = options.historySize) {
      const range = historyPage(after, limit)
      return await registry.history(roomName(room), range.after, range.limit)
    },
    async disconnect (connectionId, reason = DISCONNECTED) {
      return await adapter.control({ kind: 'disconnect', target: { connectionId: text(connectionId, 'connectionId') }, reason: text(reason, 'reason') }) > 0
    },
    async disconnectUser (userId, reason = DISCONNECTED) {
      return await adapter.control({ kind: 'disconnect', target: { userId: text(userId, 'userId') }, reason: text(reason, 'reason') })
    },
    async removeFromRoom (connectionId, room, reason = REMOVED) {
      return await adapter.control({ kind: 'remove', target: { connectionId: text(connectionId, 'connectionId') }, room: roomName(room), reason: text(reason, 'reason') }) > 0
    },
    async removeUserFromRoom (userId, room, reason = REMOVED) {
      return await adapter.control({ kind: 'remove', target: { userId: text(userId, 'userId') }, room: roomName(room), reason: text(reason, 'reason') })
    },
    async join (connectionId, room) {
      const id = text(connectionId, 'connectionId')
      const name = roomName(room)
      return await registry.joinLocal(id, name) ?? await adapter.control({ kind: 'join', target: { connectionId: id }, room: name }) > 0
    },
    async leave (connectionId, room) {
      return await adapter.control({ kind: 'remove', target: { connectionId: text(connectionId, 'connectionId') }, room: roomName(room) }) > 0
    },
    async sendToUser (userId, data) {
      return await adapter.control({ kind: 'direct', target: { userId: text(userId, 'userId') }, frame: directFrame(data) })
    },
    get connections () {
      return open.size
    }
  }
  app.decorate('rooms', api)
}

const DISCONNECTED = 'Disconnected by the server.'
const REMOVED = 'Removed from the room by the server.'

/**
 * fastify-rooms: realtime rooms over WebSocket, a REST room listing and a demo
 * chat page. `await app.register(rooms, options)`.
 */
const rooms = fp(roomsPlugin, { fastify: '5.x', name: 'fastify-rooms' }) as unknown as RoomsPlugin
export default rooms
export { rooms }

export { memoryAdapter, MemoryAdapter, type MemoryAdapterOptions, type MemoryAdapterStats } from './adapters/memory.js'
export { redisAdapter, RedisAdapter, type RedisAdapterOptions } from './adapters/redis.js'
export type { Adapter, AdapterConfig, AdapterListener, RoomCountWatcher, ControlCommand, ControlTarget, JoinResult, MembersQuery, PresenceChange, PublishReceipt, RoomInfo, RoomPage, RoomQuery, HistoryPage, StoredMessage } from './adapters/adapter.js'
export { RoomsError, forbidden, errorCodes, ERROR_CODES, UNAUTHORIZED_REASONS, type ErrorCode, type UnauthorizedReason } from './errors.js'
export type {
  RoomsOptions, RoomsHooks, TokenIdentity, ConnectContext, DisconnectContext, JoinContext, LeaveContext, LeaveCause, PublishContext, PublishVerdict,
  RestPublishGuard, RouteGuard, RoomsRegister, RoomData, SchemaData, Settings
} from './options.js'
export type { MetricsOptions, MetricsGuard, AdapterMetrics, LinkMetrics } from './metrics.js'
export type { AdminOptions, AdminGuard } from './admin.js'
export type { AdminStats } from './admin-stats.js'
// The wire contract as types, for apps that speak it without the SDK; the schemas and codecs stay internal.
export { PROTOCOL_VERSION } from './protocol.js'
export type {
  Member, RoomName, RequestId, Position, EncodedPublish,
  ClientFrame, JoinFrame, LeaveFrame, PublishFrame, MembersFrame, PingFrame, AuthFrame,
  ServerFrame, WelcomeFrame, AuthenticatedFrame, JoinedFrame, LeftFrame, AckFrame, MembersPageFrame, PongFrame, MessageFrame, PresenceFrame, DirectFrame, ErrorFrame,
  RoomsFrame, RoomsPageFrame, RoomCountsFrame, RoomCount, HistoryFrame, HistoryPageFrame
} from './protocol.js'
