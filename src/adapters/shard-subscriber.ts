import { Redis, type Cluster, type RedisOptions } from 'ioredis'
import type { FastifyBaseLogger } from 'fastify'
import { storeUnavailable } from '../errors.js'
import { SLOTS, slotOf } from './slot.js'

/** What a `ShardSubscriber` tells its owner. */
export interface ShardSubscriberHandlers {
  /**
   * A message on a wanted channel, in the order its shard sent it. Messages
   * of a broken channel may arrive shortly before its `restored`: they are
   * real and in order.
   */
  message: (channel: string, message: Buffer) => void
  /**
   * These channels may have missed messages since the last one delivered:
   * their subscription was lost (the shard's connection closed, its master
   * failed over, their slot moved, or Redis dropped it some other way).
   */
  broken: (channels: string[]) => void
  /**
   * These broken channels are subscribed again: every message published from
   * now on arrives. What was published meanwhile must be read from history,
   * after this call.
   */
  restored: (channels: string[]) => void
}

export interface ShardSubscriberOptions {
  /**
   * Bound on every promise `subscribe` and `unsubscribe` return, and on each
   * round trip to a shard: a shard silent for this long counts as lost.
   */
  timeoutMs: number
  log: Pick<FastifyBaseLogger, 'debug' | 'warn'>
  /**
   * How often each shard connection's subscription count is compared with
   * ours, to catch a subscription Redis dropped without a notice this side
   * saw; 0 turns the check off. Default 5000.
   */
  verifyIntervalMs?: number
  /** Client name of the shard connections (CLIENT LIST). Default `fastify-rooms:ssub`. */
  connectionName?: string
}

/** One shard master's subscriber connection, shared by every slot it serves us. */
interface Shard {
  /** `host:port`, as the cluster names the node (after `natMap`). */
  key: string
  redis: Redis
  groups: Set<SlotGroup>
  /** Its commands run one at a time, so its subscription count can be compared with ours exactly. */
  queue: Promise<unknown>
  lost: boolean
}

/** The channels of one hash slot: always subscribed together, in one command, on the slot's master. */
interface SlotGroup {
  slot: number
  wanted: Set<string>
  /** Confirmed by Redis on `shard`. */
  live: Set<string>
  /**
   * Live channels whose SSUNSUBSCRIBE is in flight: Redis may drop them any
   * moment, so a channel wanted again meanwhile is not confirmed until its
   * next SSUBSCRIBE is.
   */
  leaving: Set<string>
  /** Wanted and not live since a loss (or a failed subscribe): `restored` is due for them. */
  broken: Set<string>
  shard: Shard | undefined
  syncing: boolean
  /** Something changed while syncing: run again. */
  again: boolean
  failures: number
  /** The topology generation the last attempt used: a failed attempt refreshes it only if nobody has since. */
  generation: number
  /** The retry round it waits for, while its last attempt failed. */
  round: Round | undefined
}

/**
 * The groups whose last attempt failed while one master served them (or
 * none was known): they retry together, in rounds. A master down fails all
 * its slots at once, and retried one by one they would each reconnect to it
 * and keep asking the cluster where it went. Per master, so that one that
 * stays down does not slow the retries of a slot of another.
 */
interface Round {
  master: string
  groups: Set<SlotGroup>
  timer: NodeJS.Timeout | undefined
  /** Rounds run since this master's slots began failing (or since a MOVED): the delay before the next grows with it. */
  count: number
}

interface Waiter {
  pending: Set<string>
  done: (channel: string) => boolean
  resolve: () => void
  reject: (err: Error) => void
  timer: NodeJS.Timeout
}

const MOVED = /^MOVED \d+ (\S+)/

/** Subscribed and staying so: not on its way out with an SSUNSUBSCRIBE in flight. */
function isConfirmed (group: SlotGroup, channel: string): boolean {
  return group.live.has(channel) && !group.leaving.has(channel)
}

/** Delay before retry round `round` (1, 2, ...) of a failure, with jitter so the app's instances spread out. */
function backoff (round: number): number {
  return Math.min(1000, 25 * 2 ** Math.min(round, 6)) * (0.5 + Math.random())
}

class Timeout extends Error {}

async function timed<T> (work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([work, new Promise<never>((resolve, reject) => { timer = setTimeout(() => reject(new Timeout(`no answer within ${ms} ms`)), ms) })])
  } finally {
    clearTimeout(timer)
  }
}

/**
 * Receives sharded pub/sub (SSUBSCRIBE) for one app node on a Redis Cluster:
 * one connection per shard master, one SSUBSCRIBE per slot's channels, and a
 * `broken` / `restored` pair whenever a subscription may have missed messages
 * (connection lost, failover, slot migration), so the owner can fill the gap
 * from history. The cluster client is used only to learn which master serves
 * which slot (CLUSTER SLOTS, and the MOVED replies of the shards themselves).
 *
 * ioredis' own `shardedSubscribers` option is not used: it resubscribes
 * without reporting what may have been missed, and without confirming.
 */
export class ShardSubscriber {
  readonly #cluster: Cluster
  readonly #handlers: ShardSubscriberHandlers
  readonly #timeoutMs: number
  readonly #log: ShardSubscriberOptions['log']
  readonly #name: string
  readonly #groups = new Map<number, SlotGroup>()
  readonly #channels = new Map<string, SlotGroup>()
  readonly #shards = new Map<string, Shard>()
  readonly #subscribing = new Set<Waiter>()
  readonly #unsubscribing = new Set<Waiter>()
  /** Slot -> `host:port` of its master, from the last CLUSTER SLOTS and MOVED replies. */
  #owners: Array<string | undefined> = []
  #generation = 0
  #refreshing: Promise<void> | undefined
  /** Retry rounds by the master (`host:port`, or '' when unknown) that served their groups when they failed. */
  readonly #rounds = new Map<string, Round>()
  readonly #sweep: NodeJS.Timeout | undefined
  #closed = false

  constructor (cluster: Cluster, handlers: ShardSubscriberHandlers, options: ShardSubscriberOptions) {
    this.#cluster = cluster
    this.#handlers = handlers
    this.#timeoutMs = options.timeoutMs
    this.#log = options.log
    this.#name = options.connectionName ?? 'fastify-rooms:ssub'
    const every = options.verifyIntervalMs ?? 5000
    if (every > 0) {
      this.#sweep = setInterval(() => { for (const shard of this.#shards.values()) this.#verify(shard) }, every)
      this.#sweep.unref()
    }
  }

  /** Every wanted channel is confirmed by Redis: none is broken or still subscribing. */
  get ready (): boolean {
    if (this.#closed) return false
    for (const group of this.#groups.values()) {
      for (const channel of group.wanted) if (!isConfirmed(group, channel)) return false
    }
    return true
  }

  /** Every one of these channels is wanted and confirmed by Redis. */
  holds (channels: string[]): boolean {
    if (this.#closed) return false
    return channels.every((channel) => {
      const group = this.#channels.get(channel)
      return group !== undefined && isConfirmed(group, channel)
    })
  }

  /**
   * Subscribe to channels (any slots; each slot's go in one SSUBSCRIBE).
   * Resolves once Redis confirmed every one. Rejects with `UNAVAILABLE` after
   * `timeoutMs`; the channels not confirmed by then stay wanted, count as
   * broken, and get `restored` once confirmed, unless unsubscribed first.
   */
  async subscribe (channels: string[]): Promise<void> {
    if (this.#closed) throw storeUnavailable()
    const touched = new Set<SlotGroup>()
    for (const channel of channels) {
      const group = this.#groupOf(channel)
      group.wanted.add(channel)
      this.#channels.set(channel, group)
      touched.add(group)
    }
    const confirmed = this.#wait(this.#subscribing, channels, (channel) => {
      const group = this.#channels.get(channel)
      return group === undefined || isConfirmed(group, channel)
    }, (missing) => {
      for (const channel of missing) this.#channels.get(channel)?.broken.add(channel)
    })
    for (const group of touched) this.#kick(group)
    await confirmed
  }

  /**
   * Unsubscribe from channels: their messages stop at once. Resolves once
   * Redis confirmed (or the connection they were on is gone); rejects with
   * `UNAVAILABLE` after `timeoutMs`, and they are dropped from Redis later.
   */
  async unsubscribe (channels: string[]): Promise<void> {
    if (this.#closed) return
    const touched = new Set<SlotGroup>()
    for (const channel of channels) {
      const group = this.#channels.get(channel)
      if (group === undefined) continue
      group.wanted.delete(channel)
      group.broken.delete(channel)
      this.#channels.delete(channel)
      touched.add(group)
    }
    const slots = new Map(channels.map((channel) => [channel, slotOf(channel)]))
    const gone = this.#wait(this.#unsubscribing, channels, (channel) => {
      if (this.#channels.has(channel)) return true
      const group = this.#groups.get(slots.get(channel)!)
      return group === undefined || !group.live.has(channel)
    })
    for (const group of touched) this.#kick(group)
    await gone
  }

  /** Drop every connection and fail every pending call. No handler is called after this. */
  close (): void {
    if (this.#closed) return
    this.#closed = true
    clearInterval(this.#sweep)
    for (const round of this.#rounds.values()) clearTimeout(round.timer)
    for (const waiter of [...this.#subscribing, ...this.#unsubscribing]) {
      clearTimeout(waiter.timer)
      waiter.reject(storeUnavailable())
    }
    this.#subscribing.clear()
    this.#unsubscribing.clear()
    for (const shard of this.#shards.values()) {
      shard.lost = true
      shard.redis.removeAllListeners()
      shard.redis.on('error', () => {})
      shard.redis.disconnect()
    }
    this.#shards.clear()
  }

  /**
   * Call `onMoved` when Redis may have dropped some of this connection's
   * subscriptions (an unsolicited `sunsubscribe` when a slot moves away).
   * ioredis reports it with its undocumented `moved` event; the periodic
   * count check catches what this misses.
   */
  protected watchMoves (redis: Redis, onMoved: () => void): void {
    redis.on('moved', onMoved)
  }

  #groupOf (channel: string): SlotGroup {
    const slot = slotOf(channel)
    let group = this.#groups.get(slot)
    if (group === undefined) {
      group = { slot, wanted: new Set(), live: new Set(), leaving: new Set(), broken: new Set(), shard: undefined, syncing: false, again: false, failures: 0, generation: -1, round: undefined }
      this.#groups.set(slot, group)
    }
    return group
  }

  #wait (waiters: Set<Waiter>, channels: string[], done: (channel: string) => boolean, onTimeout?: (missing: string[]) => void): Promise<void> {
    const pending = new Set(channels.filter((channel) => !done(channel)))
    if (pending.size === 0) return Promise.resolve()
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        pending,
        done,
        resolve,
        reject,
        timer: setTimeout(() => {
          waiters.delete(waiter)
          onTimeout?.([...waiter.pending])
          reject(storeUnavailable())
        }, this.#timeoutMs)
      }
      waiters.add(waiter)
    })
  }

  #settle (): void {
    for (const waiters of [this.#subscribing, this.#unsubscribing]) {
      for (const waiter of waiters) {
        for (const channel of waiter.pending) if (waiter.done(channel)) waiter.pending.delete(channel)
        if (waiter.pending.size === 0) {
          clearTimeout(waiter.timer)
          waiters.delete(waiter)
          waiter.resolve()
        }
      }
    }
  }

  /** Sync a group now, unless it is failing: then its next retry round takes the change along. */
  #kick (group: SlotGroup): void {
    if (group.syncing || group.round === undefined) void this.#sync(group)
  }

  /** Bring one slot's subscription in line with what is wanted; one run at a time per slot, retried in rounds until it holds. */
  async #sync (group: SlotGroup): Promise<void> {
    if (group.syncing) {
      group.again = true
      return
    }
    group.syncing = true
    let redirects = 0
    try {
      do {
        group.again = false
        try {
          await this.#step(group)
        } catch (err) {
          const moved = err instanceof Error ? MOVED.exec(err.message) : null
          if (moved === null || ++redirects > 5) throw err
          // The shard named its slot's new master: no need to ask the cluster, and the others may follow it soon.
          this.#owners[group.slot] = this.#mapped(moved[1]!)
          for (const round of this.#rounds.values()) round.count = 0
          group.again = true
        }
      } while (group.again && !this.#closed)
      group.failures = 0
      this.#healed(group)
    } catch (err) {
      group.failures++
      this.#log.debug({ err, slot: group.slot, failures: group.failures }, 'fastify-rooms: shard subscription failed; retrying')
      if (!this.#closed) this.#retryLater(group)
    } finally {
      group.syncing = false
      this.#forget(group)
      this.#settle()
    }
  }

  /**
   * A failed group waits for the next retry round of its master, where every
   * group failing there tries again at once, so that they share one CLUSTER
   * SLOTS and one new connection.
   */
  #retryLater (group: SlotGroup): void {
    const master = this.#owners[group.slot] ?? ''
    let round = this.#rounds.get(master)
    if (round === undefined) this.#rounds.set(master, round = { master, groups: new Set(), timer: undefined, count: 0 })
    if (group.round !== round) {
      this.#healed(group)
      group.round = round
      round.groups.add(group)
    }
    if (round.timer !== undefined) return
    round.count = Math.min(round.count + 1, 6)
    const next = round
    round.timer = setTimeout(() => {
      next.timer = undefined
      // One still running from before joins the next round if it fails again.
      for (const failing of [...next.groups]) if (!failing.syncing) void this.#sync(failing)
    }, backoff(round.count))
    round.timer.unref()
  }

  /** Out of its round; a master whose slots all healed is retried quickly again at its next failure. */
  #healed (group: SlotGroup): void {
    const round = group.round
    if (round === undefined) return
    group.round = undefined
    round.groups.delete(group)
    if (round.groups.size > 0) return
    clearTimeout(round.timer)
    this.#rounds.delete(round.master)
  }

  async #step (group: SlotGroup): Promise<void> {
    if (group.wanted.size === 0 && group.live.size === 0) return
    if (this.#owners[group.slot] === undefined || (group.failures > 0 && group.generation === this.#generation)) await this.#refresh()
    group.generation = this.#generation
    const owner = this.#owners[group.slot]
    if (owner === undefined) throw new Error(`no master serves slot ${group.slot}`)
    if (group.shard !== undefined && group.shard.key !== owner) this.#leave(group)
    const shard = this.#shardFor(owner)
    group.shard = shard
    shard.groups.add(group)
    const add = [...group.wanted].filter((channel) => !group.live.has(channel))
    if (add.length > 0) {
      let confirmed = false
      await this.#command(shard, async () => {
        // ROLE right behind, on the same connection: a replica accepts SSUBSCRIBE too (a stale topology can lead here), and only a master's
        // subscribers are sure to be told when it stops serving the slot. A demotion after this ROLE drops the subscription with a notice.
        const [, role] = await Promise.all([shard.redis.ssubscribe(...add), shard.redis.call('ROLE') as Promise<unknown[]>])
        if (String(role[0]) !== 'master') {
          shard.redis.disconnect()
          throw new Error(`${shard.key} is not a master any more`)
        }
        if (shard.lost || group.shard !== shard) return
        for (const channel of add) group.live.add(channel)
        confirmed = true
      })
      if (!confirmed) throw new Error(`the connection to ${shard.key} was lost while subscribing`)
      const restored = add.filter((channel) => group.wanted.has(channel) && group.broken.delete(channel))
      if (restored.length > 0) this.#tell('restored', restored)
      // Unsubscribed while the SSUBSCRIBE was in flight: undo it below.
      if (add.some((channel) => !group.wanted.has(channel))) group.again = true
    }
    const remove = [...group.live].filter((channel) => !group.wanted.has(channel))
    if (remove.length > 0) {
      for (const channel of remove) group.leaving.add(channel)
      try {
        await this.#command(shard, async () => await shard.redis.sunsubscribe(...remove))
      } finally {
        // Answered or not, Redis may have dropped them: a channel wanted again is subscribed anew (SSUBSCRIBE of a live one is harmless).
        for (const channel of remove) {
          group.leaving.delete(channel)
          if (group.shard === shard) group.live.delete(channel)
        }
      }
      if (remove.some((channel) => group.wanted.has(channel))) group.again = true
    }
  }

  /** A group moves to another master: what was live on the old one may have missed messages. */
  #leave (group: SlotGroup): void {
    const shard = group.shard!
    shard.groups.delete(group)
    group.shard = undefined
    const live = [...group.live]
    group.live.clear()
    this.#broke(group, live)
    // Usually Redis dropped them already (the slot left that node); if not, they must go before the next count check there.
    if (live.length > 0 && !shard.lost) void this.#command(shard, async () => await shard.redis.sunsubscribe(...live)).catch(() => {})
    this.#release(shard)
  }

  #broke (group: SlotGroup, channels: string[]): void {
    const wanted = channels.filter((channel) => group.wanted.has(channel))
    for (const channel of wanted) group.broken.add(channel)
    if (wanted.length > 0) this.#tell('broken', wanted)
  }

  /** A throwing handler must not break the bookkeeping it was called from. */
  #tell (what: 'broken' | 'restored', channels: string[]): void {
    if (this.#closed) return
    try {
      this.#handlers[what](channels)
    } catch (err) {
      this.#log.warn({ err, channels }, `fastify-rooms: the shard subscriber's ${what} handler threw`)
    }
  }

  /** Drop a group that holds nothing and wants nothing. */
  #forget (group: SlotGroup): void {
    if (group.wanted.size > 0 || group.live.size > 0 || group.syncing || this.#groups.get(group.slot) !== group) return
    this.#healed(group)
    this.#groups.delete(group.slot)
    const shard = group.shard
    if (shard !== undefined) {
      shard.groups.delete(group)
      this.#release(shard)
    }
  }

  /** A connection no slot of ours uses any more is closed. */
  #release (shard: Shard): void {
    if (shard.groups.size > 0 || shard.lost) return
    shard.lost = true
    this.#shards.delete(shard.key)
    void shard.queue.finally(() => shard.redis.disconnect())
  }

  /** Run a command on a shard after the ones before it; one unanswered for `timeoutMs` costs the connection. */
  async #command (shard: Shard, work: () => Promise<unknown>): Promise<void> {
    const run = shard.queue.then(async () => {
      if (shard.lost) throw new Error(`the connection to ${shard.key} is gone`)
      try {
        await timed(work(), this.#timeoutMs)
      } catch (err) {
        if (err instanceof Timeout) shard.redis.disconnect()
        throw err
      }
    })
    shard.queue = run.catch(() => {})
    await run
  }

  #shardFor (key: string): Shard {
    const known = this.#shards.get(key)
    if (known !== undefined) return known
    const colon = key.lastIndexOf(':')
    const settings: RedisOptions = {
      ...this.#cluster.options.redisOptions,
      host: key.slice(0, colon),
      port: Number(key.slice(colon + 1)),
      connectionName: this.#name,
      // RESP3: CLIENT INFO is allowed on a subscribed connection (the count check).
      protocol: 3,
      keyPrefix: '',
      db: 0,
      lazyConnect: false,
      enableReadyCheck: false,
      enableOfflineQueue: true,
      connectTimeout: this.#timeoutMs,
      // A lost connection is replaced by a new one, and its channels reported broken first: never silently restored.
      retryStrategy: () => null,
      autoResubscribe: false,
      autoResendUnfulfilledCommands: false
    }
    const redis = new Redis(settings)
    const shard: Shard = { key, redis, groups: new Set(), queue: Promise.resolve(), lost: false }
    redis.on('smessageBuffer', (channel: Buffer, message: Buffer) => {
      const name = channel.toString()
      const group = this.#channels.get(name)
      // A message from a connection this slot has left is a leftover: the gap it belongs to is reported already.
      if (group?.shard !== shard) return
      try {
        this.#handlers.message(name, message)
      } catch (err) {
        this.#log.warn({ err, channel: name }, 'fastify-rooms: the shard subscriber\'s message handler threw')
      }
    })
    redis.on('error', (err: Error) => this.#log.debug({ err, shard: key }, 'fastify-rooms: shard subscriber connection error'))
    redis.on('close', () => this.#lost(shard))
    this.watchMoves(redis, () => this.#verify(shard))
    this.#shards.set(key, shard)
    return shard
  }

  #lost (shard: Shard): void {
    if (this.#shards.get(shard.key) === shard) this.#shards.delete(shard.key)
    const wasLost = shard.lost
    shard.lost = true
    if (this.#closed || shard.groups.size === 0) return
    if (!wasLost) this.#log.warn({ shard: shard.key }, 'fastify-rooms: lost a shard subscriber connection; resubscribing its channels')
    const groups = [...shard.groups]
    shard.groups.clear()
    for (const group of groups) {
      if (group.shard !== shard) continue
      group.shard = undefined
      const live = [...group.live]
      group.live.clear()
      this.#broke(group, live)
      // Its master may be failing over: ask the cluster where the slot went before the next attempt.
      group.failures = Math.max(group.failures, 1)
      this.#kick(group)
    }
  }

  /**
   * Compare the connection's subscription count with ours. Fewer means Redis
   * dropped some without our knowing which: the connection is replaced, so
   * all its channels are reported broken and subscribed again.
   */
  #verify (shard: Shard): void {
    if (shard.lost || this.#closed) return
    void this.#command(shard, async () => {
      const info = String(await shard.redis.call('CLIENT', 'INFO'))
      const theirs = Number(/ ssub=(\d+)/.exec(info)?.[1])
      let ours = 0
      for (const group of shard.groups) if (group.shard === shard) ours += group.live.size
      if (theirs !== ours && !shard.lost) {
        this.#log.warn({ shard: shard.key, theirs, ours }, 'fastify-rooms: a shard dropped subscriptions (slot moved?); resubscribing its channels')
        shard.redis.disconnect()
      }
    }).catch((err: unknown) => this.#log.debug({ err, shard: shard.key }, 'fastify-rooms: shard subscription check failed'))
  }

  /** Learn which master serves each slot, one question at a time however many slots ask. */
  async #refresh (): Promise<void> {
    this.#refreshing ??= (async () => {
      try {
        const reply = await timed(this.#cluster.cluster('SLOTS'), this.#timeoutMs)
        const owners = new Array<string | undefined>(SLOTS)
        for (const [first, last, master] of reply) {
          if (master === undefined) continue
          const [host, port] = master
          // A node that does not know its own address reports '': leave its slots unknown, asked again later.
          if (host === '') continue
          const key = this.#mapped(`${host}:${port}`)
          for (let slot = first; slot <= last; slot++) owners[slot] = key
        }
        this.#owners = owners
        this.#generation++
      } finally {
        this.#refreshing = undefined
      }
    })()
    await this.#refreshing
  }

  /** A node's address as this app reaches it: through the cluster's `natMap`, if any. */
  #mapped (key: string): string {
    const natMap = this.#cluster.options.natMap
    const mapped = typeof natMap === 'function' ? natMap(key) : natMap?.[key]
    return mapped == null ? key : `${mapped.host}:${mapped.port}`
  }
}
