import Type, { type Static } from 'typebox'
import { Compile } from 'typebox/compile'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { Counter, Gauge, Histogram, Registry as PromRegistry } from 'prom-client'
import { ERROR_CODES, errorCodes, type ErrorCode } from './errors.js'
import { describeErrors, RoomName } from './protocol.js'
import { contractErrors, guardHook, type RestAccess } from './routes.js'
import type { RouteGuard } from './options.js'

/**
 * Prometheus metrics, opt-in. The hot paths (every frame in and out, every
 * fan-out) only add to plain numbers of a `Metrics` object, which exists only
 * when the app turned metrics on: with them off the cost is one property
 * check, and prom-client is never even loaded. prom-client's counters read
 * those numbers when scraped; the gauges read the registry then, so nothing
 * is counted twice.
 */

/** The plain part of the `metrics` option, with its defaults. */
export const MetricsSettingsSchema = Type.Object({
  /** Where the route serves the text format; `false` for no route (the app serves `register` itself). */
  path: Type.Union([Type.String({ pattern: '^/' }), Type.Literal(false)], { default: '/metrics' }),
  /** Rooms that get per-room series (a `room` label); no other room ever does. */
  rooms: Type.Array(RoomName, { default: [], maxItems: 1000 })
})

/** Guards the metrics route: run as `restPublish`'s guard is (throw, reply or `done(err)` refuses; so does `false`, with 403). */
export type MetricsGuard = RouteGuard

/** The `metrics` option as an object; `metrics: true` is `{}`. */
export type MetricsOptions = Partial<Static<typeof MetricsSettingsSchema>> & {
  /** A prom-client Registry to add the metrics to, e.g. the one your app already serves; default: one of their own. */
  register?: PromRegistry
  /**
   * Guards the route instead of the default: without it, the route asks for
   * the credentials REST asks for when authentication is configured, and is
   * open otherwise.
   */
  preHandler?: MetricsGuard
}

export type ResolvedMetricsOptions = Static<typeof MetricsSettingsSchema> & {
  register: PromRegistry | undefined
  preHandler: MetricsGuard | undefined
}

const settingsValidator = Compile(MetricsSettingsSchema)

/** Check the `metrics` option; undefined when metrics are off. */
export function resolveMetricsOptions (input: unknown): ResolvedMetricsOptions | undefined {
  if (input === undefined || input === false) return undefined
  if (input !== true && (input === null || typeof input !== 'object')) {
    throw new errorCodes.FST_ROOMS_INVALID_OPTION('metrics must be true, false or an object.')
  }
  const { register, preHandler, ...plain } = input === true ? {} : input as MetricsOptions
  const settings = settingsValidator.Default(structuredClone(plain))
  if (!settingsValidator.Check(settings)) {
    throw new errorCodes.FST_ROOMS_INVALID_OPTION(`${describeErrors(settingsValidator.Errors(settings), 'metrics')}.`)
  }
  if (register !== undefined && (typeof register?.registerMetric !== 'function' || typeof register.metrics !== 'function')) {
    throw new errorCodes.FST_ROOMS_INVALID_OPTION('metrics.register must be a prom-client Registry.')
  }
  if (preHandler !== undefined && typeof preHandler !== 'function') {
    throw new errorCodes.FST_ROOMS_INVALID_OPTION('metrics.preHandler must be a function.')
  }
  return { ...settings, register, preHandler }
}

/** What the gauges read at each scrape. */
export interface MetricsSources {
  /** Open connections of this registration on this node. */
  connections: () => number
  registry: {
    /** Rooms with a member on this node, and this node's memberships (one per connection per room). */
    localCounts: () => { rooms: number, members: number }
    /** This node's connections in one room. */
    localMembers: (room: string) => number
  }
}

/** One Redis connection of an adapter, as the metrics see it. */
export interface LinkMetrics {
  /** A call was answered after `ms` milliseconds. */
  roundTrip: (ms: number) => void
  /** The connection became ready (true) or broke (false). */
  state: (up: boolean) => void
}

/** What an adapter may report; `AdapterConfig.metrics`, present only when metrics are on. */
export interface AdapterMetrics {
  /** The metrics of one of the adapter's Redis connections, by a short fixed name (`command`, `subscriber`). */
  redisLink: (name: string) => LinkMetrics
}

/** Per-room tallies of an allow-listed room. */
interface RoomTally {
  published: number
  delivered: number
}

/** The prefix of every metric name, so ours never clash with an app's own in a shared registry. */
const PREFIX = 'fastify_rooms_'
/** From 0.5 ms (a Redis on the same host) to 5 s (the default commandTimeoutMs, past which a call fails). */
const ROUND_TRIP_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]

type PromClient = typeof import('prom-client')

/**
 * The metrics of one plugin registration: plain tallies the hot paths add to,
 * and the prom-client objects that read them.
 */
export class Metrics implements AdapterMetrics {
  framesReceived = 0
  bytesReceived = 0
  framesSent = 0
  bytesSent = 0
  published = 0
  delivered = 0
  slowConsumers = 0
  heartbeatTimeouts = 0
  private readonly errors = Object.fromEntries(ERROR_CODES.map((code) => [code, 0])) as Record<ErrorCode, number>
  private readonly rooms: Map<string, RoomTally>
  private readonly client: PromClient
  readonly register: PromRegistry
  private readonly options: ResolvedMetricsOptions
  private readonly names: string[] = []
  private sources: MetricsSources | undefined
  private redis: { roundTrip: Histogram<'link'>, up: Gauge<'link'>, disconnects: Counter<'link'> } | undefined

  private constructor (client: PromClient, options: ResolvedMetricsOptions) {
    this.client = client
    this.options = options
    this.register = options.register ?? new client.Registry()
    this.rooms = new Map(options.rooms.map((room) => [room, { published: 0, delivered: 0 }]))
    if (this.register.getSingleMetric(`${PREFIX}connections`) !== undefined) {
      throw new errorCodes.FST_ROOMS_INVALID_OPTION('metrics.register already holds the metrics of another fastify-rooms registration: give each its own registry.')
    }
    this.define()
  }

  /** Load prom-client and create the metrics. */
  static async create (options: ResolvedMetricsOptions): Promise<Metrics> {
    return new Metrics(await import('prom-client'), options)
  }

  /** A WebSocket message arrived from a client. */
  received (bytes: number): void {
    this.framesReceived++
    this.bytesReceived += bytes
  }

  /** A WebSocket message was written to a client. */
  sent (bytes: number): void {
    this.framesSent++
    this.bytesSent += bytes
  }

  /** An `error` frame was sent. */
  error (code: ErrorCode): void {
    this.errors[code]++
  }

  /** A message was published to a room through this node. */
  publish (room: string): void {
    this.published++
    const tally = this.rooms.get(room)
    if (tally !== undefined) tally.published++
  }

  /** A message of a room reached this node for `members` local members. */
  fanOut (room: string, members: number): void {
    this.delivered += members
    const tally = this.rooms.get(room)
    if (tally !== undefined) tally.delivered += members
  }

  slowConsumer (): void {
    this.slowConsumers++
  }

  heartbeatTimeout (): void {
    this.heartbeatTimeouts++
  }

  redisLink (name: string): LinkMetrics {
    const redis = this.redis ??= {
      roundTrip: new this.client.Histogram({ name: this.name('redis_round_trip_seconds'), help: 'Round trip of Redis calls that got an answer, by connection.', labelNames: ['link'], buckets: ROUND_TRIP_BUCKETS, registers: [this.register] }),
      up: new this.client.Gauge({ name: this.name('redis_link_up'), help: '1 while the Redis connection is ready, 0 while it is down, by connection.', labelNames: ['link'], registers: [this.register] }),
      disconnects: new this.client.Counter({ name: this.name('redis_disconnects_total'), help: 'Times a ready Redis connection broke, by connection.', labelNames: ['link'], registers: [this.register] })
    }
    const labels = { link: name }
    redis.disconnects.inc(labels, 0)
    let up: boolean | undefined
    return {
      roundTrip: (ms) => redis.roundTrip.observe(labels, ms / 1000),
      state: (now) => {
        if (up === true && !now) redis.disconnects.inc(labels)
        up = now
        redis.up.set(labels, now ? 1 : 0)
      }
    }
  }

  /** Take the metrics out of the app's registry (its own one goes with it), so that another registration may use it. */
  release (): void {
    if (this.options.register !== undefined) for (const name of this.names) this.register.removeSingleMetric(name)
  }

  /**
   * Read the gauges from these sources and serve the route when it has a
   * path. The route asks for what REST asks for (`access`), unless
   * `preHandler` guards it.
   */
  async serve (app: FastifyInstance, sources: MetricsSources, access: RestAccess | undefined): Promise<void> {
    this.sources = sources
    const { path, preHandler: guard } = this.options
    if (path === false) return
    const register = this.register
    const check = guard !== undefined
      ? guardHook(guard)
      : access === undefined ? undefined : async (request: FastifyRequest, reply: FastifyReply) => { await access.identify(request, reply) }
    // The default check's 401 is the contract's, not what the app's error handler makes of it; an app's own guard
    // answers as the app does (its errors go to the app's handler).
    const errorHandler = guard === undefined ? contractErrors : undefined
    app.get(path, { preHandler: check, errorHandler }, async (_request, reply) => {
      void reply.type(register.contentType)
      return await register.metrics()
    })
  }

  private name (name: string): string {
    this.names.push(PREFIX + name)
    return PREFIX + name
  }

  private define (): void {
    const { client, register } = this
    const registers = [register]
    const counter = (name: string, help: string, read: () => number): void => {
      void new client.Counter({ name: this.name(name), help, registers, collect () { this.reset(); this.inc(read()) } })
    }
    const gauge = (name: string, help: string, read: (sources: MetricsSources) => number): void => {
      const sources = (): MetricsSources | undefined => this.sources
      void new client.Gauge({ name: this.name(name), help, registers, collect () { const s = sources(); this.set(s === undefined ? 0 : read(s)) } })
    }
    gauge('connections', 'Open WebSocket connections on this node, including those still to authenticate.', (s) => s.connections())
    gauge('rooms', 'Rooms with at least one member connected to this node.', (s) => s.registry.localCounts().rooms)
    gauge('members', 'Room memberships of this node\'s connections (one per connection per room).', (s) => s.registry.localCounts().members)
    counter('frames_received_total', 'WebSocket messages received from clients.', () => this.framesReceived)
    counter('received_bytes_total', 'Bytes of the WebSocket messages received from clients.', () => this.bytesReceived)
    counter('frames_sent_total', 'WebSocket messages written to clients.', () => this.framesSent)
    counter('sent_bytes_total', 'Bytes of the WebSocket messages written to clients.', () => this.bytesSent)
    counter('messages_published_total', 'Room messages published through this node, by members and by the server.', () => this.published)
    counter('messages_delivered_total', 'Room messages fanned out to this node\'s members (one per member per message).', () => this.delivered)
    counter('slow_consumers_total', 'Connections closed for not reading (1013, maxBufferedBytes).', () => this.slowConsumers)
    counter('heartbeat_timeouts_total', 'Connections terminated for missing a heartbeat.', () => this.heartbeatTimeouts)
    const errors = this.errors
    void new client.Counter({
      name: this.name('errors_total'),
      help: 'Error frames sent to clients, by protocol code.',
      labelNames: ['code'],
      registers,
      collect () {
        this.reset()
        for (const code of ERROR_CODES) this.inc({ code }, errors[code])
      }
    })
    if (this.rooms.size === 0) return
    const rooms = this.rooms
    const perRoom = (name: string, help: string, key: keyof RoomTally): void => {
      void new client.Counter({
        name: this.name(name),
        help,
        labelNames: ['room'],
        registers,
        collect () {
          this.reset()
          for (const [room, tally] of rooms) this.inc({ room }, tally[key])
        }
      })
    }
    perRoom('room_messages_published_total', 'Messages published to an allow-listed room through this node.', 'published')
    perRoom('room_messages_delivered_total', 'Messages of an allow-listed room fanned out to this node\'s members.', 'delivered')
    const sources = (): MetricsSources | undefined => this.sources
    void new client.Gauge({
      name: this.name('room_members'),
      help: 'This node\'s connections in an allow-listed room.',
      labelNames: ['room'],
      registers,
      collect () {
        const s = sources()
        for (const room of rooms.keys()) this.set({ room }, s === undefined ? 0 : s.registry.localMembers(room))
      }
    })
  }
}
