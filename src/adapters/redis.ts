import { randomBytes } from 'node:crypto'
import { Redis, type RedisOptions } from 'ioredis'
import type { EncodedPublish, Member } from '../protocol.js'
import { encodeDirect, encodeMember } from '../protocol.js'
import { RoomsError } from '../errors.js'
import type {
  Adapter, AdapterConfig, AdapterListener, HistoryPage, JoinResult,
  RoomInfo, RoomPage, RoomQuery, StoredMessage
} from './adapter.js'
import type { ControlCommand } from './adapter.js'

export interface RedisAdapterOptions {
  /** `redis://host:port/db`; the adapter opens its own two connections. */
  url?: string
  /** Or a client to copy the connection settings from (it is duplicated, never used directly). */
  client?: Redis
  /** Prefix of every key and channel (default `fastify-rooms:`), to share one Redis between apps. */
  keyPrefix?: string
  /** A node whose lease is this old is dead: its members are removed (default 10000 ms). */
  leaseMs?: number
}

/**
 * Every cluster-wide operation is one call of this script, so it is atomic and
 * costs one round trip. Keys (P = prefix, R = P..'r:'..room..':'):
 *   R..'seq' offset counter, R..'epoch' history id, R..'hist' stream of frames,
 *   R..'members' user id -> member JSON, R..'counts' user id -> connections,
 *   R..'conns' connection id -> user id, P..'rooms' sorted set of rooms with
 *   members, P..'nodes' node id -> lease expiry (Redis clock, ms),
 *   P..'n:'..node..':conns' set of room.."\n"..connection of a node.
 * The message and presence frames built here must stay byte-compatible with
 * messageFrame and encodePresence in protocol.ts (the memory adapter's twins).
 * Channels: P..'c:'..room carries `m<offset>|<epoch>|<frame>` and
 * `p<connection>|<frame>`; P..'n:'..node carries `d<connection>|<frame>`.
 */
const SCRIPT = `
local p = ARGV[1]
local cmd = ARGV[2]

local function now ()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function presence (room, event, member, count, origin)
  redis.call('PUBLISH', p .. 'c:' .. room, 'p' .. origin .. '|{"type":"presence","room":"' .. room .. '","event":"' .. event .. '","member":' .. member .. ',"count":' .. count .. '}')
end

-- Remove one connection from a room; presence leave when it was the user's last.
local function leave (room, conn, ttl)
  local r = p .. 'r:' .. room .. ':'
  local user = redis.call('HGET', r .. 'conns', conn)
  if not user then return 0 end
  redis.call('HDEL', r .. 'conns', conn)
  if redis.call('HINCRBY', r .. 'counts', user, -1) > 0 then return 1 end
  redis.call('HDEL', r .. 'counts', user)
  local member = redis.call('HGET', r .. 'members', user)
  redis.call('HDEL', r .. 'members', user)
  local n = redis.call('HLEN', r .. 'members')
  presence(room, 'leave', member, n, conn)
  if n == 0 then
    redis.call('ZREM', p .. 'rooms', room)
    if redis.call('EXISTS', r .. 'hist') == 1 then
      redis.call('PEXPIRE', r .. 'seq', ttl)
      redis.call('PEXPIRE', r .. 'epoch', ttl)
    else
      redis.call('DEL', r .. 'seq', r .. 'epoch')
    end
  end
  return 1
end

-- Drop every member of a node (its lease expired, or it shut down).
local function forget (node, ttl)
  local set = p .. 'n:' .. node .. ':conns'
  for _, entry in ipairs(redis.call('SMEMBERS', set)) do
    local cut = string.find(entry, '\\n', 1, true)
    leave(string.sub(entry, 1, cut - 1), string.sub(entry, cut + 1), ttl)
  end
  redis.call('DEL', set)
  redis.call('ZREM', p .. 'nodes', node)
end

if cmd == 'publish' then
  -- room, data JSON, from JSON or '', historySize, ttl, new epoch
  local room, data, from, size, ttl = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7]
  local r = p .. 'r:' .. room .. ':'
  local epoch = redis.call('GET', r .. 'epoch')
  if not epoch then
    epoch = ARGV[8]
    redis.call('SET', r .. 'epoch', epoch)
  end
  local offset = redis.call('INCR', r .. 'seq')
  if from ~= '' then from = ',"from":' .. from end
  local frame = '{"type":"message","room":"' .. room .. '","data":' .. data .. ',"offset":' .. offset .. ',"ts":' .. string.format('%d', now()) .. from .. '}'
  if size > 0 then
    redis.call('XADD', r .. 'hist', 'MAXLEN', size, offset .. '-0', 'f', frame)
    redis.call('PEXPIRE', r .. 'hist', ttl)
  end
  if redis.call('EXISTS', r .. 'members') == 0 then
    redis.call('PEXPIRE', r .. 'seq', ttl)
    redis.call('PEXPIRE', r .. 'epoch', ttl)
  end
  redis.call('PUBLISH', p .. 'c:' .. room, 'm' .. offset .. '|' .. epoch .. '|' .. frame)
  return offset
elseif cmd == 'join' then
  -- room, connection, user id, member JSON, node, max members, new epoch
  local room, conn, user, member, node, max = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
  local r = p .. 'r:' .. room .. ':'
  if redis.call('HEXISTS', r .. 'conns', conn) == 0 then
    local first = redis.call('HEXISTS', r .. 'counts', user) == 0
    if first and redis.call('HLEN', r .. 'members') >= max then return { 'FULL' } end
    redis.call('HSET', r .. 'conns', conn, user)
    redis.call('HINCRBY', r .. 'counts', user, 1)
    redis.call('SADD', p .. 'n:' .. node .. ':conns', room .. '\\n' .. conn)
    if first then
      redis.call('HSET', r .. 'members', user, member)
      redis.call('ZADD', p .. 'rooms', 0, room)
      presence(room, 'join', member, redis.call('HLEN', r .. 'members'), conn)
    end
  end
  local epoch = redis.call('GET', r .. 'epoch')
  if not epoch then
    epoch = ARGV[9]
    redis.call('SET', r .. 'epoch', epoch)
  end
  -- A room with members keeps its offsets and epoch however long it stays quiet.
  redis.call('PERSIST', r .. 'epoch')
  redis.call('PERSIST', r .. 'seq')
  return { 'OK', tonumber(redis.call('GET', r .. 'seq') or '0'), epoch, redis.call('HVALS', r .. 'members') }
elseif cmd == 'leave' then
  -- room, connection, node, ttl
  redis.call('SREM', p .. 'n:' .. ARGV[5] .. ':conns', ARGV[3] .. '\\n' .. ARGV[4])
  return leave(ARGV[3], ARGV[4], ARGV[6])
elseif cmd == 'renew' then
  -- node, lease ms, registered before ('1'): a node whose lease was reaped must not come back silently
  if ARGV[5] == '1' and not redis.call('ZSCORE', p .. 'nodes', ARGV[3]) then return 'REAPED' end
  redis.call('ZADD', p .. 'nodes', now() + tonumber(ARGV[4]), ARGV[3])
  return 'OK'
elseif cmd == 'reap' then
  -- ttl: forget every node whose lease expired
  local dead = redis.call('ZRANGEBYSCORE', p .. 'nodes', '-inf', now())
  for _, node in ipairs(dead) do forget(node, ARGV[3]) end
  return #dead
elseif cmd == 'forget' then
  -- node, ttl: a node shutting down cleanly
  forget(ARGV[3], ARGV[4])
  return 1
end
return redis.error_reply('unknown command ' .. cmd)
`

type Cluster = Redis & {
  rooms: (prefix: string, cmd: string, ...args: Array<string | number>) => Promise<unknown>
}

const unavailable = (): RoomsError => new RoomsError('UNAVAILABLE', 'The message store is unreachable right now: retry in a moment.')

/**
 * Several app instances act as one through Redis: offsets, history, presence
 * and room counts live there; each node subscribes to the rooms it has
 * members in and fans out locally. Switch to it with one option:
 * `adapter: redisAdapter({ url })`.
 */
export class RedisAdapter implements Adapter {
  private readonly options: RedisAdapterOptions
  private readonly prefix: string
  private readonly leaseMs: number
  private redis!: Cluster
  private sub!: Redis
  private listener!: AdapterListener
  private config!: AdapterConfig
  /** Subscribed room channels, with how many local joins hold each. */
  private readonly subscriptions = new Map<string, { holders: number, epoch: string | undefined, ready: Promise<unknown> }>()
  /** Leaves that failed while Redis was away, retried when it is back. */
  private readonly pendingLeaves = new Map<string, { room: string, connectionId: string }>()
  /** Local memberships, to re-register them after an outage. */
  private readonly local = new Map<string, { room: string, connectionId: string, member: Member }>()
  private timers: NodeJS.Timeout[] = []
  private registered = false
  private wasDown = false
  private closed = false

  constructor (options: RedisAdapterOptions) {
    if (options.url === undefined && options.client === undefined) throw new TypeError('redisAdapter needs a url or a client.')
    this.options = options
    this.prefix = options.keyPrefix ?? 'fastify-rooms:'
    this.leaseMs = options.leaseMs ?? 10_000
  }

  async start (listener: AdapterListener, config: AdapterConfig): Promise<void> {
    if (this.listener !== undefined) throw new Error('This adapter is already in use: create one adapter per plugin registration.')
    this.listener = listener
    this.config = config
    // Fail fast while Redis is away instead of queueing: the client gets UNAVAILABLE and may retry.
    const settings: RedisOptions = { enableOfflineQueue: false, maxRetriesPerRequest: 1, retryStrategy: (times) => Math.min(50 * times, 1000) }
    const base = this.options.client !== undefined ? this.options.client.duplicate(settings) : new Redis(this.options.url as string, settings)
    this.redis = base as Cluster
    this.redis.defineCommand('rooms', { numberOfKeys: 0, lua: SCRIPT })
    this.sub = this.redis.duplicate(settings)
    this.redis.on('error', (err: Error) => config.log.debug({ err }, 'fastify-rooms: redis connection error'))
    this.sub.on('error', (err: Error) => config.log.debug({ err }, 'fastify-rooms: redis subscriber error'))
    this.redis.on('close', () => { if (!this.closed) this.wasDown = true })
    this.redis.on('ready', () => { if (this.wasDown) void this.recover() })
    this.sub.on('messageBuffer', (channel: Buffer, message: Buffer) => this.onMessage(channel, message))
    await Promise.all([ready(this.redis), ready(this.sub)])
    await this.sub.subscribe(`${this.prefix}n:${config.nodeId}`)
    // Server commands for a user (disconnect, remove from a room) reach every node: `x<origin node>|<command JSON>`.
    await this.sub.subscribe(`${this.prefix}all`)
    await this.renew()
    const every = (ms: number, fn: () => Promise<unknown>): void => {
      const timer = setInterval(() => { fn().catch((err: unknown) => config.log.debug({ err }, 'fastify-rooms: redis upkeep failed')) }, ms)
      timer.unref()
      this.timers.push(timer)
    }
    every(Math.max(this.leaseMs / 3, 10), async () => await this.renew())
    every(Math.max(this.leaseMs / 2, 10), async () => await this.call('reap', this.config.historyTtlMs))
  }

  async close (): Promise<void> {
    this.closed = true
    for (const timer of this.timers) clearInterval(timer)
    await this.call('forget', this.config.nodeId, this.config.historyTtlMs).catch(() => {})
    this.redis.disconnect()
    this.sub.disconnect()
  }

  async publish (room: string, message: EncodedPublish): Promise<number> {
    const { historySize, historyTtlMs } = this.config
    return await this.call('publish', room, message.data, message.from ?? '', historySize, historyTtlMs, newEpoch()) as number
  }

  async join (room: string, connectionId: string, member: Member): Promise<JoinResult> {
    await this.subscribe(room)
    let reply: [string, number, string, string[]]
    try {
      reply = await this.call('join', room, connectionId, member.id, encodeMember(member), this.config.nodeId, this.config.maxMembersPerRoom, newEpoch()) as typeof reply
    } catch (err) {
      await this.unsubscribe(room)
      throw err
    }
    if (reply[0] === 'FULL') {
      await this.unsubscribe(room)
      throw new RoomsError('ROOM_FULL', `Room "${room}" is full (${this.config.maxMembersPerRoom} members): try again later.`, room)
    }
    const [, offset, epoch, members] = reply
    const subscription = this.subscriptions.get(room)
    if (subscription !== undefined) subscription.epoch ??= epoch
    this.local.set(connectionId + '\n' + room, { room, connectionId, member })
    return { offset, epoch, members: members.map((m) => JSON.parse(m) as Member), count: members.length }
  }

  async leave (room: string, connectionId: string): Promise<void> {
    const key = connectionId + '\n' + room
    if (!this.local.delete(key)) return
    await this.unsubscribe(room)
    try {
      await this.call('leave', room, connectionId, this.config.nodeId, this.config.historyTtlMs)
    } catch (err) {
      if ((err as RoomsError).code !== 'UNAVAILABLE') throw err
      // Redis is away: the member must still go, so the leave is done when it is back.
      this.pendingLeaves.set(key, { room, connectionId })
    }
  }

  async direct (connectionId: string, data: unknown, from?: Member): Promise<boolean> {
    const frame = encodeDirect(data, from)
    if (this.listener.direct(connectionId, frame)) return true
    const node = connectionId.slice(0, connectionId.indexOf('-'))
    if (node === '' || node === this.config.nodeId) return false
    const receivers = await this.guard(this.redis.publish(`${this.prefix}n:${node}`, `d${connectionId}|${frame}`))
    return receivers > 0
  }

  async control (command: ControlCommand): Promise<number> {
    const here = this.listener.control(command)
    const message = `x${this.config.nodeId}|${JSON.stringify(command)}`
    if ('connectionId' in command.target) {
      const { connectionId } = command.target
      const node = connectionId.slice(0, connectionId.indexOf('-'))
      if (here > 0 || node === '' || node === this.config.nodeId) return here
      return await this.guard(this.redis.publish(`${this.prefix}n:${node}`, message)) > 0 ? 1 : 0
    }
    await this.guard(this.redis.publish(`${this.prefix}all`, message))
    return here
  }

  async room (room: string): Promise<RoomInfo | null> {
    const r = `${this.prefix}r:${room}:`
    const [members, seq, epoch] = await this.guard(this.redis.pipeline().hvals(`${r}members`).get(`${r}seq`).get(`${r}epoch`).exec()).then(results)
    const list = members as string[]
    if (list.length === 0) return null
    return { name: room, count: list.length, members: list.map((m) => JSON.parse(m) as Member), offset: Number(seq ?? 0), epoch: (epoch as string | null) ?? '' }
  }

  async rooms (query: RoomQuery): Promise<RoomPage> {
    const { prefix = '', after, limit } = query
    const start = after !== undefined && after >= prefix ? `(${after}` : `[${prefix}`
    // One more than asked tells whether there is a next page.
    const names = (await this.guard(this.redis.zrangebylex(`${this.prefix}rooms`, start, '+', 'LIMIT', 0, limit + 1))).filter((n) => n.startsWith(prefix))
    const page = names.slice(0, limit)
    const pipeline = this.redis.pipeline()
    for (const name of page) pipeline.hlen(`${this.prefix}r:${name}:members`)
    const counts = page.length === 0 ? [] : await this.guard(pipeline.exec()).then(results)
    return {
      rooms: page.map((name, i) => ({ name, count: Number(counts[i]) })).filter((r) => r.count > 0),
      next: names.length > limit ? (page[page.length - 1] as string) : null
    }
  }

  async history (room: string, after: number, limit: number): Promise<HistoryPage | null> {
    const r = `${this.prefix}r:${room}:`
    const [entries, seq, epoch] = await this.guard(this.redis.pipeline().xrange(`${r}hist`, `${after + 1}-0`, '+', 'COUNT', limit).get(`${r}seq`).get(`${r}epoch`).exec()).then(results)
    if (epoch === null) return null
    const messages: StoredMessage[] = (entries as Array<[string, string[]]>).map(([id, fields]) => ({ offset: Number(id.slice(0, id.indexOf('-'))), frame: fields[1] as string }))
    return { epoch: epoch as string, offset: Number(seq ?? 0), messages }
  }

  private async call (cmd: string, ...args: Array<string | number>): Promise<unknown> {
    return await this.guard(this.redis.rooms(this.prefix, cmd, ...args))
  }

  /** Redis being away is the client's retryable UNAVAILABLE, not an internal error. */
  private async guard<T> (pending: Promise<T>): Promise<T> {
    try {
      return await pending
    } catch (err) {
      if (this.redis.status !== 'ready' || isConnectionError(err)) throw unavailable()
      throw err
    }
  }

  private async renew (): Promise<void> {
    const reply = await this.call('renew', this.config.nodeId, this.leaseMs, this.registered ? '1' : '0')
    if (reply === 'REAPED') {
      // Our lease expired while we were away (a long pause): others removed our
      // members. Start over rather than resurrect them: every client reconnects.
      this.config.log.warn({ nodeId: this.config.nodeId }, 'fastify-rooms: this node\'s lease expired; disconnecting its clients so they rejoin')
      this.registered = false
      this.local.clear()
      this.listener.reset()
      await this.call('renew', this.config.nodeId, this.leaseMs, '0')
    }
    this.registered = true
  }

  /** Redis is back after an outage: finish failed leaves, re-register members, notice lost rooms. */
  private async recover (): Promise<void> {
    this.wasDown = false
    try {
      for (const [key, { room, connectionId }] of this.pendingLeaves) {
        await this.call('leave', room, connectionId, this.config.nodeId, this.config.historyTtlMs)
        this.pendingLeaves.delete(key)
      }
      await this.renew()
      const lost = new Set<string>()
      for (const [room, subscription] of this.subscriptions) {
        const epoch = await this.guard(this.redis.get(`${this.prefix}r:${room}:epoch`))
        if (epoch !== subscription.epoch) lost.add(room)
      }
      for (const room of lost) this.listener.reset(room)
      for (const { room, connectionId, member } of this.local.values()) {
        if (!lost.has(room)) await this.call('join', room, connectionId, member.id, encodeMember(member), this.config.nodeId, Number.MAX_SAFE_INTEGER, newEpoch())
      }
    } catch (err) {
      this.wasDown = true
      this.config.log.debug({ err }, 'fastify-rooms: redis recovery will be retried')
    }
  }

  private async subscribe (room: string): Promise<void> {
    let subscription = this.subscriptions.get(room)
    if (subscription === undefined) {
      subscription = { holders: 0, epoch: undefined, ready: this.sub.subscribe(`${this.prefix}c:${room}`) }
      this.subscriptions.set(room, subscription)
    }
    subscription.holders++
    // Subscribed before the join is recorded, so no message after the join's offset can be missed.
    try {
      await this.guard(subscription.ready)
    } catch (err) {
      await this.unsubscribe(room)
      throw err
    }
  }

  private async unsubscribe (room: string): Promise<void> {
    const subscription = this.subscriptions.get(room)
    if (subscription === undefined || --subscription.holders > 0) return
    this.subscriptions.delete(room)
    await this.sub.unsubscribe(`${this.prefix}c:${room}`).catch(() => {})
  }

  private onMessage (channelBytes: Buffer, message: Buffer): void {
    const channel = channelBytes.toString()
    const bar = message.indexOf(124) // '|'
    const kind = message[0]
    if (channel.startsWith(`${this.prefix}c:`)) {
      const room = channel.slice(this.prefix.length + 2)
      if (kind === 109) { // 'm': m<offset>|<epoch>|<frame>
        const offset = Number(message.toString('latin1', 1, bar))
        const bar2 = message.indexOf(124, bar + 1)
        const epoch = message.toString('latin1', bar + 1, bar2)
        const subscription = this.subscriptions.get(room)
        if (subscription !== undefined && subscription.epoch !== undefined && subscription.epoch !== epoch) {
          // The room's history was lost (Redis flushed): its local members must rejoin.
          subscription.epoch = epoch
          this.listener.reset(room)
          return
        }
        this.listener.message(room, offset, message.subarray(bar2 + 1))
      } else if (kind === 112) { // 'p': p<origin>|<frame>
        this.listener.presence(room, message.toString('utf8', bar + 1), message.toString('latin1', 1, bar))
      }
    } else if (kind === 100) { // 'd': d<connection>|<frame>
      this.listener.direct(message.toString('latin1', 1, bar), message.toString('utf8', bar + 1))
    } else if (kind === 120 && message.toString('latin1', 1, bar) !== this.config.nodeId) { // 'x': x<origin>|<command>, done at the origin already
      this.listener.control(JSON.parse(message.toString('utf8', bar + 1)) as ControlCommand)
    }
  }
}

/** Create the Redis adapter: `adapter: redisAdapter({ url: 'redis://127.0.0.1:6379' })`. */
export function redisAdapter (options: RedisAdapterOptions): Adapter {
  return new RedisAdapter(options)
}

function newEpoch (): string {
  return randomBytes(6).toString('base64url')
}

async function ready (client: Redis): Promise<void> {
  if (client.status === 'ready') return
  await new Promise<void>((resolve, reject) => {
    client.once('ready', resolve)
    client.once('end', () => reject(new Error('fastify-rooms: could not connect to Redis')))
  })
}

function results (replies: Array<[Error | null, unknown]> | null): unknown[] {
  return (replies ?? []).map(([err, value]) => {
    if (err !== null) throw err
    return value
  })
}

function isConnectionError (err: unknown): boolean {
  const message = err instanceof Error ? err.message : ''
  return /Connection is closed|Stream isn't writeable|ECONNREFUSED|ECONNRESET|max retries|EPIPE/i.test(message)
}
