/**
 * `npm run bench`: every workload of bench/workloads.ts against fastify-rooms
 * and the plain ws (and Socket.IO) baselines, in one run and one report with
 * each ratio against the strongest baseline and the targets of issue #11.
 * `--smoke` runs tiny sizes once with every server in one process (part of
 * npm test, so it cannot rot). `--only=a,b` picks workloads, `--kinds=a,b`
 * servers, `--reps=n` runs per server, `--presence-interval-ms=n` the interval,
 * `--wait-replicas=n` the cluster kind's `waitReplicas` (the adapter's default, 1, otherwise),
 * `--partitions=n` the cluster kind's `partitions` (the adapter's default, 64, otherwise),
 * `--warmup-ms=n` a fan-out of n ms before the measured one, for every kind (JIT
 * compilation then falls outside the measurement: each Redis-backed instance
 * compiles the hot code on its own), `--cpu-prof=DIR` a V8 CPU profile of every
 * server process into DIR (written when the run stops it),
 * `--settle-ms=n` waits n ms after each memory reading's gc (see SETTLE_MS),
 * `--redis-replica` gives the one Redis a replica and the same WAIT (the baseline
 * that carries what a shard carries), `--profile` writes each redis-server's
 * INFO commandstats/stats/cpu deltas to /tmp/counters-<kind>.json and a perf
 * profile (`perf record --call-graph dwarf`) to /tmp/perf-<kind>-<key>.data
 * for the shard workloads (perf adds CPU: read ratios from runs without it), `--counters` the
 * counters alone (no perf) and a line per run with each redis-server's script calls, WAITs, reads and CPU (INFO's).
 * The Redis kinds run on one redis-server, `rooms-cluster` on a Redis Cluster
 * of 3 masters and 3 replicas the bench starts (test/helpers/cluster.ts); the
 * CPU time of every redis-server process is read from /proc around each run.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { once } from 'node:events'
import { cpus, loadavg, totalmem } from 'node:os'
import { Redis } from 'ioredis'
import { SettingsSchema } from '../src/options.js'
import { call, node } from './children.js'
import { Partitions } from '../src/adapters/partitions.js'
import type { RedisCluster } from '../test/helpers/cluster.js'
import type { Kind } from './client.js'
import type { Connect, Fanout } from './loadgen.js'
import { clusterKinds, labels, presenceKinds, redisKinds, workloads, type Workload } from './workloads.js'
import { report, type Outcome, type Result } from './report.js'

const smoke = process.argv.includes('--smoke')
const flag = (name: string): string | undefined => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3)
const REDIS = '/usr/bin/redis-server'
const hasRedis = existsSync(REDIS)
const hasCluster = hasRedis && existsSync('/usr/bin/redis-cli')
const only = flag('only')?.split(',')
/** --scale=0.1 shrinks every room and storm, to check the harness at moderate sizes. */
const scale = Number(flag('scale') ?? 1)
const kindFilter = flag('kinds')?.split(',') as Kind[] | undefined
const intervalOption = (SettingsSchema.properties as Record<string, { default?: number }>).presenceIntervalMs
const presenceIntervalMs = Number(flag('presence-interval-ms') ?? intervalOption?.default ?? 50)
/**
 * `--cluster-replicas=0`: the cluster is its 3 masters alone (and waits for no
 * replica unless --wait-replicas says so): against the one Redis without a
 * replica, like for like, what sharding alone does to each server's load.
 */
const clusterReplicas = flag('cluster-replicas') === '0' ? 0 : 1
/** To see what waiting for a replica costs: the same cluster runs with another `waitReplicas`. */
const waitReplicas = flag('wait-replicas') ?? (clusterReplicas === 0 ? '0' : undefined)
/** To see what the number of script calls per turn costs a master: the same cluster with fewer (or more) partitions. */
const partitionCount = flag('partitions')
const warmupMs = Number(flag('warmup-ms') ?? 0)
const cpuProf = flag('cpu-prof')
/**
 * `--redis-replica`: the one Redis gets a replica, and `rooms-redis` waits for
 * it as the cluster does (its `waitReplicas` is the cluster's): the baseline
 * that carries what a shard carries. Without it the one Redis has no replica
 * and no WAIT, the cheapest one Redis.
 */
const redisReplica = process.argv.includes('--redis-replica')
/** Clients per load generator that fills a storm's room: at most 20,000 files per process here, and a full room's presence traffic is spread over processes. */
const CLIENTS_PER_LOADGEN = 5_000
/**
 * `--settle-ms=n`: leave an idle server n ms after a gc before a memory reading, for V8's memory
 * reducer to shrink the young generation and return free pages (off by default: on this machine it
 * made the readings move more, not less).
 */
const SETTLE_MS = flag('settle-ms') === undefined ? undefined : Number(flag('settle-ms'))
/** A memory workload's connections join in this many steps, the server read after each. */
const QUARTERS = 4

interface Servers { kind: Kind, children: ChildProcess[], ports: number[] }

async function startServers (kinds: Kind[], redisUrl: string): Promise<Map<Kind, Array<{ child: ChildProcess, port: number }>>> {
  const seeds = cluster?.seeds.map((s) => `${s.host}:${s.port}`).join(',') ?? ''
  const child = node([...(cpuProf === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${cpuProf}`]), '--expose-gc', '--import=tsx', 'bench/servers.ts', kinds.join(','), redisUrl, String(presenceIntervalMs), seeds, waitReplicas ?? '', redisReplica ? waitReplicas ?? '1' : '', partitionCount ?? ''])
  const ports = await new Promise<Map<Kind, number>>((resolve, reject) => {
    let out = ''
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      if (/^ready$/m.test(out)) resolve(new Map([...out.matchAll(/^ready (\S+) (\d+)$/gm)].map((m) => [m[1] as Kind, Number(m[2])])))
    })
    child.once('exit', (code) => reject(new Error(`${kinds.join(',')} server exited with ${code}`)))
  })
  return new Map(kinds.map((k) => [k, [{ child, port: ports.get(k)! }]]))
}

/** The servers of one run: fresh processes in a full run, shared ones in the smoke run. */
async function serversFor (kind: Kind): Promise<Servers> {
  if (smoke) return pool.get(kind)!
  const twice = redisKinds.includes(kind)
  if (clusterKinds.includes(kind)) await Promise.all((await cluster!.nodes()).filter((n) => n.role === 'master').map(async (n) => await cluster!.node(n.port).flushall()))
  else if (twice) await redis!.flushall()
  const started = await Promise.all(Array.from({ length: twice ? 2 : 1 }, async () => (await startServers([kind], redisUrl)).get(kind)![0]!))
  return { kind, children: started.map((s) => s.child), ports: started.map((s) => s.port) }
}

let sharedLoadgen: ChildProcess | undefined
async function loadgensFor (n: number): Promise<ChildProcess[]> {
  if (smoke) return Array.from({ length: n }, () => sharedLoadgen!)
  return Array.from({ length: n }, () => node(['--import=tsx', 'bench/loadgen.ts']))
}

interface Stats { cpuMs: number, rss: number, heap: number, heapTotal: number, external: number, loopMaxMs: number }
/**
 * CPU and memory of a run's servers; `gc` first when memory is measured (slow, so not for CPU alone,
 * nor in the smoke run), and with `settleMs` a wait after it for V8's memory reducer.
 */
async function stats (servers: Servers, gc = false, settleMs?: number, resetLoopDelay = false): Promise<Stats> {
  const all = await Promise.all(servers.children.map(async (c) => await call<{ cpu: { user: number, system: number }, rss: number, heapUsed: number, heapTotal: number, external: number, loop: { maxMs: number } }>(c, { cmd: 'stats', gc: gc && !smoke, settleMs: smoke ? undefined : settleMs, resetLoopDelay })))
  return {
    cpuMs: all.reduce((sum, s) => sum + (s.cpu.user + s.cpu.system) / 1000, 0),
    rss: all.reduce((sum, s) => sum + s.rss, 0),
    heap: all.reduce((sum, s) => sum + s.heapUsed, 0),
    heapTotal: all.reduce((sum, s) => sum + s.heapTotal, 0),
    external: all.reduce((sum, s) => sum + s.external, 0),
    loopMaxMs: Math.max(...all.map((s) => s.loop.maxMs))
  }
}

/** The machine's listen-queue overflows so far (TcpExt ListenOverflows): connections the kernel dropped because a server did not accept them in time. */
function listenOverflows (): number {
  try {
    const lines = readFileSync('/proc/net/netstat', 'utf8').split('\n').filter((l) => l.startsWith('TcpExt:'))
    const names = lines[0]!.split(' ')
    const values = lines[1]!.split(' ')
    return Number(values[names.indexOf('ListenOverflows')])
  } catch {
    return NaN
  }
}

const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK']).toString()) || 100
/**
 * CPU time of servers' main threads and of their other threads (V8's
 * compiler and GC helpers, libuv's pool), in ms: what the JIT costs shows in
 * the second. NaN where /proc cannot be read.
 */
function threadCpu (servers: Servers): { main: number, other: number } {
  let main = 0
  let other = 0
  for (const child of servers.children) {
    try {
      for (const tid of readdirSync(`/proc/${child.pid}/task`)) {
        const used = cpuOfPid(Number(tid), `/proc/${child.pid}/task/${tid}/stat`)
        if (tid === String(child.pid)) main += used
        else other += used
      }
    } catch {
      return { main: NaN, other: NaN }
    }
  }
  return { main, other }
}
/** A process's CPU time so far (user + system, every thread), in ms, from /proc/<pid>/stat; NaN if it cannot be read. */
function cpuOfPid (pid: number | undefined, file = `/proc/${pid}/stat`): number {
  if (pid === undefined) return NaN
  try {
    const stat = readFileSync(file, 'utf8')
    // Fields after the command name (which may hold spaces): state is the first, utime the 12th, stime the 13th.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) * 1000 / CLOCK_TICKS
  } catch {
    return NaN
  }
}

/** The adapter's default key prefix, which the bench servers use: where a room's partition comes from. */
const KEY_PREFIX = 'fastify-rooms:'
const partitions = new Partitions(KEY_PREFIX, Number(partitionCount ?? 64))

/**
 * The redis-server processes a kind runs on, each with the result key of its
 * CPU time: `redisCpuMs` for the one Redis; on the cluster `master<i>CpuMs`
 * and `replica<i>CpuMs`, masters in slot order, replica i being master i's.
 * With `roomsOf`, also how many of the run's rooms each master serves.
 */
async function redisProcesses (kind: Kind, roomsOf?: { prefix: string, rooms: number }): Promise<{ pids: Array<[string, number | undefined]>, rooms: Record<string, number>, clients: Map<string, Redis> }> {
  if (!clusterKinds.includes(kind)) {
    if (!redisKinds.includes(kind)) return { pids: [], rooms: {}, clients: new Map() }
    const pids: Array<[string, number | undefined]> = [['redisCpuMs', redisPid()]]
    const clients = new Map<string, Redis>(redis === undefined ? [] : [['redisCpuMs', redis]])
    if (replicaPid !== undefined) {
      pids.push(['redisReplicaCpuMs', replicaPid()])
      if (replicaClient !== undefined) clients.set('redisReplicaCpuMs', replicaClient)
    }
    return { pids, rooms: {}, clients }
  }
  const view = await cluster!.nodes()
  const masters = view.filter((n) => n.role === 'master').sort((a, b) => (a.slots[0]?.[0] ?? 0) - (b.slots[0]?.[0] ?? 0))
  const pids: Array<[string, number | undefined]> = []
  const clients = new Map<string, Redis>()
  masters.forEach((m, i) => {
    pids.push([`master${i}CpuMs`, cluster!.pid(m.port)])
    clients.set(`master${i}CpuMs`, cluster!.node(m.port))
    for (const r of view.filter((n) => n.masterOf === m.id)) {
      pids.push([`replica${i}CpuMs`, cluster!.pid(r.port)])
      clients.set(`replica${i}CpuMs`, cluster!.node(r.port))
    }
  })
  const rooms: Record<string, number> = {}
  if (roomsOf !== undefined) {
    masters.forEach((_, i) => { rooms[`master${i}Rooms`] = 0 })
    for (let r = 0; r < roomsOf.rooms; r++) {
      const slot = partitions.slot(partitions.base(`${roomsOf.prefix}${r}`))
      const i = masters.findIndex((m) => m.slots.some(([first, last]) => slot >= first && slot <= last))
      rooms[`master${i}Rooms`]!++
    }
  }
  return { pids, rooms, clients }
}

/** `--profile`: each redis-server's INFO commandstats and stats counters, to diff around a run. */
async function redisCounters (clients: Map<string, Redis>): Promise<Record<string, Record<string, number>>> {
  const out: Record<string, Record<string, number>> = {}
  for (const [key, client] of clients) {
    const text = await client.info('commandstats') + '\n' + await client.info('stats') + '\n' + await client.info('cpu')
    const counters: Record<string, number> = {}
    for (const line of text.split('\n')) {
      const m = /^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/.exec(line)
      if (m !== null) {
        counters[`${m[1]}.calls`] = Number(m[2])
        counters[`${m[1]}.usec`] = Number(m[3])
        continue
      }
      const kv = /^(total_net_input_bytes|total_net_output_bytes|total_net_repl_output_bytes|total_net_repl_input_bytes|total_reads_processed|total_writes_processed|total_commands_processed|io_threaded_reads_processed|used_cpu_sys|used_cpu_user|used_cpu_sys_main_thread|used_cpu_user_main_thread):([\d.]+)/.exec(line.trim())
      if (kv !== null) counters[kv[1]!] = Number(kv[2])
    }
    out[key] = counters
  }
  return out
}
const profile = process.argv.includes('--profile')
/** `--counters`: the INFO counters of `--profile` without perf (cheap), and a line per run on stderr with each redis-server's script calls, WAITs, reads and CPU (INFO's). */
const counters = profile || process.argv.includes('--counters')

/** CPU time of each of a run's redis-server processes, by result key. */
function redisCpu (pids: Array<[string, number | undefined]>): Record<string, number> {
  return Object.fromEntries(pids.map(([key, pid]) => [key, cpuOfPid(pid)]))
}

type ConnectReply = Record<string, number> & { firstError: string }
let runs = 0

/** One run of one workload against one server kind: its figures and what went wrong. */
async function runOnce (workload: Workload, kind: Kind): Promise<Outcome> {
  const servers = await serversFor(kind)
  const sid = `s${++runs}`
  const prefix = `${workload.name}-${sid}-`
  const base = workload.rooms * workload.members
  const joins = workload.joins ?? 0
  const loadgens = await loadgensFor(workload.group === 'storm' ? Math.ceil(base / CLIENTS_PER_LOADGEN) + 1 : 1)
  const problems: string[] = []
  const connect = (lg: ChildProcess, job: Omit<Connect, 'cmd' | 'kind' | 'ports' | 'prefix' | 'rooms' | 'concurrency' | 'deadlineMs'> & Partial<Connect>, session = sid): Promise<ConnectReply> =>
    call<ConnectReply>(lg, { cmd: 'connect', sid: session, kind, ports: servers.ports, prefix, rooms: workload.rooms, concurrency: 200, deadlineMs: smoke ? 20_000 : 300_000, ...job })
  const checkJoined = (reply: ConnectReply, what: string): void => {
    if (reply.failed! > 0) problems.push(`${reply.failed} of ${what} did not join (${reply.firstError})`)
  }
  // Presence diffs trail the last join by up to an interval: figures are read once every member knows the room's size.
  const converge = async (lg: ChildProcess, expectedCount: number, session = sid): Promise<void> => {
    if (!presenceKinds.includes(kind)) return
    const c = await call<Record<string, number>>(lg, { cmd: 'converge', sid: session, expectedCount, deadlineMs: smoke ? 20_000 : 120_000 })
    if (c.notConverged! > 0) problems.push(`${c.notConverged} members' last presence count is not the room's size ${expectedCount} ${(c.waitedMs! / 1000).toFixed(0)} s after the last join (counts seen: ${c.counts})`)
  }
  const presence = async (lg: ChildProcess, session = sid): Promise<Record<string, number>> => {
    const p = await call<Record<string, number>>(lg, { cmd: 'presence', sid: session })
    if (p.closed! > 0) problems.push(`the server closed ${p.closed} connections`)
    return p
  }
  const sessions: Array<[ChildProcess, string]> = [[loadgens[0]!, sid]]
  try {
    const memory = workload.group === 'memory'
    const before = await stats(servers, memory, memory ? SETTLE_MS : undefined)
    if (workload.group === 'fanout' || workload.group === 'latency' || workload.group === 'shard') {
      checkJoined(await connect(loadgens[0]!, { from: 0, count: base }), 'the members')
      await converge(loadgens[0]!, workload.members)
      const redisOf = await redisProcesses(kind, { prefix, rooms: workload.rooms })
      const job: Omit<Fanout, 'cmd'> = workload.group === 'latency'
        ? { durationMs: workload.durationMs!, window: 1, payloadBytes: 64, rate: workload.rate, onlyRoom: 0 }
        : { durationMs: workload.durationMs!, window: workload.window!, payloadBytes: 64, messages: workload.messages }
      if (warmupMs > 0 && workload.group === 'fanout') await call(loadgens[0]!, { cmd: 'fanout', sid, ...job, durationMs: warmupMs })
      const connected = await stats(servers)
      const threadsBefore = threadCpu(servers)
      const countersBefore = counters ? await redisCounters(redisOf.clients) : undefined
      // perf record on each redis-server over the publishing, to /tmp/perf-<run>-<key>.data.
      const perfs = profile ? redisOf.pids.map(([key, pid]) => spawn('perf', ['record', '-F', '4999', '--call-graph', 'dwarf,16384', '-p', String(pid), '-o', `/tmp/perf-${kind}-${key}.data`], { stdio: 'ignore' })) : []
      const redisBefore = redisCpu(redisOf.pids)
      const go = await call<Record<string, number>>(loadgens[0]!, { cmd: 'fanout', sid, ...job })
      const redisAfter = redisCpu(redisOf.pids)
      await Promise.all(perfs.map(async (p) => { p.kill('SIGINT'); await once(p, 'exit') }))
      if (countersBefore !== undefined) {
        const countersAfter = await redisCounters(redisOf.clients)
        const diff: Record<string, Record<string, number>> = {}
        for (const [key, after] of Object.entries(countersAfter)) {
          diff[key] = {}
          for (const [name, value] of Object.entries(after)) {
            const d = value - (countersBefore[key]?.[name] ?? 0)
            if (d !== 0) diff[key]![name] = Math.round(d * 1000) / 1000
          }
        }
        writeFileSync(`/tmp/counters-${kind}.json`, JSON.stringify({ go, diff }, null, 1))
        const brief = Object.entries(diff).map(([key, d]) => `${key.replace(/CpuMs$/, '')}: ${d['evalsha.calls'] ?? 0} script calls, ${d['wait.calls'] ?? 0} WAITs, ${d.total_reads_processed ?? 0} reads, ${Math.round(((d.used_cpu_user ?? 0) + (d.used_cpu_sys ?? 0)) * 1000)} ms CPU`)
        console.error(`bench: ${workload.name} ${kind} counters: ${brief.join('; ')}`)
      }
      const after = await stats(servers)
      const threadsAfter = threadCpu(servers)
      console.error(`bench: ${workload.name} ${kind}: server CPU ${(threadsAfter.main - threadsBefore.main).toFixed(0)} ms on main threads, ${(threadsAfter.other - threadsBefore.other).toFixed(0)} ms on other threads (V8's compiler and GC helpers); ${go.deliveries} deliveries, ${Math.round(go.deliveries! / ((after.cpuMs - connected.cpuMs) / 1000))} per CPU-s`)
      // Every redis-server's CPU over the publishing (Redis is shared: in the smoke run, where servers run at once, it means nothing).
      const redisUsed: Record<string, number> = {}
      for (const key of Object.keys(redisBefore)) redisUsed[key] = redisAfter[key]! - redisBefore[key]!
      if (profile) console.error(`bench: ${kind} redis-server CPU, ms: ${JSON.stringify(redisUsed)}`)
      if (redisOf.pids.length > 0) redisUsed.redisCpuAllMs = Object.values(redisUsed).reduce((a, b) => a + b, 0)
      for (const key of ['lost', 'duplicated', 'outOfOrder'] as const) if (go[key]! > 0) problems.push(`${go[key]} ${key === 'outOfOrder' ? 'out of order' : key}`)
      if (go.closed! > 0) problems.push(`the server closed ${go.closed} connections`)
      return {
        result: {
          ...go,
          ...redisUsed,
          ...redisOf.rooms,
          serverCpuMs: after.cpuMs - connected.cpuMs,
          deliveriesPerSec: go.deliveries! / (go.wallMs! / 1000),
          deliveriesPerCpuSec: go.deliveries! / ((after.cpuMs - connected.cpuMs) / 1000)
        },
        problems
      }
    }
    if (workload.group === 'memory') {
      // What one more idle connection costs, not the first ones: the connections join in quarters, the
      // server is read after each, and the figure is the median of the last three quarters' cost per
      // connection. The first quarter also pays for compiled code and the young generation's growth,
      // and any one step's RSS can drop by what V8 or malloc happened to hand back to the system then.
      const quarterRooms = Math.max(1, Math.floor(workload.rooms / QUARTERS))
      const quarter = quarterRooms * workload.members
      const readings: Stats[] = [before]
      let connectMs = 0
      let frames = 0
      for (let q = 0; q < QUARTERS; q++) {
        const session = q === 0 ? sid : `${sid}-${q}`
        if (q > 0) sessions.push([loadgens[0]!, session])
        const joined = await connect(loadgens[0]!, { from: 0, count: quarter, rooms: quarterRooms, prefix: `${prefix}${q}-` }, session)
        checkJoined(joined, 'the connections')
        connectMs += joined.connectMs!
        await converge(loadgens[0]!, workload.members, session)
        readings.push(await stats(servers, true, SETTLE_MS))
      }
      for (const [, session] of sessions) frames += (await presence(loadgens[0]!, session)).totalFrames!
      const step = (key: 'rss' | 'heap' | 'heapTotal' | 'external'): number[] => readings.slice(2).map((r, q) => (r[key] - readings[q + 1]![key]) / quarter / 1024)
      const total = QUARTERS * quarter
      return {
        result: {
          connectsPerSec: total / (connectMs / 1000),
          presencePerMember: frames / total,
          rssPerConnKB: median(step('rss')),
          heapPerConnKB: median(step('heap')),
          // Where RSS beyond the live heap goes: V8's committed heap, and memory outside it (Buffers, native).
          heapTotalPerConnKB: median(step('heapTotal')),
          externalPerConnKB: median(step('external')),
          // All the connections over the server's start-up reading, as this bench measured before.
          rssFromStartKB: (readings.at(-1)!.rss - before.rss) / total / 1024,
          heapFromStartKB: (readings.at(-1)!.heap - before.heap) / total / 1024
        },
        problems
      }
    }
    if (workload.group === 'join') {
      const joined = await connect(loadgens[0]!, { from: 0, count: base })
      checkJoined(joined, 'the connections')
      await converge(loadgens[0]!, workload.members)
      const after = await stats(servers)
      const p = await presence(loadgens[0]!)
      return {
        result: {
          connectsPerSec: base / (joined.connectMs! / 1000),
          cpuPerJoinMs: (after.cpuMs - before.cpuMs) / base,
          joinP50: joined.joinP50!,
          joinP99: joined.joinP99!,
          presencePerMember: p.totalFrames! / base
        },
        problems
      }
    }
    // The join storm: the room fills (load generators 0..n-2), then the last one joins at a steady rate.
    const fillers = loadgens.slice(0, -1)
    const per = Math.ceil(base / fillers.length)
    sessions.length = 0
    loadgens.forEach((lg, n) => sessions.push([lg, `${sid}-${n}`]))
    const fillStarted = performance.now()
    // Storm clients are lean (bench/lean-client.ts): they join and count presence, and cost their machine far less than ws.
    const filled = await Promise.all(fillers.map(async (lg, n) => await connect(lg, { from: n * per, count: Math.min(per, base - n * per), lean: true }, `${sid}-${n}`)))
    const fillMs = performance.now() - fillStarted
    for (const f of filled) checkJoined(f, 'the members')
    const members = filled.reduce((sum, f) => sum + f.joined!, 0)
    await Promise.all(sessions.slice(0, -1).map(async ([lg, session]) => await converge(lg, members, session)))
    for (const [lg, session] of sessions) await call(lg, { cmd: 'reset-presence', sid: session })
    const calm = await stats(servers, false, undefined, true)
    // The smoke run shares one load generator among the roles: each process counted once.
    const loadgenCpu = (): number => [...new Set(loadgens.map((lg) => lg.pid))].reduce((sum: number, pid) => sum + cpuOfPid(pid), 0)
    const loadgenCalm = loadgenCpu()
    const overflowsCalm = listenOverflows()
    const stormStarted = performance.now()
    const storm = await connect(loadgens.at(-1)!, { from: base, count: joins, rate: workload.joinRate, lean: true }, `${sid}-${loadgens.length - 1}`)
    checkJoined(storm, 'the storm\'s joins')
    // Members whose join was refused are not in the room: the count to reach is of those that joined.
    await Promise.all(sessions.map(async ([lg, session]) => await converge(lg, members + storm.joined!, session)))
    const settledMs = performance.now() - stormStarted
    const after = await stats(servers)
    const loadgenUsed = loadgenCpu() - loadgenCalm
    const frames = await Promise.all(sessions.map(async ([lg, session]) => await presence(lg, session)))
    return {
      result: {
        fillMs,
        stormMs: storm.connectMs!,
        maxPresenceFrames: Math.max(...frames.map((p) => p.maxFrames!)),
        joinP50: storm.joinP50!,
        joinP99: storm.joinP99!,
        openJoinP50: storm.openJoinP50!,
        openJoinP99: storm.openJoinP99!,
        cpuPerJoinMs: (after.cpuMs - calm.cpuMs) / joins,
        settledMs,
        serverCpuMs: after.cpuMs - calm.cpuMs,
        loadgenCpuMs: loadgenUsed,
        loopMaxMs: after.loopMaxMs,
        listenOverflows: listenOverflows() - overflowsCalm
      },
      problems
    }
  } catch (err) {
    problems.push((err as Error).message)
    return { result: {}, problems }
  } finally {
    await Promise.all(sessions.map(async ([lg, session]) => await call(lg, { cmd: 'close', sid: session }).catch(() => {})))
    if (!smoke) {
      for (const lg of loadgens) lg.kill()
      for (const child of servers.children) child.kill()
    }
  }
}

const median = (values: number[]): number => {
  const sorted = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b)
  return sorted.length === 0 ? NaN : sorted[Math.floor(sorted.length / 2)]!
}

/** The one Redis's pid and its replica's (with --redis-replica), for their CPU time. */
let redisPid: () => number | undefined = () => undefined
let replicaPid: (() => number | undefined) | undefined
const redisTeardown: Array<() => unknown> = []
let replicaClient: Redis | undefined
let cluster: RedisCluster | undefined
const clusterTeardown: Array<() => unknown> = []
let redis: Redis | undefined
let redisUrl = ''
const pool = new Map<Kind, Servers>()
const started = new Date()
const loadBefore = loadavg()
const results = new Map<Workload, Map<Kind, { result: Result, runs: number, problems: string[] }>>()
try {
  const selected = workloads(smoke, scale).filter((w) => only === undefined ? (smoke || w.optIn !== true) : only.includes(w.name))
  const kindsOf = (w: Workload): Kind[] => w.kinds.filter((k) =>
    (kindFilter === undefined ? smoke || w.optInKinds?.includes(k) !== true : kindFilter.includes(k)) && (hasRedis || !redisKinds.includes(k)) && (hasCluster || !clusterKinds.includes(k)))
  const all = [...new Set(selected.flatMap(kindsOf))]
  // The cluster takes a couple of seconds to form: it starts while the rest does, and only if a run needs it.
  const clusterUp = all.some((k) => clusterKinds.includes(k))
    ? import('../test/helpers/cluster.js').then(async ({ startCluster }) => { cluster = await startCluster({ teardown: (fn) => clusterTeardown.push(fn) }, { nodeTimeoutMs: 5000, replicas: clusterReplicas }) })
    : Promise.resolve()
  // Settled here so a failed start is not an unhandled rejection while Redis starts; awaited (and thrown) below.
  clusterUp.catch(() => {})
  if (hasRedis) {
    // test/helpers/redis.ts: a free port, and the server's own word that it is ready (a failed start is an error, not a hang).
    const { startRedis } = await import('../test/helpers/redis.js')
    const one = await startRedis({ teardown: (fn) => redisTeardown.push(fn) })
    redisPid = one.pid
    redisUrl = one.url
    redis = new Redis(redisUrl)
    if (redisReplica) {
      // Redis 7 waits 5 s for more replicas before a diskless full sync: there is only one.
      await redis.call('CONFIG', 'SET', 'repl-diskless-sync-delay', '0')
      const replica = await startRedis({ teardown: (fn) => redisTeardown.push(fn) }, { replicaOf: one.port })
      replicaPid = replica.pid
      replicaClient = new Redis(replica.url, { retryStrategy: () => 50 })
      // Synchronised: the replica says its link to the master is up (polled: no event tells).
      const deadline = Date.now() + 30_000
      while (!/master_link_status:up/.test(await replicaClient.info('replication').catch(() => ''))) {
        if (Date.now() > deadline) throw new Error('the one Redis\'s replica did not synchronise within 30 s')
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    }
  }
  if (smoke) {
    const local = all.filter((k) => !redisKinds.includes(k))
    const twice = all.filter((k) => redisKinds.includes(k))
    // With only Redis kinds selected there is no shared server to start.
    const [shared, ...redisNodes] = await Promise.all([
      local.length === 0 ? new Map() : startServers(local, redisUrl),
      ...twice.flatMap((k) => [0, 1].map(async () => {
        if (clusterKinds.includes(k)) await clusterUp
        return await startServers([k], redisUrl)
      }))
    ])
    for (const k of local) pool.set(k, { kind: k, children: [shared!.get(k)![0]!.child], ports: [shared!.get(k)![0]!.port] })
    for (const k of twice) {
      const nodes = redisNodes.filter((n) => n.has(k)).map((n) => n.get(k)![0]!)
      pool.set(k, { kind: k, children: nodes.map((n) => n.child), ports: nodes.map((n) => n.port) })
    }
    sharedLoadgen = node(['--import=tsx', 'bench/loadgen.ts'])
  }
  await clusterUp
  for (const workload of selected) {
    const kinds = kindsOf(workload)
    const reps = Number(flag('reps') ?? (smoke ? 1 : workload.reps ?? 3))
    const outcomes = new Map<Kind, Outcome[]>(kinds.map((k) => [k, []]))
    for (let r = 0; r < reps; r++) {
      // Servers take turns within each repetition, so a drift in the machine's load hits all of them alike.
      if (smoke) await Promise.all(kinds.map(async (k) => outcomes.get(k)!.push(await runOnce(workload, k))))
      else {
        for (const k of kinds) {
          const t0 = performance.now()
          const outcome = await runOnce(workload, k)
          outcomes.get(k)!.push(outcome)
          const x = outcome.result
          const mem = x.rssPerConnKB === undefined ? '' : `, RSS ${x.rssPerConnKB.toFixed(2)} KB, heap ${x.heapPerConnKB!.toFixed(2)} KB per connection (V8's committed heap ${x.heapTotalPerConnKB?.toFixed(2) ?? '?'} KB, outside it ${x.externalPerConnKB?.toFixed(2) ?? '?'} KB)`
          // The storm runs once or twice: each run's figures, not only the report's median.
          const storm = x.maxPresenceFrames === undefined ? '' : `, storm ${(x.stormMs! / 1000).toFixed(1)} s, ${x.maxPresenceFrames} frames at most, join p50/p99 ${x.joinP50!.toFixed(1)}/${x.joinP99!.toFixed(1)} ms, connect-to-joined p50/p99 ${x.openJoinP50!.toFixed(1)}/${x.openJoinP99!.toFixed(1)} ms, ${x.cpuPerJoinMs!.toFixed(3)} ms server CPU per join, longest loop delay ${x.loopMaxMs!.toFixed(0)} ms`
          // A join workload's two figures per run, to compare runs taken under different load.
          const join = workload.group === 'join' && x.connectsPerSec !== undefined ? `, ${Math.round(x.connectsPerSec)} connects and joins/s, ${x.cpuPerJoinMs?.toFixed(3) ?? '?'} ms server CPU each` : ''
          console.error(`bench: ${workload.name} ${k} run ${r + 1}: ${((performance.now() - t0) / 1000).toFixed(1)} s${mem}${storm}${join}${outcome.problems.length > 0 ? `, FAILED: ${outcome.problems.join('; ')}` : ''}`)
        }
      }
    }
    const merged = new Map<Kind, { result: Result, runs: number, problems: string[] }>()
    for (const [k, list] of outcomes) {
      const keys = new Set(list.flatMap((o) => Object.keys(o.result)))
      const result: Result = {}
      for (const key of keys) result[key] = median(list.map((o) => o.result[key] ?? NaN))
      // Memory moves between runs more than the rest: the report gives each figure's range too.
      for (const key of ['rssPerConnKB', 'heapPerConnKB'].filter((k) => keys.has(k))) {
        const values = list.map((o) => o.result[key] ?? NaN).filter((v) => !Number.isNaN(v))
        result[`${key}Min`] = Math.min(...values)
        result[`${key}Max`] = Math.max(...values)
      }
      merged.set(k, { result, runs: list.length, problems: list.flatMap((o, n) => o.problems.map((p) => list.length > 1 ? `run ${n + 1}: ${p}` : p)) })
    }
    results.set(workload, merged)
    console.error(`bench: ${workload.name} done`)
  }
} finally {
  redis?.disconnect()
  replicaClient?.disconnect()
  for (const fn of redisTeardown) await fn()
  sharedLoadgen?.kill()
  for (const s of pool.values()) for (const c of s.children) c.kill()
  for (const fn of clusterTeardown) await fn()
}

const text = report({
  smoke,
  date: started,
  machine: `${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`,
  load: `load average ${loadBefore.map((l) => l.toFixed(2)).join(' / ')} (1/5/15 min) before the run, ${loadavg().map((l) => l.toFixed(2)).join(' / ')} after`,
  presence: intervalOption !== undefined
    ? `presenceIntervalMs: ${presenceIntervalMs} passed to fastify-rooms (its default: ${intervalOption.default ?? 'none'}); the coalescing ws baseline batches presence at the same interval`
    : `this build of fastify-rooms has no presenceIntervalMs option (one presence frame per join); the coalescing ws baseline batches presence every ${presenceIntervalMs} ms`,
  hasRedis,
  waitReplicas: (clusterReplicas === 0 ? 'no replicas, ' : '') + (waitReplicas === undefined ? 'waitReplicas 1, the default' : `waitReplicas ${waitReplicas}`) + (partitionCount === undefined ? '' : `, ${partitionCount} partitions`) + (redisReplica ? '; the one Redis has one replica and waits for it the same way (--redis-replica)' : '; the one Redis has no replica and no WAIT'),
  warmupMs,
  results,
  // The cluster's label names its replicas: none with --cluster-replicas=0.
  labels: clusterReplicas === 0 ? { ...labels, 'rooms-cluster': labels['rooms-cluster'].replace(' + 3 replicas', ', no replicas') } : labels
})
console.log(text)
mkdirSync('bench/results', { recursive: true })
const stamp = started.toISOString().slice(0, 16).replace(/[:T]/g, '-')
writeFileSync(`bench/results/${smoke ? 'smoke' : 'latest'}.md`, text + '\n')
if (!smoke && only === undefined && kindFilter === undefined) writeFileSync(`bench/results/${stamp}.md`, text + '\n')
const failed = [...results.values()].flatMap((m) => [...m.values()]).filter((r) => r.problems.length > 0).length
if (failed > 0) {
  console.error(`${failed} servers had runs that failed: see the report`)
  process.exitCode = 1
}
