import root, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { redisAdapter, type RoomsOptions } from '../../src/index.js'
import { startApp, type Started } from './server.js'
import { skipRedis, startRedis, type RedisServer } from './redis.js'

export type AdapterKind = 'memory' | 'redis'

/**
 * The app as a test sees it: one memory node, or two Redis-backed instances
 * sharing a real redis-server. Tests that put their clients on `node(0)`,
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
}

export type Deploy = (options?: RoomsOptions, setup?: (app: FastifyInstance) => unknown) => Promise<Deployment>

let redis: Promise<RedisServer> | undefined
let prefixes = 0

/** One redis-server for the whole test file, started on first use and killed when the file ends. */
async function sharedRedis (): Promise<RedisServer> {
  redis ??= startRedis(root)
  return await redis
}

/**
 * Run the same test against every adapter: `memory` (one node) and `redis`
 * (two instances on a real redis-server). Each deployment gets its own key
 * prefix, so tests of one file never see each other's rooms.
 */
export function eachAdapter (t: Test, name: string, fn: (t: Test, deploy: Deploy) => Promise<void>): void {
  for (const kind of ['memory', 'redis'] as const) {
    t.test(`${name} [${kind}]`, { skip: kind === 'redis' ? skipRedis : false }, async (t) => {
      await fn(t, async (options = {}, setup) => await deploy(t, kind, options, setup))
    })
  }
}

async function deploy (t: Test, kind: AdapterKind, options: RoomsOptions, setup?: (app: FastifyInstance) => unknown): Promise<Deployment> {
  if (kind === 'memory') {
    const only = await startApp(t, options, setup)
    return { kind, nodes: [only], node: () => only, app: only.app }
  }
  const server = await sharedRedis()
  const keyPrefix = `t${++prefixes}:`
  const nodes: Started[] = []
  for (let i = 0; i < 2; i++) nodes.push(await startApp(t, { ...options, adapter: redisAdapter({ url: server.url, keyPrefix }) }, setup))
  return { kind, nodes, node: (i) => nodes[i % nodes.length] as Started, app: (nodes[0] as Started).app }
}
