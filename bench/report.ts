/**
 * The Markdown report of one `npm run bench`: a headline of issue #11's
 * targets, each ratio against the strongest baseline (named in the row), issue
 * #14's scale-out targets, then one table per workload with every server, and
 * the per-delivery and per-publish costs a capacity plan is built from.
 */
import type { Kind } from './client.js'
import { plainWs, type Workload } from './workloads.js'

export type Result = Record<string, number>
/** One run: its figures, and every correctness problem (a run with any has failed). */
export interface Outcome { result: Result, problems: string[] }
type Merged = Map<Kind, { result: Result, runs: number, problems: string[] }>

export interface ReportInput {
  smoke: boolean
  date: Date
  machine: string
  load: string
  presence: string
  hasRedis: boolean
  /** The cluster kind's `waitReplicas`, as the report says it. */
  waitReplicas: string
  /** A fan-out of this many ms before each measured one (every kind), 0 for none. */
  warmupMs: number
  results: Map<Workload, Merged>
  labels: Record<Kind, string>
}

const fmt = (n: number | undefined, digits = 0): string => n !== undefined && Number.isFinite(n) ? n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits }) : 'n/a'
const ratio = (n: number): string => Number.isFinite(n) ? `${fmt(n, 2)}x` : 'n/a'
/** A ratio next to its goal: three digits where two would round it onto the goal (0.898x is not 0.90x). */
const ratioAgainst = (n: number, goal: number): string => Number.isFinite(n) && n !== goal && fmt(n, 2) === fmt(goal, 2) ? `${fmt(n, 3)}x` : ratio(n)

interface Metric { key: string, name: string, unit: string, digits: number, better: 'higher' | 'lower' }
const metrics: Record<string, Metric> = {
  deliveriesPerCpuSec: { key: 'deliveriesPerCpuSec', name: 'deliveries per server CPU-s', unit: '', digits: 0, better: 'higher' },
  connectsPerSec: { key: 'connectsPerSec', name: 'connects and joins per s', unit: '/s', digits: 0, better: 'higher' },
  cpuPerJoinMs: { key: 'cpuPerJoinMs', name: 'server CPU per connect and join', unit: ' ms', digits: 3, better: 'lower' },
  rssPerConnKB: { key: 'rssPerConnKB', name: 'RSS per idle joined connection', unit: ' KB', digits: 2, better: 'lower' },
  heapPerConnKB: { key: 'heapPerConnKB', name: 'heap per idle joined connection', unit: ' KB', digits: 2, better: 'lower' }
}

/** The strongest plain ws server of a workload for a metric: the fastest, or the leanest. */
function strongest (merged: Merged, metric: Metric): Kind | undefined {
  let best: Kind | undefined
  for (const kind of plainWs) {
    const value = merged.get(kind)?.result[metric.key]
    if (value === undefined || !Number.isFinite(value)) continue
    const current = best === undefined ? undefined : merged.get(best)!.result[metric.key]!
    if (current === undefined || (metric.better === 'higher' ? value > current : value < current)) best = kind
  }
  return best
}

export function report (input: ReportInput): string {
  const { results, labels } = input
  const lines: string[] = []
  const say = (line = ''): void => { lines.push(line) }
  const find = (name: string): Merged | undefined => [...results].find(([w]) => w.name === name)?.[1]
  const title = (name: string): string => [...results.keys()].find((w) => w.name === name)?.title ?? name

  say(`# fastify-rooms benchmark${input.smoke ? ' (smoke: tiny sizes, every server in one process; the figures mean nothing)' : ''}`)
  say()
  say(`${input.date.toISOString().slice(0, 16).replace('T', ' ')} UTC; ${input.machine}; ${input.load}.`)
  if (input.warmupMs > 0) say(`Warm-up: every fan-out run is preceded by ${input.warmupMs} ms of the same fan-out on the same servers, not measured, for every server alike (JIT compilation falls outside the measurement).`)
  say(`Server and load generators are separate processes; server CPU (process.cpuUsage) and memory (after a full GC) are read in the server process. Medians over the runs of each server; servers take turns within each repetition. Presence: ${input.presence}.${input.hasRedis ? '' : ' redis-server is not installed: the Redis rows are left out.'}`)
  say()
  say('Baselines: **ws, stringify once** (a Map of Sets, `ws.send` per member); **ws, pre-framed** (one frame built per broadcast, written to every raw socket, one write per socket per message); **ws, pre-framed and coalesced** (pre-framed, each socket corked at its first write in a turn of the event loop and uncorked once with setImmediate, as fastify-rooms does; a join gets `joined` with the count and the first page of at most 100 members, and the room gets presence diffs batched per interval, framed once). Each ratio is against the strongest plain ws baseline measured for that figure, named in its row. Scale-out: **Socket.IO 4 on @socket.io/redis-adapter**, two instances on the same redis-server as fastify-rooms on Redis; both count the CPU of both instances, not Redis\'s.')

  // The headline: issue #11's targets, fastify-rooms (memory) against the strongest baseline.
  const rows: string[] = []
  let correctFailures = 0
  let correctRuns = 0
  for (const merged of results.values()) {
    for (const r of merged.values()) {
      correctRuns += r.runs
      if (r.problems.length > 0) correctFailures++
    }
  }
  const against = (name: string, metric: Metric, target: number | undefined, goal: string, measure: string): void => {
    const merged = find(name)
    if (merged === undefined) return
    const ours = merged.get('rooms')?.result[metric.key]
    const base = strongest(merged, metric)
    const theirs = base === undefined ? undefined : merged.get(base)!.result[metric.key]
    const x = ours !== undefined && theirs !== undefined ? ours / theirs : NaN
    const met = target === undefined || !Number.isFinite(x) ? '' : (metric.better === 'higher' ? x >= target : x <= target) ? 'met' : '**not met**'
    rows.push(`| ${measure} | ${fmt(ours, metric.digits)}${metric.unit} | ${base === undefined ? 'n/a' : `${labels[base]}: ${fmt(theirs, metric.digits)}${metric.unit}`} | ${target === undefined ? ratio(x) : ratioAgainst(x, target)} | ${goal} | ${met} |`)
  }
  against('memory-10000', metrics.rssPerConnKB!, 1.1, '≤ 1.1x', 'RSS per idle joined connection, 10,000 connections')
  against('memory-10000', metrics.heapPerConnKB!, undefined, '', 'heap per idle joined connection, 10,000 connections')
  against('join-100', metrics.connectsPerSec!, 0.9, '≥ 0.9x', 'connect and join rate, rooms of 100, presence on')
  against('join-1000', metrics.connectsPerSec!, 0.9, '≥ 0.9x', 'connect and join rate, rooms of 1,000, presence on')
  against('join-100', metrics.cpuPerJoinMs!, 2, '≤ 2x', 'server CPU per connect and join, rooms of 100')
  against('join-1000', metrics.cpuPerJoinMs!, 2, '≤ 2x', 'server CPU per connect and join, rooms of 1,000')
  against('fanout-1x1000', metrics.deliveriesPerCpuSec!, 1, '≥ 1.0x the coalescing baseline', 'fan-out deliveries per server CPU-s, 1 x 1,000, window 20')
  against('fanout-100x10', metrics.deliveriesPerCpuSec!, 1, '≥ 1.0x the coalescing baseline', 'fan-out deliveries per server CPU-s, 100 x 10, window 20')
  against('fanout-window1', metrics.deliveriesPerCpuSec!, 1, '≥ 1.0x pre-framed ws', 'fan-out deliveries per server CPU-s, 1 x 1,000, window 1')
  const storm = find('storm')?.get('rooms')
  if (storm !== undefined) {
    const frames = storm.result.maxPresenceFrames
    const p99 = storm.result.joinP99
    const done = storm.problems.length === 0
    rows.push(`| join storm: most presence frames one member receives | ${fmt(frames)} | (absolute) | | ≤ 200 | ${done && frames !== undefined && frames <= 200 ? 'met' : '**not met**'} |`)
    rows.push(`| join storm: p99 join-to-\`joined\` | ${fmt(p99, 1)} ms | (absolute) | | < 100 ms | ${done && p99 !== undefined && p99 < 100 ? 'met' : '**not met**'} |`)
  }
  rows.push(`| correctness in every run: 0 lost, 0 duplicated, 0 out of order, every join answered, presence converged | ${correctFailures === 0 ? `all ${correctRuns} runs` : `${correctFailures} servers with failed runs`} | | | every run | ${correctFailures === 0 ? 'met' : '**not met**'} |`)
  say()
  say('## Targets (issue #11): fastify-rooms (memory) against the strongest baseline')
  say()
  say('| target | fastify-rooms | strongest baseline | ratio | goal | |')
  say('|---|---:|---|---:|---|---|')
  for (const row of rows) say(row)

  // Issue #14: two Redis-backed instances (one Redis, or the cluster) against one memory node, and against Socket.IO on its Redis adapter.
  const scaledTable = (ours: Kind, heading: string): void => {
    const scaled: string[] = []
    const against = (name: string, shape: string, base: Kind, target: number): void => {
      const merged = find(name)
      const mine = merged?.get(ours)?.result.deliveriesPerCpuSec
      const theirs = merged?.get(base)?.result.deliveriesPerCpuSec
      if (mine === undefined || theirs === undefined) return
      const x = mine / theirs
      scaled.push(`| fan-out deliveries per server CPU-s, ${shape} | ${fmt(mine)} | ${labels[base]}: ${fmt(theirs)} | ${ratioAgainst(x, target)} | ≥ ${fmt(target, 1)}x | ${Number.isFinite(x) && x >= target ? 'met' : '**not met**'} |`)
    }
    against('fanout-1x1000', '1 x 1,000, window 20', 'rooms', 0.7)
    against('fanout-100x10', '100 x 10, window 20', 'rooms', 0.7)
    against('fanout-1x1000', '1 x 1,000, window 20', 'socketio-redis', 2)
    against('fanout-100x10', '100 x 10, window 20', 'socketio-redis', 2)
    if (scaled.length === 0) return
    say()
    say(heading)
    say()
    say(`| target | ${labels[ours]} | against | ratio | goal | |`)
    say('|---|---:|---|---:|---|---|')
    for (const row of scaled) say(row)
  }
  scaledTable('rooms-redis', '## Targets (issue #14): fastify-rooms on Redis (2 instances, both counted) against one memory node and against Socket.IO on Redis')
  scaledTable('rooms-cluster', `## Targets (issue #14): fastify-rooms on a Redis Cluster (3 masters, ${input.waitReplicas.startsWith('no replicas') ? '' : '3 replicas, '}${input.waitReplicas}; 2 instances, both counted, Redis not) against one memory node and against Socket.IO on Redis`)

  for (const [workload, merged] of results) {
    say()
    say(`## ${workload.title}`)
    say()
    const verdict = (r: { problems: string[] }): string => r.problems.length === 0 ? 'yes' : `NO: ${r.problems.join('; ')}`
    if (workload.group === 'fanout' || workload.group === 'latency') {
      const m = metrics.deliveriesPerCpuSec!
      const base = strongest(merged, m)
      const baseValue = base === undefined ? NaN : merged.get(base)!.result[m.key]!
      say(`| server | deliveries/s | deliveries per server CPU-s | vs ${base === undefined ? 'n/a' : labels[base]} | p50 ms | p99 ms | lost / duplicated / out of order | correct |`)
      say('|---|---:|---:|---:|---:|---:|---|---|')
      for (const [kind, r] of merged) say(`| ${labels[kind]} | ${fmt(r.result.deliveriesPerSec)} | ${fmt(r.result.deliveriesPerCpuSec)} | ${ratio(r.result.deliveriesPerCpuSec! / baseValue)} | ${fmt(r.result.p50, 1)} | ${fmt(r.result.p99, 1)} | ${fmt(r.result.lost)} / ${fmt(r.result.duplicated)} / ${fmt(r.result.outOfOrder)} | ${verdict(r)} |`)
      const ours = merged.get('rooms')?.result.deliveriesPerCpuSec
      const io = merged.get('socketio')?.result.deliveriesPerCpuSec
      if (ours !== undefined && io !== undefined) {
        say()
        say(`fastify-rooms (memory), deliveries per server CPU-s: ${ratio(ours / baseValue)} ${base === undefined ? '' : labels[base]} (the strongest plain ws baseline here), ${ratio(ours / io)} Socket.IO 4.`)
      }
      const onRedis = merged.get('rooms-redis')?.result.deliveriesPerCpuSec
      const ioRedis = merged.get('socketio-redis')?.result.deliveriesPerCpuSec
      if (onRedis !== undefined && ioRedis !== undefined) {
        say()
        say(`fastify-rooms on Redis (2 instances), deliveries per server CPU-s: ${ours === undefined ? '' : `${ratio(onRedis / ours)} one memory node, `}${ratio(onRedis / ioRedis)} Socket.IO 4 on its Redis adapter (2 instances). Redis's own CPU is not counted for either.`)
      }
    } else if (workload.group === 'shard') {
      shardTables(merged, workload.rooms, say, labels, verdict)
    } else if (workload.group === 'join' || workload.group === 'memory') {
      const rate = strongest(merged, metrics.connectsPerSec!)
      const cpu = strongest(merged, metrics.cpuPerJoinMs!)
      const rss = strongest(merged, metrics.rssPerConnKB!)
      const heap = strongest(merged, metrics.heapPerConnKB!)
      const vs = (kind: Kind, base: Kind | undefined, key: string): string => base === undefined ? 'n/a' : ratio(merged.get(kind)!.result[key]! / merged.get(base)!.result[key]!)
      const name = (base: Kind | undefined): string => base === undefined ? 'n/a' : labels[base]
      if (workload.group === 'join') {
        say(`| server | connects and joins/s | vs ${name(rate)} | server CPU per connect and join, ms | vs ${name(cpu)} | p50 / p99 join-to-\`joined\`, ms | presence frames per member | correct |`)
        say('|---|---:|---:|---:|---:|---:|---:|---|')
        for (const [kind, r] of merged) {
          const x = r.result
          say(`| ${labels[kind]} | ${fmt(x.connectsPerSec)} | ${vs(kind, rate, 'connectsPerSec')} | ${fmt(x.cpuPerJoinMs, 3)} | ${vs(kind, cpu, 'cpuPerJoinMs')} | ${fmt(x.joinP50, 1)} / ${fmt(x.joinP99, 1)} | ${fmt(x.presencePerMember, 1)} | ${verdict(r)} |`)
        }
      } else {
        const quarter = Math.max(1, Math.floor(workload.rooms / 4)) * workload.members
        say(`The connections join in four steps of ${fmt(quarter)}, the server read after a gc after each: a figure is the median of the last three steps' cost per connection (the first step also pays for compiled code and the young generation's growth), then the median of the runs, lowest-highest in brackets. "From start" is every connection over the server's start-up reading, as this bench measured before: it moves by about 1 KB of RSS between runs.`)
        say()
        say(`| server | RSS per connection, KB | vs ${name(rss)} | heap per connection, KB | vs ${name(heap)} | RSS / heap from start, KB | connects and joins/s | presence frames per member | correct |`)
        say('|---|---:|---:|---:|---:|---:|---:|---:|---|')
        const spread = (x: Result, key: string): string => x[`${key}Min`] === undefined ? '' : ` (${fmt(x[`${key}Min`], 2)}-${fmt(x[`${key}Max`], 2)})`
        for (const [kind, r] of merged) {
          const x = r.result
          say(`| ${labels[kind]} | ${fmt(x.rssPerConnKB, 2)}${spread(x, 'rssPerConnKB')} | ${vs(kind, rss, 'rssPerConnKB')} | ${fmt(x.heapPerConnKB, 2)}${spread(x, 'heapPerConnKB')} | ${vs(kind, heap, 'heapPerConnKB')} | ${fmt(x.rssFromStartKB, 2)} / ${fmt(x.heapFromStartKB, 2)} | ${fmt(x.connectsPerSec)} | ${fmt(x.presencePerMember, 1)} | ${verdict(r)} |`)
        }
      }
    } else {
      say('| server | time to fill the room, s | storm took, s | every member had the last count after, s | most presence frames one member received | p50 / p99 join-to-`joined`, ms | p50 / p99 connect-to-`joined`, ms | server CPU per storm join, ms | server / load generators\' CPU over the storm, s | server\'s longest event-loop delay, ms | listen-queue overflows (machine-wide) | correct |')
      say('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|')
      for (const [kind, r] of merged) {
        const x = r.result
        say(`| ${labels[kind]} | ${fmt(x.fillMs! / 1000, 1)} | ${fmt(x.stormMs! / 1000, 1)} | ${fmt(x.settledMs! / 1000, 1)} | ${fmt(x.maxPresenceFrames)} | ${fmt(x.joinP50, 1)} / ${fmt(x.joinP99, 1)} | ${fmt(x.openJoinP50, 1)} / ${fmt(x.openJoinP99, 1)} | ${fmt(x.cpuPerJoinMs, 3)} | ${fmt(x.serverCpuMs! / 1000, 1)} / ${fmt(x.loadgenCpuMs! / 1000, 1)} | ${fmt(x.loopMaxMs)} | ${fmt(x.listenOverflows)} | ${verdict(r)} |`)
      }
    }
  }
  capacityFigures(results, say, labels)
  say()
  say('Reproduce: `npm run bench` (this report also goes to bench/results/latest.md); one workload: `npm run bench -- --only=<name> [--kinds=rooms,ws-coalesced] [--reps=n]`.')
  return lines.join('\n')
}

/** Masters (and replicas) of the cluster as the run's result keys number them: 0, 1, 2 in slot order. */
const shardsOf = (result: Result): number[] => Object.keys(result).map((k) => /^master(\d+)CpuMs$/.exec(k)?.[1]).filter((i) => i !== undefined).map(Number).sort((a, b) => a - b)
const perPublishUs = (cpuMs: number | undefined, publishes: number | undefined): number => cpuMs === undefined || publishes === undefined || publishes === 0 ? NaN : cpuMs * 1000 / publishes
/** The run's publishes that went to master i's rooms (every room gets as many). */
const publishesOn = (result: Result, i: number, rooms: number): number => (result.published ?? NaN) * (result[`master${i}Rooms`] ?? NaN) / rooms

/** The sharding workload: each server's figures, then each redis-server's CPU against the one Redis's for the same publishes. */
function shardTables (merged: Merged, rooms: number, say: (line?: string) => void, labels: Record<Kind, string>, verdict: (r: { problems: string[] }) => string): void {
  say('| server | messages published | deliveries | server CPU per delivery, µs | Redis CPU (every redis-server), ms | Redis CPU per publish, µs | lost / duplicated / out of order | correct |')
  say('|---|---:|---:|---:|---:|---:|---|---|')
  for (const [kind, r] of merged) {
    const x = r.result
    say(`| ${labels[kind]} | ${fmt(x.published)} | ${fmt(x.deliveries)} | ${fmt(1e6 / x.deliveriesPerCpuSec!, 2)} | ${fmt(x.redisCpuAllMs)} | ${fmt(perPublishUs(x.redisCpuAllMs, x.published), 1)} | ${fmt(x.lost)} / ${fmt(x.duplicated)} / ${fmt(x.outOfOrder)} | ${verdict(r)} |`)
  }
  const single = merged.get('rooms-redis')?.result
  const sharded = merged.get('rooms-cluster')?.result
  if (single === undefined || sharded === undefined) return
  const one = single.redisCpuMs!
  say()
  say(`Sharding spreads the load: CPU time of each redis-server process (/proc/<pid>/stat, utime + stime) from the first publish to the last delivery, against the one Redis's for the same publishes. A replica's CPU is what replication costs on top (it applies every write of its master); the cluster bus's gossip is in every node's figure.`)
  say()
  say('| redis-server | rooms it serves | CPU during the run, ms | vs the one Redis | goal | |')
  say('|---|---:|---:|---:|---|---|')
  const withReplica = single.redisReplicaCpuMs !== undefined
  say(`| one Redis (fastify-rooms on Redis, 2 instances${withReplica ? ', with a replica and WAIT' : ', no replica'}) | ${fmt(rooms)} | ${fmt(one)} | 1.00x | | |`)
  if (withReplica) say(`| the one Redis's replica | | ${fmt(single.redisReplicaCpuMs)} | ${ratio(single.redisReplicaCpuMs! / one)} | (replication, no goal) | |`)
  let masters = 0
  let replicas = 0
  for (const i of shardsOf(sharded)) {
    const cpu = sharded[`master${i}CpuMs`]!
    masters += cpu
    const x = cpu / one
    say(`| cluster master ${i + 1} | ${fmt(sharded[`master${i}Rooms`])} | ${fmt(cpu)} | ${ratioAgainst(x, 0.45)} | ≤ 0.45x | ${Number.isFinite(x) && x <= 0.45 ? 'met' : '**not met**'} |`)
  }
  // A cluster run with --cluster-replicas=0 has none.
  const withReplicas = shardsOf(sharded).some((i) => sharded[`replica${i}CpuMs`] !== undefined)
  for (const i of withReplicas ? shardsOf(sharded) : []) {
    const cpu = sharded[`replica${i}CpuMs`]
    replicas += cpu ?? 0
    say(`| cluster replica of master ${i + 1} | | ${fmt(cpu)} | ${ratio(cpu! / one)} | (replication, no goal) | |`)
  }
  say(`| cluster, 3 masters together | | ${fmt(masters)} | ${ratio(masters / one)} | | |`)
  if (withReplicas) say(`| cluster, all 6 processes together | | ${fmt(masters + replicas)} | ${ratio((masters + replicas) / one)} | | |`)
}

/** The costs a capacity plan multiplies out: server CPU per delivery and per publish, Redis CPU per publish (one Redis, each shard). */
function capacityFigures (results: Map<Workload, Merged>, say: (line?: string) => void, labels: Record<Kind, string>): void {
  const kinds: Kind[] = ['rooms', 'rooms-redis', 'rooms-cluster']
  const rows: string[] = []
  for (const [workload, merged] of results) {
    if (workload.group !== 'fanout' && workload.group !== 'shard') continue
    for (const kind of kinds) {
      const x = merged.get(kind)?.result
      if (x === undefined) continue
      const redisOne = kind === 'rooms-redis' ? fmt(perPublishUs(x.redisCpuMs, x.published), 1) : ''
      const shards = kind === 'rooms-cluster'
        ? shardsOf(x).map((i) => `${fmt(perPublishUs(x[`master${i}CpuMs`], publishesOn(x, i, workload.rooms)), 1)} (+${fmt(perPublishUs(x[`replica${i}CpuMs`], publishesOn(x, i, workload.rooms)), 1)})`).join(' / ')
        : ''
      rows.push(`| ${workload.name} | ${labels[kind]} | ${fmt(1e6 / x.deliveriesPerCpuSec!, 2)} | ${fmt(perPublishUs(x.serverCpuMs, x.published), 1)} | ${fmt(x.deliveries! / x.published!, 1)} | ${redisOne} | ${shards} |`)
    }
  }
  if (rows.length === 0) return
  say()
  say('## Capacity plan figures')
  say()
  say('Server CPU counts every app instance (both, on Redis); per delivery is all of it over the deliveries (publish, Redis round trip and fan-out included), per publish all of it over the publishes. Redis CPU per publish: the one Redis\'s CPU over the run\'s publishes; on the cluster each master\'s over the publishes to its rooms, its replica\'s in brackets. A shard that served none of the run\'s rooms shows n/a.')
  say()
  say('| workload | server | server CPU per delivery, µs | server CPU per publish, µs | deliveries per publish | one Redis: CPU per publish, µs | cluster, masters 1 / 2 / 3: CPU per publish (+ replica), µs |')
  say('|---|---|---:|---:|---:|---:|---|')
  for (const row of rows) say(row)
}
