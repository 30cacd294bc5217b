import t from 'tap'
import { createServer, connect, type Server } from 'node:net'
import { once } from 'node:events'
import { Redis } from 'ioredis'
import { redisAdapter } from '../src/index.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { clientsNamed, skipRedis, startRedis } from './helpers/redis.js'

/**
 * A TCP proxy in front of a real Redis that passes everything through, except
 * that, when told, it holds back what a connection sends from the first chunk
 * that matches a pattern until the test releases it: the instance behind it
 * is stopped at that command, at a moment the test chooses, with nothing
 * faked about Redis's answers.
 */
class Holder {
  readonly server: Server
  private trap: { pattern: RegExp, held: (release: () => void) => void } | undefined

  constructor (redisPort: number) {
    this.server = createServer((client) => {
      const upstream = connect(redisPort, '127.0.0.1')
      let holding: Buffer[] | undefined
      client.on('data', (chunk: Buffer) => {
        if (holding !== undefined) {
          holding.push(chunk)
        } else if (this.trap !== undefined && this.trap.pattern.test(chunk.toString('latin1'))) {
          const { held } = this.trap
          this.trap = undefined
          holding = [chunk]
          held(() => {
            for (const bytes of holding ?? []) upstream.write(bytes)
            holding = undefined
          })
        } else {
          upstream.write(chunk)
        }
      })
      upstream.pipe(client)
      client.on('close', () => upstream.destroy()).on('error', () => upstream.destroy())
      upstream.on('close', () => client.destroy()).on('error', () => client.destroy())
    })
  }

  get url (): string {
    return `redis://127.0.0.1:${(this.server.address() as { port: number }).port}`
  }

  /** Hold the next command that matches; resolves, once it is held, with the function that lets it through. */
  async holdNext (pattern: RegExp): Promise<() => void> {
    return await new Promise((resolve) => { this.trap = { pattern, held: resolve } })
  }
}

t.test('a subscriber resync never fills a gap across a message that was delivered but not kept', { skip: skipRedis }, async (t) => {
  const redis = await startRedis(t)
  const holder = new Holder(redis.port)
  holder.server.listen(0, '127.0.0.1')
  await once(holder.server, 'listening')
  t.teardown(() => { holder.server.close() })
  const inspect = new Redis(redis.url)
  t.teardown(() => inspect.disconnect())
  // A message of 2,000 bytes is over the whole budget: delivered, but history has a hole at its offset.
  const options = { maxHistoryBytes: 1500 }
  const adapter = { keyPrefix: 'hole:', leaseMs: 60_000 }
  const a = await startApp(t, { ...options, adapter: redisAdapter({ url: holder.url, ...adapter }) })
  const b = await startApp(t, { ...options, adapter: redisAdapter({ url: redis.url, ...adapter }) })
  const member = await TestSocket.open(a.wsUrl)
  t.teardown(() => member.close())
  await member.join('r')
  t.equal(await b.app.rooms.broadcast('r', { n: 1 }), 1)
  await member.next((f) => f.type === 'message' && f.offset === 1, 'message 1')

  // A's subscriber connection breaks, and is stopped at its resubscription: what is published now never reaches A live.
  const resubscribing = holder.holdNext(/\r\nsubscribe\r\n/i)
  const nodeId = member.welcome.connectionId.split('-')[0] as string
  const [sub] = await clientsNamed(inspect, `fastify-rooms:${nodeId}:sub`)
  await inspect.call('CLIENT', 'KILL', 'ID', sub?.id as string)
  const subscribe = await resubscribing
  t.same([
    await b.app.rooms.broadcast('r', { n: 2 }),
    await b.app.rooms.broadcast('r', { n: 3, big: 'x'.repeat(2000) }),
    await b.app.rooms.broadcast('r', { n: 4 })
  ], [2, 3, 4])
  t.same((await inspect.xrange('hole:r:r:hist', '-', '+')).map(([id]) => id), ['1-0', '2-0', '4-0'], 'history has a hole at offset 3')

  // A is subscribed again and about to read the room's state: a message published now comes
  // live, after the gap, and XRANGE from offset 2 for 3 messages reads 2, 4 and this one.
  const reading = holder.holdNext(/\r\nstate\r\n/)
  subscribe()
  const state = await reading
  t.equal(await b.app.rooms.broadcast('r', { n: 5 }), 5)
  state()

  // Offset 3 is in no history: the member can only be told of the gap by 1012.
  const outcome = member.next((f) => f.type === 'message' && f.offset === 6, 'message 6')
    .then(() => 'kept open', () => member.closedWith)
  t.equal(await b.app.rooms.broadcast('r', { n: 6 }), 6)
  const closed = await outcome
  const got = member.frames.filter((f) => f.type === 'message').map((f) => f.offset as number)
  t.match(closed, { code: 1012 }, `closed to rejoin rather than silently miss offset 3 (it got ${got.join(', ')})`)
  t.same(got, Array.from({ length: got.length }, (_, i) => i + 1), 'what it got is every offset from the first, in order, none skipped')
})
