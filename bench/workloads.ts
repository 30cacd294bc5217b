/**
 * What `npm run bench` measures: the workloads, their sizes (full and smoke),
 * the servers each one runs against, and the targets of issue #11.
 */
import type { Kind } from './client.js'

export type Group = 'fanout' | 'join' | 'memory' | 'storm' | 'latency' | 'shard'

export interface Workload {
  name: string
  title: string
  group: Group
  kinds: Kind[]
  rooms: number
  /** Members per room (for a storm: the members already in the room). */
  members: number
  /** Fan-out: publishes in flight per publisher; latency: the publish rate into room 0. */
  window?: number
  /** Shard: each room's publisher sends this many messages (a fixed total), `durationMs` only bounds it. */
  messages?: number
  rate?: number
  durationMs?: number
  /** Storm: joins into the full room, at `joinRate` per second. */
  joins?: number
  joinRate?: number
  /** Runs per server; the long join storm runs once unless --reps says more. */
  reps?: number
  /** Not in a plain `npm run bench`; run it with --only. */
  optIn?: boolean
  /** Servers run only when --kinds names them (and in the smoke run). */
  optInKinds?: Kind[]
}

export const labels: Record<Kind, string> = {
  rooms: 'fastify-rooms (memory)',
  'rooms-quiet': 'fastify-rooms (memory, presenceEvents: false)',
  'rooms-nohistory': 'fastify-rooms (memory, historySize: 0)',
  'rooms-redis': 'fastify-rooms (Redis, 2 instances)',
  'rooms-cluster': 'fastify-rooms (Redis Cluster of 3 masters + 3 replicas, 2 instances)',
  'ws-stringify': 'ws, stringify once',
  'ws-preframed': 'ws, pre-framed',
  'ws-coalesced': 'ws, pre-framed and coalesced',
  'ws-coalesced-from': 'ws, pre-framed and coalesced, with `from` in each message',
  'fastify-websocket': 'Fastify + @fastify/websocket, same handler as plain ws',
  'fastify-coalesced': 'Fastify + @fastify/websocket, the pre-framed and coalesced handler',
  socketio: 'Socket.IO 4',
  'socketio-redis': 'Socket.IO 4, @socket.io/redis-adapter (2 instances)'
}

/** Servers that run as two instances sharing Redis: one redis-server, or the cluster (`clusterKinds`). */
export const redisKinds: Kind[] = ['rooms-redis', 'socketio-redis', 'rooms-cluster']
/** Servers on the bench's own Redis Cluster (3 masters, 3 replicas), started only when one of them runs. */
export const clusterKinds: Kind[] = ['rooms-cluster']

/** The plain ws servers; a ratio's baseline is the strongest of those a workload runs. */
export const plainWs: Kind[] = ['ws-stringify', 'ws-preframed', 'ws-coalesced']
/** Servers that send presence, so their members' counts must converge. */
export const presenceKinds: Kind[] = ['rooms', 'rooms-redis', 'rooms-cluster', 'ws-coalesced', 'ws-coalesced-from', 'fastify-coalesced']

// rooms-nohistory (opt-in) shows what keeping history for recovery costs the fan-out: the baselines keep none.
// ws-coalesced-from (opt-in) is the coalescing baseline with the publisher as `from` in each message, as
// fastify-rooms sends it: what that costs the baseline's server (and its load generator, which reads more).
// It is not one of the plain ws baselines a ratio is taken against.
const fanoutKinds: Kind[] = ['rooms', 'rooms-nohistory', 'rooms-redis', 'ws-stringify', 'ws-preframed', 'ws-coalesced', 'ws-coalesced-from', 'fastify-websocket', 'socketio', 'socketio-redis']
// Issue #14's cluster targets are on these two shapes only.
const scaledFanoutKinds: Kind[] = [...fanoutKinds, 'rooms-cluster']
// The storm with Redis takes many minutes at full size on current code: run it with --kinds=rooms-redis.
// Only ws-coalesced does the same work as fastify-rooms on a join (member page, presence diffs).
// fastify-coalesced (opt-in) is the coalescing baseline's handler on Fastify and @fastify/websocket, the stack
// fastify-rooms must stand on: what that stack alone adds to a connect and join.
const joinKinds: Kind[] = ['rooms', 'rooms-quiet', 'rooms-redis', 'ws-coalesced', 'fastify-coalesced']
const memoryKinds: Kind[] = ['rooms', 'rooms-quiet', 'rooms-redis', 'ws-stringify', 'ws-coalesced', 'fastify-websocket', 'socketio']
const stormKinds: Kind[] = ['rooms', 'rooms-redis', 'ws-coalesced']

export function workloads (smoke: boolean, scale = 1): Workload[] {
  const s = <T>(full: T, tiny: T): T => smoke ? tiny : full
  const all: Workload[] = [
    { name: 'fanout-1x1000', title: s('Fan-out, 1 room x 1,000 members, window 20', 'Fan-out, 1 room x 10 members, window 20 (smoke)'), group: 'fanout', kinds: scaledFanoutKinds, rooms: 1, members: s(1000, 10), window: 20, durationMs: s(4000, 150), optInKinds: ['rooms-nohistory', 'ws-coalesced-from'] },
    { name: 'fanout-100x10', title: s('Fan-out, 100 rooms x 10 members, window 20', 'Fan-out, 5 rooms x 4 members, window 20 (smoke)'), group: 'fanout', kinds: scaledFanoutKinds, rooms: s(100, 5), members: s(10, 4), window: 20, durationMs: s(4000, 150), optInKinds: ['rooms-nohistory', 'ws-coalesced-from'] },
    // The same publishes on one Redis and on the cluster, to compare each redis-server's CPU: a fixed count, not a duration.
    { name: 'shard-1000', title: s('Sharding: 1,000 rooms x 4 members, a publisher per room, 30 messages each (30,000), window 2', 'Sharding: 20 rooms x 2 members, 5 messages each, window 2 (smoke)'), group: 'shard', kinds: ['rooms-redis', 'rooms-cluster'], rooms: s(1000, 20), members: s(4, 2), window: 2, messages: s(30, 5), durationMs: s(120_000, 20_000) },
    // Clients alternate between the two instances and rooms take every n-th client: with an even number of rooms a room's members
    // are all on one instance, so each publish reaches one. An odd number puts half on each: the difference is what receiving costs.
    { name: 'shard-999-spread', title: s('Sharding, each room on both instances: 999 rooms x 4 members (2 on each), 30 messages each, window 2', 'Sharding, each room on both instances: 19 rooms x 2 members, 5 messages each, window 2 (smoke)'), group: 'shard', kinds: ['rooms-redis', 'rooms-cluster'], rooms: s(999, 19), members: s(4, 2), window: 2, messages: s(30, 5), durationMs: s(120_000, 20_000), optIn: true },
    { name: 'fanout-window1', title: s('Fan-out, 1 room x 1,000 members, window 1 (one message in flight)', 'Fan-out, 1 room x 10 members, window 1 (smoke)'), group: 'fanout', kinds: fanoutKinds, rooms: 1, members: s(1000, 10), window: 1, durationMs: s(4000, 150), optInKinds: ['rooms-nohistory', 'ws-coalesced-from'] },
    { name: 'join-100', title: s('Connect and join, 5,000 connections into rooms of 100, presence on', 'Connect and join, 20 connections into rooms of 10 (smoke)'), group: 'join', kinds: joinKinds, rooms: s(50, 2), members: s(100, 10), optInKinds: ['fastify-coalesced'] },
    { name: 'join-1000', title: s('Connect and join, 5,000 connections into rooms of 1,000, presence on', 'Connect and join, 30 connections into one room (smoke)'), group: 'join', kinds: joinKinds, rooms: s(5, 1), members: s(1000, 30), optInKinds: ['fastify-coalesced'] },
    { name: 'memory-10000', title: s('10,000 idle joined connections, rooms of 100', '50 idle joined connections (smoke)'), group: 'memory', kinds: memoryKinds, rooms: s(100, 5), members: s(100, 10) },
    { name: 'storm', title: s('Join storm: 5,000 joins in 10 s into a room of 10,000 members, presence on', 'Join storm: 20 joins in 0.1 s into a room of 40 members (smoke)'), group: 'storm', kinds: stormKinds, rooms: 1, members: s(10_000, 40), joins: s(5000, 20), joinRate: s(500, 200), reps: 1, optInKinds: ['rooms-redis'] },
    // 19,000, not 20,000: this machine caps every process at 20,000 open files and cannot raise it.
    { name: 'latency-19000', title: s('19,000 connections, 1,000 per room; 100 msg/s into one room', '50 connections, 10 per room; 20 msg/s into one room (smoke)'), group: 'latency', kinds: fanoutKinds, rooms: s(19, 5), members: s(1000, 10), rate: s(100, 20), durationMs: s(3000, 150), optIn: true }
  ]
  if (scale === 1) return all
  return all.map((w) => ({
    ...w,
    title: `${w.title} (scaled by ${scale}: ${Math.max(1, Math.round(w.members * scale))} members per room${w.joins === undefined ? '' : `, ${Math.max(1, Math.round(w.joins * scale))} joins`})`,
    members: Math.max(1, Math.round(w.members * scale)),
    joins: w.joins === undefined ? undefined : Math.max(1, Math.round(w.joins * scale))
  }))
}
