/**
 * What the garbage collector does in a server during the 100 x 10 fan-out:
 * `node --import=tsx bench/burst-gc.ts KIND [ROUNDS] [NODE_FLAGS...]` starts
 * one bench server (bench/servers.ts) with `--trace-gc-nvp` and the given node
 * flags (e.g. `--cpu-prof`), joins 1,000 clients into 100 rooms, and runs
 * ROUNDS measured rounds after 20 unmeasured ones. In a round each room's
 * publisher writes 20 publishes in one TCP write and every member gets all
 * 20; with WINDOW=1, each publisher keeps 20 in flight (the next on each ack)
 * until 200 are acked, as the bench's fan-out does. Prints one JSON line: the
 * server's CPU (`process.cpuUsage`) per delivery, and over the measured
 * rounds its write and read system calls and the bytes it wrote per delivery (acks included), its scavenges and full collections, and the bytes a scavenge
 * promoted to the old generation and kept in the young one, on average.
 * NVP_LOG=file appends the raw `--trace-gc-nvp` lines of the scavenges.
 * TRACE_LOG=file appends the server's other output (e.g. `--trace-deopt`).
 * KIND `rooms-redis` runs one instance on the Redis adapter, on a
 * redis-server this harness starts and stops (no other instance: what one
 * Redis-backed instance costs per delivery, against `rooms`; Redis's own CPU
 * is not counted).
 */
import { appendFileSync, readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import WebSocket from 'ws'
import { startRedis } from '../test/helpers/redis.js'
import { call, node } from './children.js'

const kind = process.argv[2] ?? 'rooms'
const rounds = Number(process.argv[3] ?? 200)
const flags = process.argv.slice(4)
const ROOMS = 100
const MEMBERS = 10
const BURST = 20
const windowed = process.env.WINDOW === '1'
const PER_ROUND = windowed ? 200 : BURST
const nvpLog = process.env.NVP_LOG
/** TRACE_LOG=file: the server's other output lines (e.g. `--trace-deopt`), each marked W (warm-up) or M (measured). */
const traceLog = process.env.TRACE_LOG

const stops: Array<() => unknown> = []
const redis = kind === 'rooms-redis' ? await startRedis({ teardown: (fn) => stops.push(fn) }) : undefined
// However the harness ends (a failed call rejects at the top level), its redis-server must not outlive it.
process.on('exit', () => {
  const pid = redis?.pid()
  if (pid !== undefined) try { process.kill(pid, 'SIGKILL') } catch {}
})
const redisUrl = redis?.url ?? ''
const server = node(['--trace-gc-nvp', ...flags, '--expose-gc', '--import=tsx', 'bench/servers.ts', kind, redisUrl, '100'])
let measuring = false
const gc = { scavenges: 0, fullGcs: 0, scavengeMs: 0, fullGcMs: 0, promoted: 0, survived: 0 }
const port = await new Promise<number>((resolve) => {
  createInterface({ input: server.stdout as NodeJS.ReadableStream }).on('line', (line) => {
    const ready = /^ready \S+ (\d+)/.exec(line)
    if (ready !== null) resolve(Number(ready[1]))
    if (traceLog !== undefined && !line.includes(' gc=')) appendFileSync(traceLog, `${measuring ? 'M' : 'W'} ${line}\n`)
    if (!measuring) return
    const pause = Number(/ pause=([\d.]+)/.exec(line)?.[1] ?? 0)
    if (/ gc=s /.test(line)) {
      gc.scavenges++
      gc.scavengeMs += pause
      gc.promoted += Number(/ promoted=(\d+)/.exec(line)?.[1] ?? 0)
      gc.survived += Number(/ new_space_survived=(\d+)/.exec(line)?.[1] ?? 0)
      if (nvpLog !== undefined) appendFileSync(nvpLog, line + '\n')
    } else if (/ gc=m[cs] /.test(line)) {
      gc.fullGcs++
      gc.fullGcMs += pause
    }
  })
})

async function cpu (): Promise<number> {
  const { cpu } = await call<{ cpu: { user: number, system: number } }>(server, { cmd: 'stats' })
  return (cpu.user + cpu.system) / 1000
}

interface Client { ws: WebSocket, room: number, got: number, acks: number, sent: number }
const clients: Client[] = []
let outstanding = 0
let roundDone: (() => void) | undefined
const done = (): void => { if (--outstanding === 0) roundDone?.() }
const publish = (c: Client): void => {
  c.ws.send(`{"type":"publish","room":"r${c.room}","data":{"s":${performance.now().toFixed(3)},"p":"${'x'.repeat(100)}"},"id":${++c.sent}}`)
}

const url = kind.startsWith('rooms') ? `ws://127.0.0.1:${port}/ws` : `ws://127.0.0.1:${port}/`
for (let i = 0; i < ROOMS * MEMBERS; i++) {
  const ws = new WebSocket(url, { perMessageDeflate: false })
  const client: Client = { ws, room: i % ROOMS, got: 0, acks: 0, sent: 0 }
  clients.push(client)
  await new Promise<void>((resolve, reject) => {
    ws.on('error', reject)
    ws.on('message', (raw: Buffer) => {
      // Told apart by the letter after `{"type":"`: message, ack, joined, welcome.
      const c = raw[9]
      if (c === 0x6d) {
        if (++client.got === PER_ROUND) done()
      } else if (c === 0x61) {
        if (++client.acks === PER_ROUND) done()
        else if (windowed && client.sent < PER_ROUND) publish(client)
      } else if (c === 0x6a) {
        resolve()
      } else if (c === 0x77) {
        ws.send(`{"type":"join","room":"r${client.room}"}`)
      }
    })
  })
}

async function round (): Promise<void> {
  outstanding = clients.length + ROOMS
  for (const c of clients) {
    c.got = 0
    c.acks = 0
    c.sent = 0
  }
  const all = new Promise<void>((resolve) => { roundDone = resolve })
  for (let r = 0; r < ROOMS; r++) {
    const publisher = clients[r] as Client
    const raw = (publisher.ws as unknown as { _socket: { cork: () => void, uncork: () => void } })._socket
    if (!windowed) raw.cork()
    for (let k = 0; k < BURST; k++) publish(publisher)
    if (!windowed) raw.uncork()
  }
  await all
}

/** The server's read and write system calls, and the bytes it wrote, so far (Linux: /proc/PID/io), or NaN. */
function syscalls (): { reads: number, writes: number, written: number } {
  try {
    const io = readFileSync(`/proc/${server.pid}/io`, 'utf8')
    return { reads: Number(/syscr: (\d+)/.exec(io)?.[1]), writes: Number(/syscw: (\d+)/.exec(io)?.[1]), written: Number(/wchar: (\d+)/.exec(io)?.[1]) }
  } catch {
    return { reads: NaN, writes: NaN, written: NaN }
  }
}

for (let i = 0; i < 20; i++) await round()
measuring = true
const before = await cpu()
const callsBefore = syscalls()
const started = performance.now()
for (let i = 0; i < rounds; i++) await round()
const wallMs = performance.now() - started
const cpuMs = await cpu() - before
const callsAfter = syscalls()
const deliveries = rounds * ROOMS * MEMBERS * PER_ROUND
console.log(JSON.stringify({
  kind,
  windowed,
  rounds,
  wallMs: Math.round(wallMs),
  cpuMs: Math.round(cpuMs),
  deliveriesPerCpuS: Math.round(deliveries / cpuMs * 1000),
  writesPerDelivery: +((callsAfter.writes - callsBefore.writes) / deliveries).toFixed(4),
  readsPerDelivery: +((callsAfter.reads - callsBefore.reads) / deliveries).toFixed(4),
  bytesPerDelivery: Math.round((callsAfter.written - callsBefore.written) / deliveries),
  scavenges: gc.scavenges,
  fullGcs: gc.fullGcs,
  scavengeMs: Math.round(gc.scavengeMs),
  fullGcMs: Math.round(gc.fullGcMs),
  promotedKBPerScavenge: Math.round(gc.promoted / gc.scavenges / 1024),
  survivedKBPerScavenge: Math.round(gc.survived / gc.scavenges / 1024)
}))
for (const c of clients) c.ws.terminate()
server.kill()
for (const stop of stops) await stop()
process.exit(0)
