import t from 'tap'
import { createServer, connect, type Server } from 'node:net'
import { once } from 'node:events'
import { redisAdapter } from '../src/index.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { skipRedis, startRedis } from './helpers/redis.js'

/**
 * Where the RESP reply (RESP2 or RESP3, as ioredis speaks) that starts at
 * `at` ends, or -1 when `bytes` does not hold all of it yet.
 */
function replyEnd (bytes: Buffer, at: number): number {
  if (at >= bytes.length) return -1
  const line = bytes.indexOf('\r\n', at)
  if (line === -1) return -1
  const size = Number(bytes.toString('latin1', at + 1, line))
  const type = String.fromCharCode(bytes[at] as number)
  if ('+-:_#,('.includes(type)) return line + 2
  if ('$!='.includes(type)) return size < 0 ? line + 2 : line + 4 + size <= bytes.length ? line + 4 + size : -1
  if ('*~>%|'.includes(type)) {
    let end = line + 2
    for (let i = 0; i < (type === '%' || type === '|' ? 2 * size : size) && end !== -1; i++) end = replyEnd(bytes, end)
    // An attribute comes before the reply it is about.
    return type === '|' && end !== -1 ? replyEnd(bytes, end) : end
  }
  throw new Error(`not a RESP reply: ${bytes.toString('latin1', at, at + 20)}`)
}

/**
 * A TCP proxy in front of a real Redis that passes everything through, except
 * that, when told, it replaces the next bulk-string reply made of offsets
 * (`1` or `1,2,...`: what the publish script answers) with other text: a
 * store that answers a publish wrongly.
 */
class ReplyForger {
  readonly server: Server
  private forged: string | undefined
  private done: (() => void) | undefined

  constructor (redisPort: number) {
    this.server = createServer((client) => {
      const upstream = connect(redisPort, '127.0.0.1')
      client.pipe(upstream)
      let pending = Buffer.alloc(0)
      upstream.on('data', (chunk: Buffer) => {
        pending = Buffer.concat([pending, chunk])
        let end: number
        while (pending.length > 0 && (end = replyEnd(pending, 0)) !== -1) {
          client.write(this.rewrite(pending.subarray(0, end)))
          pending = pending.subarray(end)
        }
      })
      client.on('close', () => upstream.destroy()).on('error', () => upstream.destroy())
      upstream.on('close', () => client.destroy()).on('error', () => client.destroy())
    })
  }

  /** Answer the next publish call with `text`; resolves once that reply went out. */
  async forgeNext (text: string): Promise<void> {
    this.forged = text
    await new Promise<void>((resolve) => { this.done = resolve })
  }

  private rewrite (reply: Buffer): Buffer {
    if (this.forged === undefined || !/^\$\d+\r\n\d+(,\d+)*\r\n$/.test(reply.toString('latin1'))) return reply
    const text = this.forged
    this.forged = undefined
    this.done?.()
    return Buffer.from(`$${Buffer.byteLength(text)}\r\n${text}\r\n`)
  }
}

t.test('a publish call that Redis answers with malformed offsets gets INTERNAL, is logged, and the connection goes on', { skip: skipRedis }, async (t) => {
  const redis = await startRedis(t)
  const forger = new ReplyForger(redis.port)
  forger.server.listen(0, '127.0.0.1')
  await once(forger.server, 'listening')
  t.teardown(() => { forger.server.close() })
  const logged: Array<Record<string, any>> = []
  // A long lease: no lease renewal (whose reply the forger could take) comes during the test.
  const { wsUrl } = await startApp(t, { adapter: redisAdapter({ url: `redis://127.0.0.1:${(forger.server.address() as { port: number }).port}`, keyPrefix: 'forged:', leaseMs: 60_000 }) }, undefined, {
    logger: { level: 'error', stream: { write: (line: string) => { logged.push(JSON.parse(line)) } } }
  })
  const ada = await TestSocket.open(wsUrl)
  t.teardown(() => ada.close())
  await ada.join('r')

  for (const [forged, why] of [['1,2', 'two offsets for one publish'], ['x', 'not an offset'], ['', 'empty']] as const) {
    const forging = forger.forgeNext(forged)
    const reply = await ada.request({ type: 'publish', room: 'r', data: why })
    await forging
    t.match(reply, { type: 'error', code: 'INTERNAL', room: 'r' }, `${why}: the publisher is told the server failed`)
  }
  t.equal(logged.filter((line) => line.msg === 'fastify-rooms: Redis answered a publish call with the wrong number of offsets').length, 3, 'each is logged')
  // The calls ran in Redis, so their messages went out; the next publish is numbered after them.
  const ack = await ada.request({ type: 'publish', room: 'r', data: 'fine' })
  t.match(ack, { type: 'ack', room: 'r', offset: 4 }, 'the connection and the room go on')
  const offsets: number[] = []
  while (offsets.length < 4) offsets.push((await ada.next((f) => f.type === 'message')).offset as number)
  t.same(offsets, [1, 2, 3, 4], 'every stored message reached the member once, in order')
})
