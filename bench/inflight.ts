/**
 * What a member's publish holds in the server's JavaScript heap while it
 * waits for Redis: `node --expose-gc --import=tsx bench/inflight.ts [N]
 * [BYTES]` starts a redis-server and an app on the Redis adapter in this
 * process, joins one member, pauses Redis (`CLIENT PAUSE`), sends N publishes
 * of BYTES of data, and once the server has read them all, reads the heap
 * after a full gc: the difference over N is printed. Every scavenge while
 * publishes wait copies what they hold (see plugin.md, "Publishing through
 * Redis"). Frames of up to 512 characters take the publish fast path, longer
 * ones `JSON.parse`.
 */
import type { Socket } from 'node:net'
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import rooms, { redisAdapter } from '../src/index.js'
import { startRedis } from '../test/helpers/redis.js'
import { TestSocket } from '../test/helpers/socket.js'

const gc = (globalThis as { gc?: () => void }).gc
if (gc === undefined) throw new Error('run with --expose-gc')
const n = Number(process.argv[2] ?? 5000)
const bytes = Number(process.argv[3] ?? 100)
// Longer than 12 characters, as room names often are: V8 keeps a shorter slice of a string as a copy.
const room = 'inflight-measure-room'

const teardown: Array<() => unknown> = []
const redis = await startRedis({ teardown: (fn) => teardown.push(fn) })
let serverSocket: Socket | undefined
const app = Fastify()
await app.register(rooms, {
  adapter: redisAdapter({ url: redis.url }),
  maxFramesPerSecond: 1e9,
  frameBurst: 1e9,
  maxBufferedBytes: 1e12,
  onConnect: ({ request }) => { serverSocket = request.raw.socket as Socket }
})
await app.listen({ port: 0, host: '127.0.0.1' })
const member = await TestSocket.open(`ws://127.0.0.1:${(app.server.address() as { port: number }).port}/ws`)
await member.join(room)
const admin = new Redis(redis.port)

function heap (): number {
  gc?.()
  gc?.()
  return process.memoryUsage().heapUsed
}

const before = heap()
// Long enough to read every frame; the publishes are answered once it ends.
await admin.call('CLIENT', 'PAUSE', '10000', 'WRITE')
const data = JSON.stringify('x'.repeat(bytes))
for (let i = 0; i < n; i++) member.ws.send(`{"type":"publish","room":"${room}","data":${data},"id":${i}}`)
const clientSocket = (member.ws as unknown as { _socket: Socket })._socket
await new Promise<void>((resolve) => {
  const check = (): void => {
    if (member.ws.bufferedAmount === 0 && serverSocket !== undefined && serverSocket.bytesRead >= clientSocket.bytesWritten) resolve()
    else setImmediate(check)
  }
  check()
})
const during = heap()
await admin.call('CLIENT', 'UNPAUSE')
await member.next((f) => f.type === 'ack' && f.id === n - 1, 'the last ack')
console.log(`${n} publishes of ${bytes} bytes waiting for Redis: ${Math.round((during - before) / n)} bytes of heap each`)
await member.close()
admin.disconnect()
await app.close()
for (const fn of teardown.reverse()) await fn()
