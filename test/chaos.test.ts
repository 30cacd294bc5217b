import t, { type Test } from 'tap'
import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import WebSocket from 'ws'
import Fastify, { type FastifyInstance } from 'fastify'
import rooms from '../src/index.js'
import { connect, type Gap, type RoomsClient } from '../src/client/index.js'
import { seeded } from './helpers/random.js'
import { skipRedis, startRedis } from './helpers/redis.js'
import { childInstance } from './helpers/child-instance.js'

/**
 * The whole delivery guarantee under faults, seeded so a failure replays:
 * `CHAOS_SEED=<seed> npx tap test/chaos.test.ts`. 20 SDK clients publish
 * 1,000 messages between them into one room while their sockets are dropped
 * at random and the store loses its data once (a memory node restarts; Redis
 * restarts empty), and on Redis one instance is killed. At the end every
 * client holds every offset of the final epoch once, in order; every message
 * a client missed is named by a gap event it received; no acked message is
 * lost without such a gap; nothing is delivered twice.
 */
const SEED = Number(process.env.CHAOS_SEED ?? Math.floor(Math.random() * 2 ** 31))
const CLIENTS = 20
const TOTAL = 1000
const ROOM = 'chaos'

interface Topology {
  /** URLs of the instances up now; a reconnecting client picks one of them. */
  live: () => string[]
  /** HTTP base URL of a live instance, for the final REST check. */
  http: () => string
  /** The store loses everything: a new epoch. */
  loseData: () => Promise<void>
  /** Kill an instance without any cleanup (Redis only). */
  killOne?: () => Promise<void>
}

interface Seen {
  /** Every message delivered by the SDK: the room's epoch at that moment, offset, data. */
  delivered: Array<{ epoch: string, offset: number, data: string }>
  gaps: Gap[]
}

async function chaos (t: Test, topology: Topology): Promise<void> {
  const rand = seeded(SEED)
  const say = `(seed ${SEED})`
  const sockets: Array<WebSocket | undefined> = []
  const clients: RoomsClient[] = []
  const seen: Seen[] = []
  for (let i = 0; i < CLIENTS; i++) {
    // A load balancer in front of the instances: each (re)connect goes to a live one.
    class Balanced extends WebSocket {
      constructor () {
        const live = topology.live()
        super(live[Math.floor(rand() * live.length)] as string)
        sockets[i] = this
      }
    }
    const client = await connect(topology.live()[i % topology.live().length] as string, {
      WebSocket: Balanced as never,
      reconnect: { initialDelayMs: 5, maxDelayMs: 100 },
      requestTimeoutMs: 5_000
    })
    const room = await client.join(ROOM)
    const mine: Seen = { delivered: [], gaps: [] }
    room.on('message', (m) => mine.delivered.push({ epoch: room.epoch, offset: m.offset, data: m.data as string }))
    room.on('gap', (gap) => mine.gaps.push(gap))
    clients.push(client)
    seen.push(mine)
  }
  t.teardown(() => { for (const c of clients) c.close() })

  // Faults at seeded moments, counted in publish attempts.
  const dropAt = new Map<number, number>()
  for (let k = 0; k < 60; k++) dropAt.set(Math.floor(rand() * TOTAL), Math.floor(rand() * CLIENTS))
  const loseAt = Math.floor(TOTAL / 4 + rand() * TOTAL / 4)
  const killAt = Math.floor(TOTAL / 2 + rand() * TOTAL / 4)

  const acked = new Map<string, number>()
  const faults: Array<Promise<void>> = []
  let attempts = 0
  await Promise.all(clients.map(async (client, c) => {
    const room = client.room(ROOM)
    for (let n = 0; n < TOTAL / CLIENTS; n++) {
      const at = attempts++
      const victim = dropAt.get(at)
      if (victim !== undefined && sockets[victim]?.readyState === WebSocket.OPEN) sockets[victim]?.terminate()
      if (at === loseAt) faults.push(topology.loseData())
      if (at === killAt && topology.killOne !== undefined) faults.push(topology.killOne())
      const data = `${c}:${n}`
      try {
        acked.set(data, await (room ?? client.room(ROOM))!.publish(data))
      } catch (err) {
        // Not acked: refused (UNAVAILABLE), or unknown (DISCONNECTED, TIMEOUT). Only acked ones are checked.
        if (!['UNAVAILABLE', 'DISCONNECTED', 'TIMEOUT', 'INTERNAL'].includes((err as { code: string }).code)) throw err
      }
    }
  }))
  await Promise.all(faults)
  // Not vacuous: the checks below cover acked messages (how many depends on load and on where the faults fall).
  t.ok(acked.size >= TOTAL / 10, `${acked.size} of ${TOTAL} publishes were acked ${say}`)

  // The final epoch and its last offset, once every publish has settled.
  const final = await (await fetch(`${topology.http()}/rooms/${ROOM}`)).json() as { offset: number, epoch: string }
  const history = await (await fetch(`${topology.http()}/rooms/${ROOM}/messages?limit=1000`)).json() as { epoch: string, messages: Array<{ offset: number, data: string }> }
  t.equal(history.epoch, final.epoch)
  t.same(history.messages.map((m) => m.offset), Array.from({ length: final.offset }, (_, k) => k + 1), `the final epoch's history is complete ${say}`)
  const finalData = new Map(history.messages.map((m) => [m.data, m.offset]))
  t.equal(finalData.size, history.messages.length, `no message holds two offsets in the final epoch ${say}`)

  // Every client catches up with the final epoch: wait for it, event by event.
  await Promise.all(clients.map(async (client, c) => await new Promise<void>((resolve, reject) => {
    const room = client.room(ROOM)!
    const done = (): boolean => room.epoch === final.epoch && room.offset >= final.offset
    if (done()) { resolve(); return }
    const timer = setTimeout(() => reject(new Error(`client ${c} stuck at ${room.epoch}/${room.offset}, final ${final.epoch}/${final.offset}, state ${client.state} ${say}`)), 30_000)
    room.on('message', () => { if (done()) { clearTimeout(timer); resolve() } })
  })))

  for (const [c, mine] of seen.entries()) {
    const inFinal = mine.delivered.filter((d) => d.epoch === final.epoch).map((d) => d.offset)
    t.same(inFinal, Array.from({ length: final.offset }, (_, k) => k + 1), `client ${c}: every offset of the final epoch once, in order ${say}`)
    const data = mine.delivered.map((d) => d.data)
    t.equal(new Set(data).size, data.length, `client ${c}: no message delivered twice ${say}`)
    const byEpoch = new Map<string, number[]>()
    for (const d of mine.delivered) byEpoch.set(d.epoch, [...(byEpoch.get(d.epoch) ?? []), d.offset])
    for (const [epoch, offsets] of byEpoch) {
      t.ok(offsets.every((o, k) => k === 0 || o > (offsets[k - 1] as number)), `client ${c}: offsets of epoch ${epoch} increase ${say}`)
    }
    // Each acked message reached this client, or sits in a gap it was told about.
    const got = new Set(data)
    const where = new Map<string, { epoch: string, offset: number }>()
    for (const other of seen) for (const d of other.delivered) where.set(d.data, d)
    const unexplained: string[] = []
    for (const [message, offset] of acked) {
      if (got.has(message)) continue
      const place = where.get(message)
      const named = mine.gaps.some((g) => (place === undefined || g.epoch === place.epoch) && g.after < offset && (g.before === null || offset < g.before))
      if (!named) unexplained.push(`${message}@${place?.epoch ?? '?'}/${offset}`)
    }
    t.same(unexplained, [], `client ${c}: every acked message it missed is named by a gap (gaps: ${JSON.stringify(mine.gaps)}) ${say}`)
  }
}

t.test(`chaos on one memory node (seed ${SEED})`, async (t) => {
  let app: FastifyInstance | undefined
  let port = 0
  const start = async (): Promise<void> => {
    app = Fastify()
    await app.register(rooms, { historySize: TOTAL, maxFramesPerSecond: 1e4, frameBurst: 1e4, closeTimeoutMs: 100 })
    await app.listen({ port, host: '127.0.0.1' })
    port = (app.server.address() as { port: number }).port
  }
  await start()
  t.teardown(async () => await app?.close())
  await chaos(t, {
    live: () => [`ws://127.0.0.1:${port}/ws`],
    http: () => `http://127.0.0.1:${port}`,
    loseData: async () => {
      await app?.close()
      await start()
    }
  })
})

t.test(`chaos on three Redis-backed instances (seed ${SEED})`, { skip: skipRedis }, async (t) => {
  const redis = await startRedis(t)
  const nodes: Array<{ child: ChildProcess, port: number, up: boolean }> = []
  for (let i = 0; i < 3; i++) {
    const { child, port } = await childInstance(t, { REDIS_URL: redis.url, LEASE_MS: '2000', HISTORY_SIZE: String(TOTAL), RATE: '10000', BURST: '10000' })
    nodes.push({ child, port, up: true })
  }
  const live = (): typeof nodes => nodes.filter((n) => n.up)
  await chaos(t, {
    live: () => live().map((n) => `ws://127.0.0.1:${n.port}/ws`),
    http: () => `http://127.0.0.1:${(live()[0] as { port: number }).port}`,
    loseData: async () => {
      await redis.kill()
      await redis.restart()
    },
    killOne: async () => {
      const victim = nodes[2] as (typeof nodes)[number]
      victim.up = false
      const exited = once(victim.child, 'exit')
      victim.child.kill('SIGKILL')
      await exited
    }
  })
})
