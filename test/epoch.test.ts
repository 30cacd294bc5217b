import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import rooms, { redisAdapter } from '../src/index.js'
import { eachAdapter } from './helpers/deployment.js'
import { TestSocket } from './helpers/socket.js'
import { skipRedis, startRedis } from './helpers/redis.js'
import { guard } from './helpers/until.js'

/** An app on a given port (0: any), which the test restarts on the same port to lose its memory. */
async function listen (port: number, options: Parameters<typeof rooms>[1] = {}): Promise<{ app: FastifyInstance, port: number, wsUrl: string }> {
  const app = Fastify({ routerOptions: { maxParamLength: 256 } })
  await app.register(rooms, options)
  await app.listen({ port, host: '127.0.0.1' })
  const bound = (app.server.address() as { port: number }).port
  return { app, port: bound, wsUrl: `ws://127.0.0.1:${bound}/ws` }
}

/**
 * Issue #9's reproduction: Ann and Ben are in `lobby` and Ann publishes; the
 * history is lost (`loseHistory`); Ben comes back first and publishes "new",
 * offset 1 of the new epoch; Ann comes back later with `since` from the old
 * epoch. She must get `recovered: false` and then "new", once.
 */
async function epochChange (t: Test, urls: () => [string, string], loseHistory: () => Promise<void>): Promise<void> {
  const [annUrl, benUrl] = urls()
  const ann = await TestSocket.open(annUrl)
  const ben = await TestSocket.open(benUrl)
  const { epoch: old } = await ann.join('lobby')
  await ben.join('lobby')
  t.match(await ann.request({ type: 'publish', room: 'lobby', data: 'before' }), { type: 'ack', offset: 1 })
  await ben.next((f) => f.type === 'message' && f.data === 'before')
  await loseHistory()
  const [annUrl2, benUrl2] = urls()

  const ben2 = await TestSocket.open(benUrl2)
  t.teardown(() => ben2.close())
  const benBack = await ben2.join('lobby', { since: { offset: 1, epoch: old } })
  t.match(benBack, { type: 'joined', recovered: false, offset: 0 })
  t.not(benBack.epoch, old, 'a lost history is a new epoch')
  t.match(await ben2.request({ type: 'publish', room: 'lobby', data: 'new' }), { type: 'ack', offset: 1 })

  const ann2 = await TestSocket.open(annUrl2)
  t.teardown(() => ann2.close())
  const annBack = await ann2.join('lobby', { since: { offset: 1, epoch: old } })
  t.match(annBack, { type: 'joined', recovered: false, offset: 1, epoch: benBack.epoch })
  const replayed = await ann2.next((f) => f.type === 'message')
  t.match(replayed, { room: 'lobby', data: 'new', offset: 1 }, 'the new epoch\'s message follows joined')
  t.equal(ann2.frames.indexOf(replayed), ann2.frames.indexOf(annBack) + 1, 'directly after joined')
  await ben2.request({ type: 'publish', room: 'lobby', data: 'live' })
  t.match(await ann2.next((f) => f.type === 'message'), { data: 'live', offset: 2 })
  await ann2.sync()
  t.same(ann2.pending('message'), [], 'nothing twice')
}

t.test('epoch change, memory adapter: a server restart', async (t) => {
  let server = await listen(0)
  t.teardown(async () => await server.app.close())
  await epochChange(t, () => [server.wsUrl, server.wsUrl], async () => {
    await server.app.close()
    server = await listen(server.port)
  })
})

t.test('epoch change, Redis adapter: Redis loses its data, Ann and Ben on different instances', { skip: skipRedis }, async (t) => {
  const redis = await startRedis(t)
  const a = await listen(0, { adapter: redisAdapter({ url: redis.url }) })
  const b = await listen(0, { adapter: redisAdapter({ url: redis.url }) })
  t.teardown(async () => { await Promise.all([a.app.close(), b.app.close()]) })
  const admin = new Redis(redis.url)
  // Its reconnect attempts while a test has Redis down are expected: not unhandled errors.
  admin.on('error', () => {})
  t.teardown(() => admin.disconnect())
  await epochChange(t, () => [a.wsUrl, b.wsUrl], async () => { await admin.flushall() })
})

t.test('Redis loses its data under live members: the first answer in a new epoch closes the room\'s members here with 1012, never mixing epochs', { skip: skipRedis }, async (t) => {
  const redis = await startRedis(t)
  // A lease far longer than the test: the adapter's own check, at its renewals, cannot be what closes them.
  const { app, wsUrl } = await listen(0, { adapter: redisAdapter({ url: redis.url, leaseMs: 600_000 }) })
  t.teardown(async () => await app.close())
  const admin = new Redis(redis.url)
  t.teardown(() => admin.disconnect())

  t.test('a repeated join is not answered with the new epoch and the old offset', async (t) => {
    const ann = await TestSocket.open(wsUrl)
    const { epoch: old } = await ann.join('r1')
    for (const data of [1, 2, 3]) await ann.request({ type: 'publish', room: 'r1', data })
    await admin.flushall()
    ann.send({ type: 'join', room: 'r1', id: 'again' })
    t.match(await guard(ann.closed, 'ann\'s close'), { code: 1012 })
    t.same(ann.frames.filter((f) => f.type === 'joined' && f.epoch !== old), [], 'no joined of another epoch')
  })

  t.test('a read of the room that finds it gone (app.rooms.get, as GET /rooms/:room) closes its members here', async (t) => {
    const ann = await TestSocket.open(wsUrl)
    await ann.join('r3')
    await admin.flushall()
    t.equal(await app.rooms.get('r3'), null)
    t.match(await guard(ann.closed, 'ann\'s close'), { code: 1012 })
  })

  t.test('another connection\'s join, answered in the new epoch, closes the members of the old one and goes on in it', async (t) => {
    const ann = await TestSocket.open(wsUrl)
    const { epoch: old } = await ann.join('r2')
    await ann.request({ type: 'publish', room: 'r2', data: 'old' })
    await admin.flushall()
    const ben = await TestSocket.open(wsUrl)
    t.teardown(() => ben.close())
    const joined = await ben.join('r2')
    t.not(joined.epoch, old, 'ben joins the new epoch')
    t.match(await guard(ann.closed, 'ann\'s close'), { code: 1012 }, 'ann, in the old epoch, is closed to rejoin with since')
    t.match(await ben.request({ type: 'publish', room: 'r2', data: 'new' }), { type: 'ack', offset: 1 })
    t.same(ann.frames.filter((f) => (f.type === 'joined' && f.epoch !== old) || (f.type === 'message' && f.data !== 'old')), [], 'ann got nothing of the new epoch')
    const again = await ben.join('r2')
    t.match(again, { type: 'joined', epoch: joined.epoch, offset: 1 }, 'ben\'s repeated join answers in its epoch')
  })
})

t.test('an old epoch with a trimmed new history replays what is retained, from its first offset', async (t) => {
  let server = await listen(0, { historySize: 2 })
  t.teardown(async () => await server.app.close())
  const ann = await TestSocket.open(server.wsUrl)
  const { epoch: old } = await ann.join('r')
  await server.app.close()
  server = await listen(server.port, { historySize: 2 })
  for (let i = 1; i <= 5; i++) await server.app.rooms.broadcast('r', i)
  const back = await TestSocket.open(server.wsUrl)
  t.teardown(() => back.close())
  t.match(await back.join('r', { since: { offset: 9, epoch: old } }), { recovered: false, offset: 5 })
  await back.sync()
  t.same(back.take('message').map((m) => [m.offset, m.data]), [[4, 4], [5, 5]], 'offsets 1-3 are gone from the new epoch too; 4 and 5 follow')
})

eachAdapter(t, 'join with history: n replays the last n retained messages, oldest first, then goes live', async (t, deploy) => {
  const d = await deploy({ historySize: 4 })
  for (let i = 1; i <= 6; i++) await d.app.rooms.broadcast('h', i)
  const a = await TestSocket.open(d.node(0).wsUrl)
  const b = await TestSocket.open(d.node(1).wsUrl)
  const c = await TestSocket.open(d.node(1).wsUrl)
  t.teardown(() => Promise.all([a.close(), b.close(), c.close()]))

  const joined = await a.join('h', { history: 2 })
  t.match(joined, { type: 'joined', offset: 6 })
  t.notOk('recovered' in joined, 'recovered answers since, not history')
  await a.sync()
  t.same(a.take('message').map((m) => m.data), [5, 6])

  await b.join('h', { history: 100 })
  await b.sync()
  t.same(b.take('message').map((m) => m.offset), [3, 4, 5, 6], 'more than retained: all that is retained')

  await c.join('h', { history: 0 })
  await d.node(1).app.rooms.broadcast('h', 7)
  t.match(await c.next((f) => f.type === 'message'), { offset: 7 }, 'history: 0 replays nothing; live messages follow')
  t.match(await a.next((f) => f.type === 'message'), { offset: 7 })
  await a.sync()
  t.same(a.pending('message'), [], 'each offset once')

  t.match(await c.join('h2', { history: 5, since: { offset: 0, epoch: 'x' } }), { type: 'joined', recovered: false }, 'since wins over history')
  t.match(await c.request({ type: 'join', room: 'h3', history: -1 }), { type: 'error', code: 'INVALID_FRAME' })
  t.match(await c.request({ type: 'join', room: 'h3', history: 1.5 }), { type: 'error', code: 'INVALID_FRAME' })
})
