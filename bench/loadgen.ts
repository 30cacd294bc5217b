/**
 * The load generator: a separate process driven by bench/run.ts over IPC, so
 * its CPU never counts as the server's. It opens the clients, joins them to
 * their rooms, publishes, and checks that every member got every message once,
 * in order.
 */
import { performance } from 'node:perf_hooks'
import { numberAfter, open, wsUrl, type BenchClient, type Kind } from './client.js'

interface Setup { cmd: 'setup', kind: Kind, ports: number[], rooms: number, members: number, payloadBytes: number }
interface Go { cmd: 'go', durationMs: number, window: number, rate?: number, onlyRoom?: number }
type Command = Setup | Go | { cmd: 'close' }

let clients: BenchClient[] = []
let roomOf: Int32Array
let last: Int32Array
let rooms = 0
let members = 0
let pad = ''
let deliveries = 0
let errors = 0
let latencies: number[] = []

async function setup (job: Setup): Promise<{ connectMs: number }> {
  rooms = job.rooms
  members = job.members
  pad = 'x'.repeat(job.payloadBytes)
  const total = rooms * members
  roomOf = new Int32Array(total)
  last = new Int32Array(total)
  clients = new Array(total)
  const started = performance.now()
  let next = 0
  await Promise.all(Array.from({ length: Math.min(200, total) }, async () => {
    while (next < total) {
      const i = next++
      const client = await open(job.kind, wsUrl(job.kind, job.ports[i % job.ports.length] as number))
      roomOf[i] = i % rooms
      client.onMessage = (text) => {
        const offset = numberAfter(text, '"offset":')
        if (offset !== last[i]! + 1) errors++
        last[i] = offset
        deliveries++
        latencies.push(performance.now() - numberAfter(text, '"s":'))
      }
      await client.join(`room-${i % rooms}`)
      clients[i] = client
    }
  }))
  return { connectMs: performance.now() - started }
}

async function go (job: Go): Promise<Record<string, number>> {
  deliveries = 0
  errors = 0
  latencies = []
  last.fill(0)
  const published = new Array<number>(rooms).fill(0)
  const started = performance.now()
  const end = started + job.durationMs
  const publishers = Array.from({ length: rooms }, (_, r) => r).filter((r) => job.onlyRoom === undefined || r === job.onlyRoom)
  const data = (): string => `{"s":${performance.now().toFixed(3)},"p":"${pad}"}`
  await Promise.all(publishers.map(async (r) => {
    // The publisher is the room's first member: client r (clients are dealt round-robin to rooms).
    const publisher = clients[r] as BenchClient
    if (job.rate !== undefined) {
      const every = 1000 / job.rate
      for (let n = 0; performance.now() < end; n++) {
        await publisher.publish(`room-${r}`, data())
        published[r]!++
        const wait = started + (n + 1) * every - performance.now()
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait))
      }
      return
    }
    const window: Array<Promise<number>> = []
    while (performance.now() < end) {
      window.push(publisher.publish(`room-${r}`, data()))
      published[r]!++
      if (window.length >= job.window) await window.shift()
    }
    await Promise.all(window)
  }))
  const expected = published.reduce((sum, n) => sum + n * members, 0)
  const deadline = performance.now() + 60_000
  while (deliveries < expected && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5))
  const wallMs = performance.now() - started
  // Every member of a publishing room must end at the room's last offset.
  let short = 0
  for (let i = 0; i < clients.length; i++) if (publishers.includes(roomOf[i]!) && last[i] !== published[roomOf[i]!]) short++
  const sorted = Float64Array.from(latencies).sort()
  const at = (q: number): number => sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!
  return { published: published.reduce((a, b) => a + b, 0), deliveries, expected, errors: errors + short, wallMs, p50: at(0.5), p99: at(0.99) }
}

process.on('message', (job: Command) => {
  const reply = (value: unknown): void => { process.send?.(value) }
  if (job.cmd === 'setup') setup(job).then(reply, (err: Error) => reply({ error: err.message }))
  else if (job.cmd === 'go') go(job).then(reply, (err: Error) => reply({ error: err.message }))
  else { for (const c of clients) c.close(); reply({ closed: true }) }
})
process.on('disconnect', () => process.exit(0))
