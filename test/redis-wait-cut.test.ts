import t, { type Test } from 'tap'
import { createServer, connect, type Server } from 'node:net'
import { once } from 'node:events'
import { Redis } from 'ioredis'
import { redisAdapter } from '../src/index.js'
import { startApp, type Started } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { eventually, skipRedis, startRedis } from './helpers/redis.js'

/**
 * A TCP proxy in front of a real Redis that passes everything through, except
 * that, when told, it cuts the connection that sends a command matching a
 * pattern, before forwarding it: the command is in flight when its connection
 * breaks, and ioredis reconnects through the proxy at its first retry.
 */
class Cutter {
  readonly server: Server
  private trap: { pattern: RegExp, cut: () => void } | undefined

  constructor (redisPort: number) {
    this.server = createServer((client) => {
      const upstream = connect(redisPort, '127.0.0.1')
      client.on('data', (chunk: Buffer) => {
        if (this.trap === undefined || !this.trap.pattern.test(chunk.toString('latin1'))) {
          upstream.write(chunk)
          return
        }
        const { cut } = this.trap
        this.trap = undefined
        client.destroy()
        upstream.destroy()
        cut()
      })
      upstream.pipe(client)
      client.on('close', () => upstream.destroy()).on('error', () => upstream.destroy())
      upstream.on('close', () => client.destroy()).on('error', () => client.destroy())
    })
  }

  get url (): string {
    return `redis://127.0.0.1:${(this.server.address() as { port: number }).port}`
  }

  /** Cut the next connection that sends a command matching `pattern`; resolves once it is cut. */
  async cutNext (pattern: RegExp): Promise<void> {
    await new Promise<void>((resolve) => { this.trap = { pattern, cut: resolve } })
  }
}

t.test('waitReplicas on one Redis: a ROLE or WAIT cut off in flight settles its publishes, and later ones are answered', { skip: skipRedis }, async (t) => {
  const master = await startRedis(t)
  const inspect = new Redis(master.url)
  t.teardown(() => inspect.disconnect())
  // Redis 7 waits 5 s for more replicas before a diskless full sync: there is only one.
  await inspect.call('CONFIG', 'SET', 'repl-diskless-sync-delay', '0')
  await startRedis(t, { replicaOf: master.port })
  // The master lists the replica online once it synchronised: no event tells, so it is asked.
  await eventually(async () => await inspect.info('replication'), (info) => /slave0:.*state=online/.test(info), 'the replica is online')
  const cutter = new Cutter(master.port)
  cutter.server.listen(0, '127.0.0.1')
  await once(cutter.server, 'listening')
  t.teardown(() => { cutter.server.close() })
  let prefixes = 0

  /** An instance behind the cutter, and a member of room r on it. */
  async function deploy (t: Test): Promise<{ app: Started, member: TestSocket, prefix: string }> {
    const prefix = `cut${++prefixes}:`
    // A long lease: no renewal comes between the test's steps.
    const app = await startApp(t, { adapter: redisAdapter({ url: cutter.url, keyPrefix: prefix, waitReplicas: 1, leaseMs: 60_000 }) })
    const member = await TestSocket.open(app.wsUrl)
    t.teardown(() => member.close())
    await member.join('r')
    return { app, member, prefix }
  }

  /** Publish until one is acknowledged: the command connection is back and the instance publishes again. */
  async function acked (member: TestSocket): Promise<Record<string, unknown>> {
    return await eventually(async () => await member.request({ type: 'publish', room: 'r', data: 'after' }), (reply) => reply.type === 'ack', 'a publish is acknowledged again')
  }

  for (const command of ['ROLE', 'WAIT']) {
    t.test(`${command} cut off in flight`, async (t) => {
      const { app, member, prefix } = await deploy(t)
      // The first publish asks ROLE (no replica count is known yet), then WAITs: each goes out in a write of its own.
      const cut = cutter.cutNext(new RegExp(`\r\n${command}\r\n`, 'i'))
      const reply = member.request({ type: 'publish', room: 'r', data: 'cut' })
      await cut
      t.match(await reply, { type: 'error', code: 'INTERNAL', message: /may or may not have been published/ }, 'the publish is answered: its replication could not be confirmed')
      t.equal(await inspect.xlen(`${prefix}r:r:hist`), 1, 'it was stored, as "may or may not" allows')
      t.match(await acked(member), { type: 'ack', room: 'r' }, 'the connection\'s later publishes are answered')
      t.type(await app.app.rooms.broadcast('r', 'from the server'), 'number', 'and so are the server\'s')
    })
  }
})
