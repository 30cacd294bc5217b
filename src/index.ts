import { randomBytes } from 'node:crypto'
import type { Server } from 'node:http'
import type { Duplex } from 'node:stream'
import fp from 'fastify-plugin'
import websocket from '@fastify/websocket'
import type { FastifyPluginAsync } from 'fastify'
import { memoryAdapter } from './adapters/memory.js'
import type { HistoryPage, RoomInfo, RoomPage, RoomQuery } from './adapters/adapter.js'
import { Connection, type ConnectionContext } from './connection.js'
import { RoomsError } from './errors.js'
import { resolveOptions, type RoomData, type RoomsOptions } from './options.js'
import { page } from './page.js'
import { checkPublish, compileDataValidator, invalidRoomMessage, isRoomName } from './protocol.js'
import { Registry } from './registry.js'
import { DEFAULT_PAGE, routes } from './routes.js'
import { upgradeGuard } from './upgrade.js'

/** The server API, decorated as `app.rooms`. */
export interface RoomsApi {
  /** Publish to a room as the server (the `message` has no `from`). Resolves with its offset. */
  broadcast (room: string, data: RoomData): Promise<number>
  /** Push a `direct` frame to one connection. Resolves false when no such connection is open. */
  send (connectionId: string, data: unknown): Promise<boolean>
  /** Rooms with members, sorted by name, a page at a time. */
  list (query?: Partial<RoomQuery>): Promise<RoomPage>
  /** A room with its members, or null when nobody is in it. */
  get (room: string): Promise<RoomInfo | null>
  /** Stored messages of a room after `after`, oldest first; null when the room has neither members nor history. */
  history (room: string, after?: number, limit?: number): Promise<HistoryPage | null>
  /** Open connections of this registration on this node. */
  readonly connections: number
}

declare module 'fastify' {
  interface FastifyInstance {
    rooms: RoomsApi
  }
}

/** Servers on which this package registered @fastify/websocket, to catch a second, conflicting registration. */
const ownWebsocket = new WeakSet<Server>()

const roomsPlugin: FastifyPluginAsync<RoomsOptions> = async (app, input) => {
  const options = resolveOptions(input)
  if (app.hasDecorator('rooms')) {
    throw new Error('fastify-rooms: already registered in this context; register it again inside its own encapsulated plugin (app.register(async (child) => child.register(rooms, ...))).')
  }
  const adapter = options.adapter ?? memoryAdapter()
  const registry = new Registry(adapter, { log: app.log, maxRoomsPerConnection: options.maxRoomsPerConnection, presenceEvents: options.presenceEvents })
  const nodeId = randomBytes(4).toString('hex')
  await adapter.start(registry, {
    log: app.log,
    nodeId,
    maxMembersPerRoom: options.maxMembersPerRoom,
    historySize: options.historySize,
    historyTtlMs: options.historyTtlMs,
    maxHistoryRooms: options.maxHistoryRooms,
    maxHistoryBytes: options.maxHistoryBytes
  })

  const ctx: ConnectionContext = {
    registry,
    options,
    log: app.log,
    validateData: options.dataSchema === undefined ? undefined : compileDataValidator(options.dataSchema)
  }
  const open = new Set<Connection>()
  let allClosed: (() => void) | undefined
  const state = { closing: false, connections: () => open.size }
  let sequence = 0

  const heartbeat = setInterval(() => {
    for (const connection of open) connection.heartbeat()
  }, options.heartbeatMs)

  // A refused upgrade's socket has no HTTP parser to end it; a client that
  // keeps it open would hold it (and server.close()) for ever. During shutdown
  // Fastify itself answers 503, after the listeners that run before this one.
  const endRefusedUpgrade = (_request: unknown, socket: Duplex): void => {
    if (state.closing) setImmediate(() => socket.end())
  }
  // Added before @fastify/websocket's own preClose, so clients get 1001 rather than a bare close.
  app.addHook('preClose', async () => {
    state.closing = true
    app.server.on('upgrade', endRefusedUpgrade)
    clearInterval(heartbeat)
    if (open.size === 0) return
    const closed = new Promise<void>((resolve) => { allClosed = resolve })
    for (const connection of open) connection.close(1001, 'Server shutting down')
    const timer = setTimeout(() => { for (const connection of open) connection.terminate() }, options.closeTimeoutMs)
    await closed
    clearTimeout(timer)
  })
  app.addHook('onClose', async () => {
    app.server.off('upgrade', endRefusedUpgrade)
    clearInterval(heartbeat)
    await registry.idle()
    await adapter.close()
  })

  if (!app.hasDecorator('websocketServer')) {
    if (ownWebsocket.has(app.server)) {
      throw new Error('fastify-rooms: to register the plugin in several encapsulated contexts, register @fastify/websocket once at the root first.')
    }
    ownWebsocket.add(app.server)
    await app.register(websocket, { options: { maxPayload: options.maxFrameBytes } })
  }

  /** A publish by the server (`broadcast`, REST): the same checks as a member's publish, no `from`. */
  async function serverPublish (room: string, data: unknown): Promise<number> {
    if (!isRoomName(room)) throw new RoomsError('INVALID_ROOM', invalidRoomMessage(room))
    return await registry.publish(room, { data: checkPublish(data, room, options.maxMessageBytes, ctx.validateData) })
  }

  const guard = upgradeGuard(options, state)
  app.get(options.path, {
    websocket: true,
    preValidation: guard.hook,
    onResponse: async (request) => {
      // Only refusals get here (an accepted upgrade is hijacked): end their socket, see above.
      if (request.headers.upgrade !== undefined) request.raw.socket.end()
    }
  }, (socket, request) => {
    const connection = new Connection(socket, request, `${nodeId}-${(++sequence).toString(36)}`, guard.userOf(request), ctx)
    open.add(connection)
    socket.on('close', () => {
      open.delete(connection)
      if (open.size === 0) allClosed?.()
    })
    connection.start()
  })

  if (options.rest) await app.register(routes, { prefix: options.prefix, registry, publish: options.restPublish === undefined ? undefined : { guard: options.restPublish, serverPublish, bodyLimit: options.maxFrameBytes } })
  if (options.demo !== false) {
    await app.register(page, { prefix: options.demo === true ? '/' : options.demo, path: options.path, restPrefix: options.rest ? options.prefix : false })
  }

  const api: RoomsApi = {
    broadcast: serverPublish,
    async send (connectionId, data) {
      return await registry.sendDirect(connectionId, data)
    },
    async list (query = {}) {
      return await registry.list({ prefix: query.prefix, after: query.after, limit: query.limit ?? DEFAULT_PAGE })
    },
    async get (room) {
      return isRoomName(room) ? await registry.room(room) : null
    },
    async history (room, after = 0, limit = options.historySize) {
      return await registry.history(room, after, limit)
    },
    get connections () {
      return open.size
    }
  }
  app.decorate('rooms', api)
}

/**
 * fastify-rooms: realtime rooms over WebSocket, a REST room listing and a demo
 * chat page. `await app.register(rooms, options)`.
 */
const rooms = fp(roomsPlugin, { fastify: '5.x', name: 'fastify-rooms' })
export default rooms
export { rooms }

export { memoryAdapter, MemoryAdapter, type MemoryAdapterOptions } from './adapters/memory.js'
export { redisAdapter, RedisAdapter, type RedisAdapterOptions } from './adapters/redis.js'
export type { Adapter, AdapterConfig, AdapterListener, JoinResult, RoomInfo, RoomPage, RoomQuery, HistoryPage, StoredMessage } from './adapters/adapter.js'
export { RoomsError, forbidden, ERROR_CODES, type ErrorCode } from './errors.js'
export type { RoomsOptions, RoomsHooks, JoinContext, PublishContext, PublishVerdict, RoomsRegister, RoomData, Settings } from './options.js'
export * from './protocol.js'
