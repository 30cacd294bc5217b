import t from 'tap'
import type { Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'
import WebSocket from 'ws'
import { redisAdapter, type RoomsOptions } from '../src/index.js'
import { startApp, type Started } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { skipRedis, startRedis } from './helpers/redis.js'

const BURST = 20

/** A client's frames in one TCP write (masked, as a client must), so the server reads them all at once. */
function writeAtOnce (ws: WebSocket, frames: unknown[]): void {
  const { Sender } = WebSocket as unknown as { Sender: { frame: (data: Buffer, options: object) => Buffer[] } }
  const bytes = frames.flatMap((frame) => Sender.frame(Buffer.from(JSON.stringify(frame)), { fin: true, opcode: 1, mask: true, readOnly: false, rsv1: false }))
  ;(ws as unknown as { _socket: Socket })._socket.write(Buffer.concat(bytes))
}

/** Calls the instance's command connection has had answered, from its metrics. */
async function commandRoundTrips (app: FastifyInstance): Promise<number> {
  const text = (await app.inject({ url: '/metrics' })).body
  const count = /^fastify_rooms_redis_round_trip_seconds_count\{link="command"\} (\d+)$/m.exec(text)?.[1]
  if (count === undefined) throw new Error('no command round trips in the metrics')
  return Number(count)
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
