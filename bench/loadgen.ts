/**
 * The load generator: a separate process driven by bench/run.ts over IPC, so
 * its CPU never counts as the server's. It holds sessions (one per run, so the
 * smoke run can drive every server at once), each a set of clients joined to
 * their rooms. It publishes and checks that every member got every message
 * once, in order; it counts presence frames without parsing them.
 */
import { performance } from 'node:perf_hooks'
import { lastCount, numberAfter, open, wsUrl, type BenchClient, type Kind } from './client.js'
import { openLean } from './lean-client.js'

export interface Connect {
  cmd: 'connect'
  kind: Kind
  ports: number[]
  /** Clients `from` to `from + count - 1` of the run; client i joins room `prefix + (i % rooms)`, through port i % ports.length. */
  from: number
  count: number
  rooms: number
  prefix: string
  /** Connections opening at once; with `rate`, each starts on schedule instead (a join storm). */
  concurrency: number
  rate?: number
  deadlineMs: number
  /** Use bench/lean-client.ts (members that only join and count presence: a join storm's). */
  lean?: boolean
}
/** `messages`: each publisher stops after this many (a fixed total), or at `durationMs`, whichever comes first. */
export interface Fanout { cmd: 'fanout', durationMs: number, window: number, payloadBytes: number, rate?: number, onlyRoom?: number, messages?: number }
export interface Converge { cmd: 'converge', expectedCount: number, deadlineMs: number }
type Command = (Connect | Fanout | Converge | { cmd: 'presence' } | { cmd: 'reset-presence' } | { cmd: 'close' }) & { rid: number, sid: string }

interface Session {
  clients: BenchClient[]
  from: number
  rooms: number
  prefix: string
}
const sessions = new Map<string, Session>()

const quantile = (values: number[], q: number): number => {
  if (values.length === 0) return NaN
  const sorted = Float64Array.from(values).sort()
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!
}
const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

async function connect (session: Session, job: Connect): Promise<Record<string, number | string>> {
  session.from = job.from
  session.rooms = job.rooms
  session.prefix = job.prefix
  session.clients = new Array(job.count)
  const joinMs: number[] = []
  /** From the start of the connection to `joined`: what a user waits for, busy accept and upgrade included. */
  const openJoinMs: number[] = []
  let failed = 0
  let firstError = ''
  const deadline = performance.now() + job.deadlineMs
  const one = async (k: number): Promise<void> => {
    const i = job.from + k
    let timer: NodeJS.Timeout | undefined
    const opening = performance.now()
    try {
      const late = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`no joined before the deadline of ${job.deadlineMs} ms`)), Math.max(0, deadline - performance.now())) })
      const client = await Promise.race([(job.lean === true ? openLean : open)(job.kind, wsUrl(job.kind, job.ports[i % job.ports.length]!)), late])
      session.clients[k] = client
      const sent = performance.now()
      await Promise.race([client.join(`${job.prefix}${i % job.rooms}`), late])
      joinMs.push(performance.now() - sent)
      openJoinMs.push(performance.now() - opening)
      client.joined = true
    } catch (err) {
      failed++
      firstError ||= (err as Error).message
    } finally {
      clearTimeout(timer)
    }
  }
  const started = performance.now()
  if (job.rate === undefined) {
    let next = 0
    await Promise.all(Array.from({ length: Math.min(job.concurrency, job.count) }, async () => {
      while (next < job.count && performance.now() < deadline) await one(next++)
    }))
  } else {
    const every = 1000 / job.rate
    const all: Array<Promise<void>> = []
    for (let k = 0; k < job.count && performance.now() < deadline; k++) {
      const wait = started + k * every - performance.now()
      if (wait > 0) await sleep(wait)
      all.push(one(k))
    }
    await Promise.all(all)
  }
  const connectMs = performance.now() - started
  const joined = joinMs.length
  if (joined < job.count && failed === 0) firstError = `deadline of ${job.deadlineMs} ms passed`
  return { connectMs, joined, failed: job.count - joined, joinP50: quantile(joinMs, 0.5), joinP99: quantile(joinMs, 0.99), openJoinP50: quantile(openJoinMs, 0.5), openJoinP99: quantile(openJoinMs, 0.99), firstError }
}

/** Offsets a client has seen, one bit each, grown as offsets grow. */
class Seen {
  bits = new Uint8Array(64)
  has (offset: number): boolean { return offset >> 3 < this.bits.length && (this.bits[offset >> 3]! & (1 << (offset & 7))) !== 0 }
  add (offset: number): void {
    if (offset >> 3 >= this.bits.length) {
      const grown = new Uint8Array(Math.max(this.bits.length * 2, (offset >> 3) + 1))
      grown.set(this.bits)
      this.bits = grown
    }
    this.bits[offset >> 3]! |= 1 << (offset & 7)
  }
}

async function fanout (session: Session, job: Fanout): Promise<Record<string, number>> {
  const { clients, rooms, prefix } = session
  const pad = 'x'.repeat(job.payloadBytes)
  let deliveries = 0
  let duplicated = 0
  let outOfOrder = 0
  const latencies: number[] = []
  const unique = new Int32Array(clients.length)
  const highest = new Int32Array(clients.length)
  const seen = clients.map(() => new Seen())
  clients.forEach((client, k) => {
    client.onMessage = (text) => {
      deliveries++
      const offset = numberAfter(text, '"offset":')
      if (!(offset >= 1) || seen[k]!.has(offset)) { duplicated++; return }
      seen[k]!.add(offset)
      unique[k]!++
      if (offset < highest[k]!) outOfOrder++
      else highest[k] = offset
      latencies.push(performance.now() - numberAfter(text, '"s":'))
    }
  })
  const published = new Array<number>(rooms).fill(0)
  const started = performance.now()
  const end = started + job.durationMs
  const publishers = Array.from({ length: rooms }, (_, r) => r).filter((r) => job.onlyRoom === undefined || r === job.onlyRoom)
  const data = (): string => `{"s":${performance.now().toFixed(3)},"p":"${pad}"}`
  await Promise.all(publishers.map(async (r) => {
    // The publisher is the room's first member: client r (clients are dealt round-robin to rooms).
    const publisher = clients[r]!
    if (job.rate !== undefined) {
      const every = 1000 / job.rate
      for (let n = 0; performance.now() < end; n++) {
        await publisher.publish(`${prefix}${r}`, data())
        published[r]!++
        const wait = started + (n + 1) * every - performance.now()
        if (wait > 0) await sleep(wait)
      }
      return
    }
    const window: Array<Promise<number>> = []
    const limit = job.messages ?? Infinity
    while (performance.now() < end && published[r]! < limit) {
      window.push(publisher.publish(`${prefix}${r}`, data()))
      published[r]!++
      if (window.length >= job.window) await window.shift()
    }
    await Promise.all(window)
  }))
  const expected = published.reduce((sum, n) => sum + n * clients.length / rooms, 0)
  const deadline = performance.now() + 60_000
  while (deliveries - duplicated < expected && performance.now() < deadline) await sleep(5)
  const wallMs = performance.now() - started
  // Every member of a publishing room must have every offset from 1 to the room's last one.
  let lost = 0
  let closed = 0
  clients.forEach((client, k) => {
    const r = (session.from + k) % rooms
    if (publishers.includes(r)) lost += Math.max(0, published[r]! - unique[k]!)
    if (client.closed) closed++
  })
  return { published: published.reduce((a, b) => a + b, 0), deliveries, expected, lost, duplicated, outOfOrder, closed, wallMs, p50: quantile(latencies, 0.5), p99: quantile(latencies, 0.99) }
}

/** Wait until every member's last presence count is the room's size (no event says the last diff arrived). */
async function converge (session: Session, job: Converge): Promise<Record<string, number | string>> {
  const started = performance.now()
  let behind = session.clients.length
  while (performance.now() - started < job.deadlineMs) {
    behind = 0
    for (const client of session.clients) if (client?.joined === true && lastCount(client) !== job.expectedCount) behind++
    if (behind === 0) break
    await sleep(10)
  }
  // A sample of the wrong counts, for the report.
  const counts = [...new Set(session.clients.filter((c) => c?.joined === true).map(lastCount).filter((n) => n !== job.expectedCount))].slice(0, 5).join(', ')
  return { waitedMs: performance.now() - started, notConverged: behind, counts }
}

function presence (session: Session): Record<string, number> {
  let maxFrames = 0
  let totalFrames = 0
  let closed = 0
  for (const client of session.clients) {
    if (client === undefined) continue
    maxFrames = Math.max(maxFrames, client.presenceFrames)
    totalFrames += client.presenceFrames
    if (client.closed) closed++
  }
  return { maxFrames, totalFrames, closed }
}

process.on('message', (job: Command) => {
  const reply = (value: object): void => { process.send?.({ rid: job.rid, ...value }) }
  let session = sessions.get(job.sid)
  if (session === undefined) sessions.set(job.sid, session = { clients: [], from: 0, rooms: 1, prefix: '' })
  const run = async (): Promise<object> => {
    switch (job.cmd) {
      case 'connect': return await connect(session, job)
      case 'fanout': return await fanout(session, job)
      case 'converge': return await converge(session, job)
      case 'presence': return presence(session)
      case 'reset-presence':
        for (const client of session.clients) if (client !== undefined) client.presenceFrames = 0
        return {}
      case 'close':
        for (const client of session.clients) client?.close()
        sessions.delete(job.sid)
        return {}
    }
  }
  run().then(reply, (err: Error) => reply({ error: err.message }))
})
process.on('disconnect', () => process.exit(0))
