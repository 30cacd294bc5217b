/**
 * Benchmark servers: `node --expose-gc --import=tsx bench/servers.ts KIND[,KIND...] REDIS_URL PRESENCE_INTERVAL_MS [CLUSTER_SEEDS [WAIT_REPLICAS [REDIS_WAIT_REPLICAS [PARTITIONS]]]]`
 * (CLUSTER_SEEDS: `host:port,...` of the Redis Cluster, for `rooms-cluster`;
 * WAIT_REPLICAS its `waitReplicas`, REDIS_WAIT_REPLICAS the one Redis's, PARTITIONS the cluster's `partitions`, the adapter's default if empty).
 * Prints `ready KIND PORT` for each kind, then `ready`; answers `{ cmd: 'stats' }`
 * over IPC with its CPU time and memory (after a full GC), so the runner
 * measures the server alone. A full run starts one kind per process; the smoke
 * run puts every kind in one process to stay fast (its figures mean nothing).
 *
 * Every kind speaks the same tiny dialect of the fastify-rooms protocol (join ->
 * joined, publish -> message to every member + ack) except Socket.IO, which
 * speaks its own events over engine.io v4. `rooms-redis` and `socketio-redis`
 * run as two processes on one redis-server, `rooms-cluster` as two processes
 * on a Redis Cluster; a room's offsets come from its publisher's instance in
 * the Socket.IO one (each room has one publisher).
 */
import { createServer } from 'node:http'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { getHeapSpaceStatistics, writeHeapSnapshot } from 'node:v8'
import Fastify from 'fastify'
import { WebSocketServer, WebSocket } from 'ws'
import websocket from '@fastify/websocket'
import rooms, { redisAdapter } from '../src/index.js'
import { SettingsSchema } from '../src/options.js'
import { coalescedServer } from './coalesced.js'

const kinds = (process.argv[2] ?? '').split(',')
const redisUrl = process.argv[3]
const presenceIntervalMs = Number(process.argv[4] ?? 50)
const clusterSeeds = (process.argv[5] ?? '').split(',').filter((s) => s !== '').map((s) => {
  const [host, port] = s.split(':')
  return { host: host!, port: Number(port) }
})
const waitReplicas = process.argv[6] === undefined || process.argv[6] === '' ? undefined : Number(process.argv[6])
/** The one Redis's `waitReplicas` (`--redis-replica`): it waits for its replica as the cluster's shards do. */
const redisWaitReplicas = process.argv[7] === undefined || process.argv[7] === '' ? undefined : Number(process.argv[7])
/** The cluster's `partitions` (`--partitions`). */
const partitions = process.argv[8] === undefined || process.argv[8] === '' ? undefined : Number(process.argv[8])
const gc = (globalThis as { gc?: () => void }).gc
/**
 * Every server's listen backlog (Node's default is 511; the kernel caps it at net.core.somaxconn, 4096 here).
 * In a join storm a server busy writing a diff to 10,000 members accepts nothing for a turn: with 511 its
 * accept queue reached 469 at 500 connections a second, and an overflow drops a connection's handshake
 * (the client retries a second later or gets a reset): that measured the queue's size, not the server.
 */
const BACKLOG = 4096

/** Whether this build of the plugin batches presence (protocol v2's `presenceIntervalMs`). */
export const hasPresenceInterval = 'presenceIntervalMs' in SettingsSchema.properties

async function start (kind: string): Promise<number> {
  switch (kind) {
    case 'rooms':
    case 'rooms-quiet':
    case 'rooms-nohistory':
    case 'rooms-redis':
    case 'rooms-cluster': {
      const app = Fastify({ logger: false })
      await app.register(rooms, {
        maxConnections: 100_000,
        maxMembersPerRoom: 100_000,
        maxFramesPerSecond: 1e9,
        frameBurst: 1e9,
        maxBufferedBytes: 64 * 1024 * 1024,
        heartbeatMs: 60_000,
        historySize: kind === 'rooms-nohistory' ? 0 : 100,
        presenceEvents: kind !== 'rooms-quiet',
        // The cluster with the adapter's defaults (64 partitions, waitReplicas 1), what a deployment gets, unless --partitions or --wait-replicas say otherwise.
        adapter: kind === 'rooms-redis' ? redisAdapter({ url: redisUrl as string, ...(redisWaitReplicas === undefined ? {} : { waitReplicas: redisWaitReplicas }) }) : kind === 'rooms-cluster' ? redisAdapter({ cluster: clusterSeeds, ...(waitReplicas === undefined ? {} : { waitReplicas }), ...(partitions === undefined ? {} : { partitions }) }) : undefined,
        ...(hasPresenceInterval ? { presenceIntervalMs } : {})
      })
      await app.listen({ port: 0, host: '127.0.0.1', backlog: BACKLOG })
      return (app.server.address() as { port: number }).port
    }
    case 'ws-stringify':
    case 'ws-preframed':
    case 'ws-coalesced':
    case 'ws-coalesced-from': {
      const http = createServer()
      const wss = new WebSocketServer({ server: http, perMessageDeflate: false })
      wss.on('connection', kind.startsWith('ws-coalesced') ? coalescedServer(presenceIntervalMs, kind === 'ws-coalesced-from') : mapOfSets(kind === 'ws-preframed'))
      await new Promise<void>((resolve) => http.listen({ port: 0, host: '127.0.0.1', backlog: BACKLOG }, resolve))
      return (http.address() as { port: number }).port
    }
    case 'fastify-websocket':
    case 'fastify-coalesced': {
      // The stack fastify-rooms stands on, with a plain handler: what Fastify and @fastify/websocket cost
      // alone, under the stringify-once handler or the coalescing baseline's (which does a join's work).
      const app = Fastify({ logger: false })
      await app.register(websocket)
      const handle = kind === 'fastify-coalesced' ? coalescedServer(presenceIntervalMs) : mapOfSets(false)
      app.get('/', { websocket: true }, (socket) => handle(socket))
      await app.listen({ port: 0, host: '127.0.0.1', backlog: BACKLOG })
      return (app.server.address() as { port: number }).port
    }
    case 'socketio':
    case 'socketio-redis': {
      const { Server } = await import('socket.io')
      const http = createServer()
      const io = new Server(http, { transports: ['websocket'], serveClient: false, pingInterval: 60_000, pingTimeout: 60_000 })
      if (kind === 'socketio-redis') {
        // The standard Redis adapter: every broadcast is one PUBLISH that every instance hears and delivers to its own members.
        const { createAdapter } = await import('@socket.io/redis-adapter')
        const { Redis } = await import('ioredis')
        const pub = new Redis(redisUrl as string)
        io.adapter(createAdapter(pub, pub.duplicate()))
      }
      const offsets = new Map<string, number>()
      io.on('connection', (socket) => {
        socket.on('join', (room: string, ack: () => void) => { void socket.join(room); ack() })
        socket.on('publish', (room: string, data: unknown, ack: (offset: number) => void) => {
          const offset = (offsets.get(room) ?? 0) + 1
          offsets.set(room, offset)
          io.to(room).emit('message', { type: 'message', room, data, offset })
          ack(offset)
        })
      })
      await new Promise<void>((resolve) => http.listen({ port: 0, host: '127.0.0.1', backlog: BACKLOG }, resolve))
      return (http.address() as { port: number }).port
    }
    default:
      throw new Error(`unknown server kind ${String(kind)}`)
  }
}

/**
 * A Map of Sets without presence or member lists: stringify once per broadcast
 * and `ws.send` it, or build one frame and write it to every raw socket (one
 * write per socket per message, no corking).
 */
function mapOfSets (preframed: boolean): (ws: WebSocket) => void {
  const members = new Map<string, Set<WebSocket>>()
  const offsets = new Map<string, number>()
  return (ws) => {
    ws.send(JSON.stringify({ type: 'welcome' }))
    const mine = new Set<string>()
    ws.on('message', (raw) => {
      const frame = JSON.parse(raw.toString())
      if (frame.type === 'join') {
        let set = members.get(frame.room)
        if (set === undefined) members.set(frame.room, set = new Set())
        set.add(ws)
        mine.add(frame.room)
        ws.send(JSON.stringify({ type: 'joined', room: frame.room, id: frame.id }))
      } else if (frame.type === 'publish') {
        const offset = (offsets.get(frame.room) ?? 0) + 1
        offsets.set(frame.room, offset)
        const text = JSON.stringify({ type: 'message', room: frame.room, data: frame.data, offset, ts: Date.now() })
        const set = members.get(frame.room) ?? new Set()
        if (preframed) {
          const payload = Buffer.from(text)
          const sender = (WebSocket as unknown as { Sender: { frame: (data: Buffer, options: object) => Buffer[] } }).Sender
          const frameBytes = Buffer.concat(sender.frame(payload, { fin: true, opcode: 1, mask: false, readOnly: false, rsv1: false }))
          for (const member of set) (member as unknown as { _socket: { write: (b: Buffer) => void } })._socket.write(frameBytes)
        } else {
          for (const member of set) member.send(text)
        }
        ws.send(JSON.stringify({ type: 'ack', id: frame.id, room: frame.room, offset }))
      }
    })
    ws.on('close', () => { for (const room of mine) members.get(room)?.delete(ws) })
  }
}

for (const kind of kinds) console.log(`ready ${kind} ${await start(kind)}`)
// How long the event loop was late (a long turn: a join waits behind a 10,000-member write): read and reset by `stats`.
const loopDelay = monitorEventLoopDelay({ resolution: 10 })
loopDelay.enable()
process.on('message', async (message: { rid: number, cmd: string, gc?: boolean, settleMs?: number, path?: string, resetLoopDelay?: boolean }) => {
  if (message.cmd === 'snapshot') {
    // For bench/heap-diff.ts: what objects the server holds, after the same gcs as a memory reading.
    for (let i = 0; i < 6; i++) gc?.()
    process.send?.({ rid: message.rid, path: writeHeapSnapshot(message.path) })
    return
  }
  if (message.cmd === 'stats') {
    if (message.gc === true) {
      gc?.()
      // Idle, V8's memory reducer shrinks the young generation and returns free pages, some seconds
      // after a full gc: what an idle server holds is read once it has.
      if (message.settleMs !== undefined) await new Promise((resolve) => setTimeout(resolve, message.settleMs))
      gc?.()
      gc?.()
    }
    const { rss, heapUsed, heapTotal, external } = process.memoryUsage()
    const spaces = Object.fromEntries(getHeapSpaceStatistics().map((s) => [s.space_name, s.space_size]))
    const loop = { maxMs: loopDelay.max / 1e6, p99Ms: loopDelay.percentile(99) / 1e6 }
    if (message.resetLoopDelay === true) loopDelay.reset()
    process.send?.({ rid: message.rid, cpu: process.cpuUsage(), rss, heapUsed, heapTotal, external, spaces, loop })
  }
})
process.on('disconnect', () => process.exit(0))
// Stopped by the runner: exit the ordinary way, so that a `--cpu-prof` profile is written.
process.on('SIGTERM', () => process.exit(0))
console.log('ready')
