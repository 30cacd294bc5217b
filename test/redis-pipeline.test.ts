import t from 'tap'
import type { Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import { redisAdapter, type RoomsOptions } from '../src/index.js'
import { startApp, type Started } from './helpers/server.js'
import { TestSocket, writeAtOnce } from './helpers/socket.js'
import { skipRedis, startRedis } from './helpers/redis.js'

const BURST = 20

/** Calls the instance's command connection has had answered, from its metrics. */
async function commandRoundTrips (app: FastifyInstance): Promise<number> {
  const text = (await app.inject({ url: '/metrics' })).body
  const count = /^fastify_rooms_redis_round_trip_seconds_count\{link="command"\} (\d+)$/m.exec(text)?.[1]
  if (count === undefined) throw new Error('no command round trips in the metrics')
  return Number(count)
}

/** Script calls a Redis has run (EVALSHA, and EVAL should a script be loaded again), from INFO commandstats. */
async function scriptCalls (redis: Redis): Promise<number> {
  const text = await redis.info('commandstats')
  let calls = 0
  for (const match of text.matchAll(/^cmdstat_(?:evalsha|eval):calls=(\d+)/gm)) calls += Number(match[1])
  return calls
}

t.test('redis pipelining', { skip: skipRedis }, async (t) => {
  const redis = await startRedis(t)
  let prefixes = 0
  /** Two instances; a lease so long that no upkeep call runs during a test. */
  async function instances (options: RoomsOptions = {}): Promise<[Started, Started]> {
    const keyPrefix = `p${++prefixes}:`
    const start = async (): Promise<Started> => await startApp(t, { maxFramesPerSecond: 1e6, frameBurst: 10_000, presenceEvents: false, metrics: true, ...options, adapter: redisAdapter({ url: redis.url, keyPrefix, leaseMs: 600_000 }) })
    return [await start(), await start()]
  }

  t.test('a burst of publishes from one connection goes to Redis in one call and reaches a member on another instance in one write', async (t) => {
    const [a, b] = await instances()
    const ada = await TestSocket.open(a.wsUrl)
    const bob = await TestSocket.open(b.wsUrl)
    t.teardown(async () => { await ada.close(); await bob.close() })
    await ada.join('burst')
    await bob.join('burst')
    let reads = 0
    ;(bob.ws as unknown as { _socket: Socket })._socket.on('data', () => { reads++ })
    const trips = await commandRoundTrips(a.app)
    // In one TCP write: the instance reads and handles them all in one turn of its event loop.
    writeAtOnce(ada.ws, Array.from({ length: BURST }, (_, i) => ({ type: 'publish', room: 'burst', id: i, data: i })))
    const acks = await Promise.all(Array.from({ length: BURST }, async (_, i) => await ada.next((f) => f.type === 'ack' && f.id === i, `ack ${i}`)))
    t.same(acks.map((f) => f.offset), Array.from({ length: BURST }, (_, i) => i + 1), 'each publish has the offset of its place in the burst')
    await bob.next((f) => f.type === 'message' && f.offset === BURST, 'the last message')
    t.same(bob.frames.filter((f) => f.type === 'message').map((f) => f.data), Array.from({ length: BURST }, (_, i) => i), 'bob got every message once, in order')
    const calls = await commandRoundTrips(a.app) - trips
    t.equal(calls, 1, `the ${BURST} publishes took one call to Redis (${calls})`)
    // One pub/sub message brought them to bob's instance, which wrote them to him with one write.
    t.equal(reads, 1, `bob's connection read the ${BURST} messages at once (${reads} reads)`)
  })

  t.test('publishes to several rooms in one turn go to Redis in one call, each room in order with its own offsets', async (t) => {
    const [a, b] = await instances()
    const inspect = new Redis(redis.url)
    t.teardown(() => inspect.disconnect())
    const ada = await TestSocket.open(a.wsUrl)
    const bob = await TestSocket.open(b.wsUrl)
    t.teardown(async () => { await ada.close(); await bob.close() })
    const rooms = ['x:a', 'x:b', 'x:c', 'x:d', 'x:e']
    for (const room of rooms) {
      await ada.join(room)
      await bob.join(room)
    }
    // One room has a message already: its offsets go on from there.
    await ada.request({ type: 'publish', room: 'x:c', data: 'before' })
    await bob.next((f) => f.type === 'message' && f.room === 'x:c' && f.offset === 1, 'the first message')
    const trips = await commandRoundTrips(a.app)
    const calls = await scriptCalls(inspect)
    // The rooms interleaved, in one TCP write: one turn of the instance's event loop.
    const frames = Array.from({ length: BURST }, (_, i) => ({ type: 'publish', room: rooms[i % rooms.length], id: i, data: i }))
    writeAtOnce(ada.ws, frames)
    const acks = await Promise.all(frames.map(async (frame) => await ada.next((f) => f.type === 'ack' && f.id === frame.id, `ack ${frame.id}`)))
    for (const room of rooms) {
      const sent = frames.filter((f) => f.room === room)
      const first = room === 'x:c' ? 2 : 1
      t.same(sent.map((f) => acks[f.id]!.offset), sent.map((_, i) => first + i), `${room}: each publish acked with the offset of its place in the room`)
      await bob.next((f) => f.type === 'message' && f.room === room && f.offset === first + sent.length - 1, `${room}'s last message`)
      const got = bob.frames.filter((f) => f.type === 'message' && f.room === room && f.data !== 'before')
      t.same(got.map((f) => [f.offset, f.data]), sent.map((f, i) => [first + i, f.data]), `${room}: bob got every message once, in order`)
    }
    t.equal(await commandRoundTrips(a.app) - trips, 1, 'the publishes to 5 rooms took one call from the instance')
    t.equal(await scriptCalls(inspect) - calls, 1, 'and one script call on Redis')
    // Each room's messages are in its history, in order, with its own offsets.
    for (const room of rooms) {
      const page = await (await fetch(`${a.url}/rooms/${encodeURIComponent(room)}/messages?after=0`)).json() as { messages: Array<{ offset: number, data: unknown }> }
      const sent = frames.filter((f) => f.room === room).map((f) => f.data)
      t.same(page.messages.map((m) => m.data), room === 'x:c' ? ['before', ...sent] : sent, `${room}'s history`)
    }
  })

  t.test('history bounds over the rooms of one call: the least recently published room goes first, as with a call per room', async (t) => {
    const [a] = await instances({ historySize: 10, maxHistoryRooms: 2 })
    const inspect = new Redis(redis.url)
    t.teardown(() => inspect.disconnect())
    const calls = await scriptCalls(inspect)
    // In one turn, so in one call: z first, though it sorts last.
    const offsets = await Promise.all(['z', 'a', 'b'].map(async (room) => await a.app.rooms.broadcast(`h:${room}`, room)))
    t.same(offsets, [1, 1, 1])
    t.equal(await scriptCalls(inspect) - calls, 1, 'one script call')
    const kept = await Promise.all(['z', 'a', 'b'].map(async (room) => (await a.app.rooms.history(`h:${room}`))?.messages.length ?? 0))
    t.same(kept, [0, 1, 1], 'h:z, published first, was evicted; h:a and h:b are kept')
  })

  t.test('the replies to pipelined publishes come in frame order, with an error, an ephemeral ack and a pong among them', async (t) => {
    const [a, b] = await instances({ maxMessageBytes: 64 })
    const ada = await TestSocket.open(a.wsUrl)
    const bob = await TestSocket.open(b.wsUrl)
    t.teardown(async () => { await ada.close(); await bob.close() })
    await ada.join('order')
    await bob.join('order')
    ada.send({ type: 'publish', room: 'order', id: 1, data: 'one' })
    ada.send({ type: 'publish', room: 'elsewhere', id: 2, data: 'not a member' })
    ada.send({ type: 'publish', room: 'order', id: 3, data: 'x'.repeat(100) })
    ada.send({ type: 'publish', room: 'order', id: 4, data: 'typing', ephemeral: true })
    ada.send({ type: 'ping', id: 5 })
    ada.send({ type: 'publish', room: 'order', id: 6, data: 'six' })
    await ada.next((f) => f.id === 6, 'the last reply')
    const replies = ada.frames.filter((f) => f.id !== undefined && f.type !== 'joined').map((f) => [f.id, f.type, f.code ?? f.offset ?? null])
    t.same(replies, [[1, 'ack', 1], [2, 'error', 'NOT_IN_ROOM'], [3, 'error', 'PAYLOAD_TOO_LARGE'], [4, 'ack', null], [5, 'pong', null], [6, 'ack', 2]], 'one reply per frame, in frame order')
    await bob.next((f) => f.type === 'message' && f.offset === 2, 'the second message')
    t.same(bob.frames.filter((f) => f.type === 'message').map((f) => f.data), ['one', 'typing', 'six'], 'bob got the accepted messages in order, the ephemeral one in its place')
  })
})
