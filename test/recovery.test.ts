import t from 'tap'
import WebSocket from 'ws'
import Fastify from 'fastify'
import rooms from '../src/index.js'
import { connect, type RoomsClient } from '../src/client/index.js'
import { TestSocket } from './helpers/socket.js'
import { seeded } from './helpers/random.js'
import { eachAdapter } from './helpers/deployment.js'

eachAdapter(t, 'a client killed mid-stream rejoins with since and gets exactly the missed messages, in order', async (t, deploy) => {
  const d = await deploy()
  const server = d.node(1).app
  const a = await TestSocket.open(d.node(0).wsUrl)
  const joined = await a.join('r')
  for (let i = 1; i <= 3; i++) await server.rooms.broadcast('r', i)
  for (let i = 1; i <= 3; i++) await a.next((f) => f.type === 'message' && f.offset === i)
  a.ws.terminate() // destroyed, not closed cleanly
  for (let i = 4; i <= 8; i++) await server.rooms.broadcast('r', i)

  // Back on the other instance, which never had this client.
  const again = await TestSocket.open(d.node(1).wsUrl)
  t.teardown(() => again.close())
  const rejoined = await again.join('r', { since: { offset: 3, epoch: joined.epoch } })
  t.match(rejoined, { type: 'joined', room: 'r', offset: 8, epoch: joined.epoch, recovered: true })
  // The replay is written with joined, before the next frame is handled: the pong comes after it.
  await again.sync()
  t.same(again.take('message').map((m) => [m.offset, m.data]), [[4, 4], [5, 5], [6, 6], [7, 7], [8, 8]])
  const index = again.frames.indexOf(rejoined)
  t.same(again.frames.slice(index, index + 6).map((f) => f.type), ['joined', 'message', 'message', 'message', 'message', 'message'], 'the replay follows joined directly')
})

eachAdapter(t, 'since at the last offset recovers with nothing to replay; since ahead of the room does not', async (t, deploy) => {
  const d = await deploy()
  const a = await TestSocket.open(d.node(0).wsUrl)
  t.teardown(() => a.close())
  const { epoch } = await a.join('r')
  await d.node(1).app.rooms.broadcast('r', 'x')
  await a.next((f) => f.type === 'message' && f.offset === 1)
  await a.request({ type: 'leave', room: 'r' })
  t.match(await a.join('r', { since: { offset: 1, epoch } }), { recovered: true, offset: 1 })
  await a.request({ type: 'leave', room: 'r' })
  t.match(await a.join('r', { since: { offset: 9, epoch } }), { recovered: false, offset: 1 })
  await a.sync()
  t.same(a.frames.filter((f) => f.type === 'message').map((m) => m.data), ['x'], 'only the live message before the leave')
})

eachAdapter(t, 'a gap larger than the history gives recovered: false and no replay', async (t, deploy) => {
  const d = await deploy({ historySize: 5 })
  const a = await TestSocket.open(d.node(0).wsUrl)
  const stays = await TestSocket.open(d.node(1).wsUrl)
  t.teardown(() => Promise.all([a.close(), stays.close()]))
  const { epoch } = await a.join('r')
  await stays.join('r')
  await a.request({ type: 'leave', room: 'r' })
  for (let i = 1; i <= 10; i++) await d.node(1).app.rooms.broadcast('r', i)
  const rejoined = await a.join('r', { since: { offset: 2, epoch } })
  t.match(rejoined, { recovered: false, offset: 10, epoch })
  await a.sync()
  t.equal(a.pending('message').length, 0, 'nothing replayed when the gap cannot be closed')
  t.match(await a.join('r', { since: { offset: 5, epoch } }), { type: 'joined' }, 'a rejoin while in the room replays nothing either')
  await a.request({ type: 'leave', room: 'r' })
  t.match(await a.join('r', { since: { offset: 5, epoch } }), { recovered: true }, 'a gap the history covers is recovered')
  await a.sync()
  t.same(a.take('message').map((m) => m.offset), [6, 7, 8, 9, 10])
})

// Memory only: an in-memory node's restart is what loses its history; on Redis the history outlives the instances.
t.test('after a server restart the epoch differs: recovered: false', async (t) => {
  const start = async (port = 0): Promise<{ close: () => Promise<undefined>, port: number, broadcast: (d: unknown) => Promise<number> }> => {
    const app = Fastify()
    await app.register(rooms)
    await app.listen({ port, host: '127.0.0.1' })
    return { close: async () => { await app.close() }, port: (app.server.address() as { port: number }).port, broadcast: async (d) => await app.rooms.broadcast('r', d) }
  }
  const first = await start()
  const a = await TestSocket.open(`ws://127.0.0.1:${first.port}/ws`)
  const joined = await a.join('r')
  await first.broadcast('before')
  await a.next((f) => f.type === 'message')
  await first.close()
  const second = await start(first.port)
  t.teardown(() => second.close())
  await second.broadcast('after-1')
  await second.broadcast('after-2')
  const b = await TestSocket.open(`ws://127.0.0.1:${second.port}/ws`)
  t.teardown(() => b.close())
  const rejoined = await b.join('r', { since: { offset: 1, epoch: joined.epoch } })
  t.not(rejoined.epoch, joined.epoch, 'a new history has a new epoch')
  t.match(rejoined, { recovered: false, offset: 2 })
})

eachAdapter(t, '1,000 messages while 20 clients drop and reconnect at random moments: every client gets every offset once, in order', async (t, deploy) => {
  const total = 1000
  const clients = 20
  const rand = seeded(20261124)
  const d = await deploy({ historySize: total, maxFramesPerSecond: 1e6, frameBurst: 10_000 })

  // Every message frame each client receives on the wire, across all its connections.
  const wire: number[][] = Array.from({ length: clients }, () => [])
  const current: WebSocket[] = []
  const sdk: RoomsClient[] = []
  for (let i = 0; i < clients; i++) {
    // Each connection of a client goes to the next instance: on Redis every reconnect changes node.
    let connections = i
    class Tapped extends WebSocket {
      constructor () {
        super(d.node(connections++).wsUrl)
        current[i] = this
        this.on('message', (raw) => {
          const frame = JSON.parse(raw.toString())
          if (frame.type === 'message') wire[i]!.push(frame.offset)
        })
      }
    }
    const client = await connect(d.node(i).wsUrl, { WebSocket: Tapped as never, reconnect: { initialDelayMs: 1, maxDelayMs: 20 } })
    await client.join('chaos')
    sdk.push(client)
  }
  t.teardown(() => { for (const c of sdk) c.close() })
  const delivered = sdk.map((c) => new Promise<void>((resolve) => {
    c.room('chaos')!.on('message', (m) => { if (m.offset === total) resolve() })
  }))

  // Plan: each client is dropped three times, at seeded moments.
  const drops = new Map<number, number[]>()
  for (let i = 0; i < clients; i++) {
    for (let k = 0; k < 3; k++) {
      const at = 1 + Math.floor(rand() * (total - 1))
      drops.set(at, [...(drops.get(at) ?? []), i])
    }
  }
  let dropped = 0
  const publisher = await TestSocket.open(d.node(0).wsUrl)
  t.teardown(() => publisher.close())
  await publisher.join('chaos')
  const window = 16
  const inFlight: Array<Promise<unknown>> = []
  for (let n = 1; n <= total; n++) {
    for (const i of drops.get(n) ?? []) {
      // Destroy the client's socket without a close frame, as a dead network would.
      const socket = current[i]
      if (socket !== undefined && socket.readyState === WebSocket.OPEN) { socket.terminate(); dropped++ }
    }
    inFlight.push(publisher.request({ type: 'publish', room: 'chaos', data: n }))
    if (inFlight.length >= window) await inFlight.shift()
  }
  await Promise.all(inFlight)
  await Promise.all(delivered)

  t.ok(dropped >= 40, `${dropped} connections were dropped mid-stream`)
  const expected = Array.from({ length: total }, (_, k) => k + 1)
  for (let i = 0; i < clients; i++) t.same(wire[i], expected, `client ${i}: every offset exactly once, in order, on the wire`)
})
