import root, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { memoryAdapter, redisAdapter, type Adapter, type RoomsOptions } from '../../src/index.js'
import { startApp, type Started } from './server.js'
import { skipRedis, startRedis, type RedisServer } from './redis.js'
import { skipCluster, startCluster, type RedisCluster } from './cluster.js'
import { waitUntil } from './waiters.js'

export type AdapterKind = 'memory' | 'redis' | 'cluster'

/**
 * The app as a test sees it: one memory node, or two Redis-backed instances
 * sharing a real redis-server, or two instances on a real Redis Cluster of 3
 * masters and 3 replicas. Tests that put their clients on `node(0)`,
 * `node(1)`, ... exercise the cross-node path on Redis and the same contract
 * on one node in memory.
 */
export interface Deployment {
  kind: AdapterKind
  nodes: Started[]
  /** Instance `i` (modulo the number of instances: always the one app in memory). */
  node: (i: number) => Started
  /** The first instance's app, for `app.rooms` calls. */
  app: FastifyInstance
  /**
   * Resolves once the cluster has forgotten a connection that closed: its node
   * saw it go and the store answered the leave of every room it was in. For
   * departures no frame announces (a user's other tab is still there, or
   * presence events are off); call it after closing or terminating the socket.
   */
  gone: (socket: { welcome: { connectionId: string } }) => Promise<void>
}

/** Build the app of one instance; `index` is the instance's number, for per-instance setup. */
export type Setup = (app: FastifyInstance, index: number) => unknown

export type Deploy = (options?: RoomsOptions, setup?: Setup) => Promise<Deployment>

let redis: Promise<RedisServer> | undefined
let cluster: Promise<RedisCluster> | undefined
let prefixes = 0

/** One redis-server for the whole test file, started on first use and killed when the file ends. */
async function sharedRedis (): Promise<RedisServer> {
  redis ??= startRedis(root)
  return await redis
}

/** One Redis Cluster for the whole test file, likewise. */
async function sharedCluster (): Promise<RedisCluster> {
  cluster ??= startCluster(root)
  return await cluster
}

/**
 * Run the same test against every adapter: `memory` (one node), `redis`
 * (two instances on a real redis-server) and `cluster` (two instances on a
 * real Redis Cluster). Each deployment gets its own key prefix, so tests of
 * one file never see each other's rooms. `kinds` narrows it, for behaviour
 * that differs by design (say why where it is used).
 */
export function eachAdapter (t: Test, name: string, fn: (t: Test, deploy: Deploy) => Promise<void>, kinds: readonly AdapterKind[] = ['memory', 'redis', 'cluster']): void {
  for (const kind of kinds) {
    t.test(`${name} [${kind}]`, { skip: kind === 'redis' ? skipRedis : kind === 'cluster' ? skipCluster : false }, async (t) => {
      await fn(t, async (options = {}, setup) => await deploy(t, kind, options, setup))
    })
  }
}

async function deploy (t: Test, kind: AdapterKind, options: RoomsOptions, setup?: Setup): Promise<Deployment> {
  if (kind !== 'memory' && options.adapter !== undefined) throw new TypeError('deploy() chooses the Redis adapter itself: a test that passes its own adapter is memory-only (use startApp).')
  const memberships = new Memberships()
  const count = kind === 'memory' ? 1 : 2
  const server = kind === 'redis' ? await sharedRedis() : undefined
  const seeds = kind === 'cluster' ? (await sharedCluster()).seeds : undefined
  const keyPrefix = `t${++prefixes}:`
  const nodes: Started[] = []
  for (let i = 0; i < count; i++) {
    const adapter = server !== undefined
      ? redisAdapter({ url: server.url, keyPrefix })
      : seeds !== undefined ? redisAdapter({ cluster: seeds, keyPrefix }) : options.adapter ?? memoryAdapter()
    const perInstance = setup === undefined ? undefined : async (app: FastifyInstance) => await setup(app, i)
    nodes.push(await startApp(t, { ...options, adapter: memberships.watch(adapter) }, perInstance))
  }
  return {
    kind,
    nodes,
    node: (i) => nodes[i % nodes.length] as Started,
    app: (nodes[0] as Started).app,
    gone: async (socket) => await memberships.gone(socket.welcome.connectionId)
  }
}

/** How long `gone` may wait (a guard, not a synchronisation: the same as a frame wait). */
const GONE_MS = 10_000

/**
 * The rooms each connection is in, as the nodes told their adapters, and the
 * leaves the store has not answered yet. It only watches the real adapter's
 * calls and passes every call through unchanged.
 */
class Memberships {
  private readonly rooms = new Map<string, Set<string>>()
  private readonly leaving = new Map<string, number>()
  private readonly waiters = new Set<() => void>()

  watch (adapter: Adapter): Adapter {
    const join = async (room: string, connectionId: string, ...rest: unknown[]): Promise<unknown> => {
      const result = await (adapter.join as (...args: unknown[]) => Promise<unknown>).call(adapter, room, connectionId, ...rest)
      let rooms = this.rooms.get(connectionId)
      if (rooms === undefined) this.rooms.set(connectionId, rooms = new Set())
      rooms.add(room)
      return result
    }
    const leave = async (room: string, connectionId: string, ...rest: unknown[]): Promise<unknown> => {
      this.rooms.get(connectionId)?.delete(room)
      this.leaving.set(connectionId, (this.leaving.get(connectionId) ?? 0) + 1)
      try {
        return await (adapter.leave as (...args: unknown[]) => Promise<unknown>).call(adapter, room, connectionId, ...rest)
      } finally {
        this.leaving.set(connectionId, (this.leaving.get(connectionId) ?? 1) - 1)
        for (const wake of [...this.waiters]) wake()
      }
    }
    // Bound to the adapter itself, so its own fields (private ones included) work as without the watch.
    return new Proxy(adapter, {
      get: (target, key) => {
        if (key === 'join') return join
        if (key === 'leave') return leave
        const value = Reflect.get(target, key, target) as unknown
        return typeof value === 'function' ? value.bind(target) : value
      }
    })
  }

  async gone (connectionId: string): Promise<void> {
    const done = (): boolean => (this.rooms.get(connectionId)?.size ?? 0) === 0 && (this.leaving.get(connectionId) ?? 0) === 0
    await waitUntil(this.waiters, done, GONE_MS, () => `timed out waiting until connection ${connectionId} left ${[...this.rooms.get(connectionId) ?? []].join(', ')}`)
  }
}
