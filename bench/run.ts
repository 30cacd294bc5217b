/**
 * `npm run bench`: the same workloads against fastify-rooms (memory, and Redis
 * with 2 instances when redis-server is installed), plain ws (stringify once,
 * and one pre-built frame for every socket) and Socket.IO 4, in one run and
 * one report. `--smoke` runs tiny sizes once (part of npm test, so it cannot rot).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { cpus, totalmem } from 'node:os'
import { Redis } from 'ioredis'
import type { Kind } from './client.js'

const smoke = process.argv.includes('--smoke')
const flag = (name: string): string | undefined => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3)
const reps = smoke ? 1 : Number(flag('reps') ?? 3)
const REDIS = '/usr/bin/redis-server'
const hasRedis = existsSync(REDIS)
const allKinds: Kind[] = ['rooms', 'rooms-quiet', ...(hasRedis ? ['rooms-redis' as const] : []), 'ws-stringify', 'ws-preframed', 'fastify-websocket', 'socketio']
// --kinds=a,b and --only=workload narrow a run while profiling; the report then has only those rows.
const kinds = flag('kinds')?.split(',') as Kind[] | undefined ?? allKinds
const label: Record<Kind, string> = {
  rooms: 'fastify-rooms (memory)',
  'rooms-quiet': 'fastify-rooms (memory, presenceEvents: false)',
  'rooms-redis': 'fastify-rooms (Redis, 2 instances)',
  'ws-stringify': 'ws, stringify once',
  'ws-preframed': 'ws, pre-framed',
  'fastify-websocket': 'Fastify + @fastify/websocket, same handler as plain ws',
  socketio: 'Socket.IO 4'
}

interface Workload { name: string, title: string, rooms: number, members: number, payloadBytes: number, durationMs: number, window: number, kind: 'fanout' | 'connections', rate?: number }
const workloads: Workload[] = smoke
  ? [
      { name: 'fanout-1x1000', title: 'Fan-out, 1 room x 10 members (smoke)', rooms: 1, members: 10, payloadBytes: 64, durationMs: 200, window: 4, kind: 'fanout' },
      { name: 'fanout-100x10', title: 'Fan-out, 5 rooms x 4 members (smoke)', rooms: 5, members: 4, payloadBytes: 64, durationMs: 200, window: 2, kind: 'fanout' },
      { name: 'conn-5000', title: '50 idle connections (smoke)', rooms: 5, members: 10, payloadBytes: 64, durationMs: 200, window: 1, kind: 'connections', rate: 20 }
    ]
  : [
      { name: 'fanout-1x1000', title: 'Fan-out, 1 room x 1,000 members', rooms: 1, members: 1000, payloadBytes: 64, durationMs: 4000, window: 16, kind: 'fanout' },
      { name: 'fanout-100x10', title: 'Fan-out, 100 rooms x 10 members', rooms: 100, members: 10, payloadBytes: 64, durationMs: 4000, window: 2, kind: 'fanout' },
      { name: 'conn-5000', title: '5,000 idle connections, 100 per room', rooms: 50, members: 100, payloadBytes: 64, durationMs: 2000, window: 1, kind: 'connections', rate: 100 },
      // 19,000, not 20,000: this machine caps every process at 20,000 open files and cannot raise it.
      { name: 'conn-19000', title: '19,000 connections, 1,000 per room; 100 msg/s into one room', rooms: 19, members: 1000, payloadBytes: 64, durationMs: 3000, window: 1, kind: 'connections', rate: 100 }
    ]

/** Children get a higher file limit: 20,000 sockets need more than the default. */
function node (args: string[]): ChildProcess {
  const command = `ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "${process.execPath}" ${args.map((a) => `'${a}'`).join(' ')}`
  return spawn('bash', ['-c', command], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] })
}

async function request<T> (child: ChildProcess, message: unknown): Promise<T> {
  return await new Promise((resolve, reject) => {
    child.once('message', (reply: T & { error?: string }) => reply.error !== undefined ? reject(new Error(reply.error)) : resolve(reply))
    child.send(message as never)
  })
}

async function startServer (kind: Kind, redisUrl: string): Promise<{ child: ChildProcess, port: number }> {
  const child = node(['--expose-gc', '--import=tsx', 'bench/servers.ts', kind, redisUrl])
  const port = await new Promise<number>((resolve, reject) => {
    let out = ''
    child.stdout!.on('data', (chunk: Buffer) => { out += chunk.toString(); const m = /ready (\d+)/.exec(out); if (m !== null) resolve(Number(m[1])) })
    child.once('exit', (code) => reject(new Error(`${kind} server exited with ${code}`)))
  })
  return { child, port }
}

interface Stats { cpu: { user: number, system: number }, rss: number }
async function stats (servers: ChildProcess[]): Promise<{ cpuMs: number, rss: number }> {
  const all = await Promise.all(servers.map(async (s) => await request<Stats>(s, { cmd: 'stats' })))
  return { cpuMs: all.reduce((sum, s) => sum + (s.cpu.user + s.cpu.system) / 1000, 0), rss: all.reduce((sum, s) => sum + s.rss, 0) }
}

type Result = Record<string, number>

async function runOnce (workload: Workload, kind: Kind, redis: Redis | undefined, redisUrl: string): Promise<Result> {
  if (kind === 'rooms-redis') await redis!.flushall()
  const servers = await Promise.all(Array.from({ length: kind === 'rooms-redis' ? 2 : 1 }, async () => await startServer(kind, redisUrl)))
  const loadgen = node(['--import=tsx', 'bench/loadgen.ts'])
  try {
    const before = await stats(servers.map((s) => s.child))
    const setup = await request<{ connectMs: number }>(loadgen, { cmd: 'setup', kind, ports: servers.map((s) => s.port), rooms: workload.rooms, members: workload.members, payloadBytes: workload.payloadBytes })
    const connected = await stats(servers.map((s) => s.child))
    const total = workload.rooms * workload.members
    const go = await request<Result>(loadgen, workload.kind === 'fanout'
      ? { cmd: 'go', durationMs: workload.durationMs, window: workload.window }
      : { cmd: 'go', durationMs: workload.durationMs, window: 1, rate: workload.rate, onlyRoom: 0 })
    const after = await stats(servers.map((s) => s.child))
    return {
      ...go,
      deliveriesPerSec: go.deliveries! / (go.wallMs! / 1000),
      deliveriesPerCpuSec: go.deliveries! / ((after.cpuMs - connected.cpuMs) / 1000),
      rssPerConnKB: (connected.rss - before.rss) / total / 1024,
      connectsPerSec: total / (setup.connectMs / 1000)
    }
  } finally {
    loadgen.kill()
    for (const s of servers) s.child.kill()
  }
}

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)] as number
}
const fmt = (n: number, digits = 0): string => Number.isFinite(n) ? n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits }) : 'n/a'

let redisProcess: ChildProcess | undefined
let redis: Redis | undefined
let redisUrl = ''
if (hasRedis) {
  const port = 20000 + Math.floor(Math.random() * 20000)
  redisProcess = spawn(REDIS, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
  redisUrl = `redis://127.0.0.1:${port}`
  redis = new Redis(redisUrl, { retryStrategy: (n) => (n > 50 ? null : 50) })
  redis.on('error', () => {}) // refused until redis-server has started; it retries
  await new Promise((resolve) => redis!.once('ready', resolve))
}

const lines: string[] = []
const say = (line = ''): void => { lines.push(line); console.log(line) }
say(`# fastify-rooms benchmark${smoke ? ' (smoke)' : ''}`)
say()
say(`${new Date().toISOString().slice(0, 10)}, Node ${process.version}, ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB. Medians of ${reps} runs; server and load generator are separate processes.${hasRedis ? '' : ' redis-server not installed: the Redis rows are left out.'}`)
let failures = 0
try {
  for (const workload of workloads.filter((w) => flag('only') === undefined || w.name === flag('only'))) {
    const results = new Map<Kind, Result>()
    for (const kind of kinds) {
      const runs: Result[] = []
      for (let r = 0; r < reps; r++) runs.push(await runOnce(workload, kind, redis, redisUrl))
      const merged: Result = {}
      for (const key of Object.keys(runs[0]!)) merged[key] = median(runs.map((run) => run[key]!))
      merged.errors = Math.max(...runs.map((run) => run.errors!))
      if (merged.errors > 0 || runs.some((run) => run.deliveries !== run.expected)) failures++
      results.set(kind, merged)
    }
    say()
    say(`## ${workload.title}`)
    say()
    if (workload.kind === 'fanout') {
      say('| server | deliveries/s | deliveries per server CPU-s | p50 ms | p99 ms | every message once, in order |')
      say('|---|---:|---:|---:|---:|---|')
      for (const [kind, r] of results) say(`| ${label[kind]} | ${fmt(r.deliveriesPerSec!)} | ${fmt(r.deliveriesPerCpuSec!)} | ${fmt(r.p50!, 1)} | ${fmt(r.p99!, 1)} | ${r.errors === 0 && r.deliveries === r.expected ? 'yes' : `NO (${r.errors} errors, ${r.deliveries}/${r.expected})`} |`)
      const ours = results.get('rooms')?.deliveriesPerCpuSec ?? NaN
      say()
      say(`fastify-rooms (memory), deliveries per server CPU-s: ${(['ws-preframed', 'ws-stringify', 'socketio'] as Kind[]).filter((k) => results.has(k)).map((k) => `${fmt(ours / results.get(k)!.deliveriesPerCpuSec!, 2)}x ${label[k]}`).join(', ')}.`)
    } else {
      say(`| server | RSS per connection, KB | connects/s | p99 ms at ${workload.rate} msg/s into ${fmt(workload.members)} members | correct |`)
      say('|---|---:|---:|---:|---|')
      for (const [kind, r] of results) say(`| ${label[kind]} | ${fmt(r.rssPerConnKB!, 1)} | ${fmt(r.connectsPerSec!)} | ${fmt(r.p99!, 1)} | ${r.errors === 0 && r.deliveries === r.expected ? 'yes' : 'NO'} |`)
      const ours = results.get('rooms') ?? {}
      const others = (['ws-stringify', 'fastify-websocket', 'socketio'] as Kind[]).filter((k) => results.has(k))
      say()
      say(`fastify-rooms (memory): RSS per connection ${others.map((k) => `${fmt(ours.rssPerConnKB! / results.get(k)!.rssPerConnKB!, 2)}x ${label[k]}`).join(', ')}; connect rate ${others.map((k) => `${fmt(ours.connectsPerSec! / results.get(k)!.connectsPerSec!, 2)}x ${label[k]}`).join(', ')}.`)
    }
  }
} finally {
  redis?.disconnect()
  redisProcess?.kill()
}
say()
say('Reproduce: `npm run bench` (report also in bench/results/latest.md).')
mkdirSync('bench/results', { recursive: true })
writeFileSync(`bench/results/${smoke ? 'smoke' : 'latest'}.md`, lines.join('\n') + '\n')
if (failures > 0) {
  console.error(`${failures} runs delivered wrongly`)
  process.exitCode = 1
}
