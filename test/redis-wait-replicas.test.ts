import t from 'tap'
import { Redis } from 'ioredis'
import { redisAdapter } from '../src/index.js'
import { startApp } from './helpers/server.js'
import { TestSocket, writeAtOnce } from './helpers/socket.js'
import { eventually, skipRedis, startRedis } from './helpers/redis.js'
import { skipCluster, startCluster } from './helpers/cluster.js'

/** How many WAITs a Redis ran since its stats were reset. */
async function waits (redis: Redis): Promise<number> {
  return Number(/cmdstat_wait:calls=(\d+)/.exec(await redis.info('commandstats'))?.[1] ?? 0)
}

t.test('one Redis with a replica: waitReplicas', { skip: skipRedis }, async (t) => {
  const master = await startRedis(t)
  const inspect = new Redis(master.url)
  // Redis 7 waits 5 s for more replicas before a diskless full sync: there is only one.
  await inspect.call('CONFIG', 'SET', 'repl-diskless-sync-delay', '0')
  // Connected to only once it listens (startRedis waits for that).
  const replica = await startRedis(t, { replicaOf: master.port })
  const replicaClient = new Redis(replica.url)
  t.teardown(() => { inspect.disconnect(); replicaClient.disconnect() })
  // The master lists the replica online once it synchronised: no event tells, so it is asked.
  await eventually(async () => await inspect.info('replication'), (info) => /slave0:.*state=online/.test(info), 'the replica is online')

  t.test('by default (0) a publish is acknowledged on the Redis\'s word alone: no WAIT', async (t) => {
    const { wsUrl } = await startApp(t, { adapter: redisAdapter({ url: master.url, keyPrefix: 'plain:' }) })
    const ada = await TestSocket.open(wsUrl)
    t.teardown(() => ada.close())
    await ada.join('r')
    await inspect.call('CONFIG', 'RESETSTAT')
    t.match(await ada.request({ type: 'publish', room: 'r', data: 1 }), { type: 'ack', offset: 1 })
    t.equal(await waits(inspect), 0, 'no WAIT ran')
  })

  t.test('waitReplicas 1 with an odd commandTimeoutMs: the WAIT is given whole milliseconds, and the publish is acknowledged', async (t) => {
    // Half of 1999 is 999.5, which Redis refuses as a WAIT timeout: every publish was of unknown outcome.
    // (As long a wait for the replica as the next test's, so a loaded machine does not make it one.)
    const { wsUrl } = await startApp(t, { adapter: redisAdapter({ url: master.url, keyPrefix: 'odd:', waitReplicas: 1, commandTimeoutMs: 1999 }) })
    const ada = await TestSocket.open(wsUrl)
    t.teardown(() => ada.close())
    await ada.join('r')
    t.match(await ada.request({ type: 'publish', room: 'r', data: 1 }), { type: 'ack', offset: 1 })
  })

  t.test('waitReplicas 1: acknowledged once the replica has it, of unknown outcome (INTERNAL) while it cannot confirm', async (t) => {
    const { wsUrl } = await startApp(t, { adapter: redisAdapter({ url: master.url, keyPrefix: 'wait:', waitReplicas: 1, commandTimeoutMs: 2000 }) })
    const ada = await TestSocket.open(wsUrl)
    t.teardown(() => ada.close())
    await ada.join('r')
    await inspect.call('CONFIG', 'RESETSTAT')
    t.match(await ada.request({ type: 'publish', room: 'r', data: 1 }), { type: 'ack', offset: 1 })
    t.equal(await waits(inspect), 1, 'one WAIT ran')
    t.equal(await replicaClient.xlen('wait:r:r:hist'), 1, 'the replica had the message when it was acknowledged')
    // The replica stops answering: its acknowledgement cannot come within the wait's second.
    await replicaClient.call('CLIENT', 'PAUSE', 3000, 'ALL')
    t.match(await ada.request({ type: 'publish', room: 'r', data: 2 }), { type: 'error', code: 'INTERNAL', message: /may or may not have been published/ }, 'no ack while the replica cannot confirm')
    await replicaClient.call('CLIENT', 'UNPAUSE')
    t.match(await ada.request({ type: 'publish', room: 'r', data: 3 }), { type: 'ack', offset: 3 }, 'acked once it can')
  })
})

t.test('a cluster: one WAIT per master covers a turn\'s publish calls', { skip: skipCluster }, async (t) => {
  const cluster = await startCluster(t)
  const { wsUrl } = await startApp(t, { maxFramesPerSecond: 1e6, frameBurst: 10_000, presenceEvents: false, adapter: redisAdapter({ cluster: cluster.seeds, keyPrefix: 'w:' }) })
  const ada = await TestSocket.open(wsUrl)
  t.teardown(() => ada.close())
  const ROOMS = 30
  const rooms = Array.from({ length: ROOMS }, (_, i) => `room-${i}`)
  for (const room of rooms) await ada.join(room)
  const masters = (await cluster.nodes()).filter((n) => n.role === 'master').map((n) => cluster.node(n.port))
  await Promise.all(masters.map(async (m) => await m.call('CONFIG', 'RESETSTAT')))
  // One publish to each room, in one TCP write: one turn, one script call per partition touched (up to 30).
  writeAtOnce(ada.ws, rooms.map((room, i) => ({ type: 'publish', room, id: i, data: i })))
  const acks = await Promise.all(rooms.map(async (_, i) => await ada.next((f) => f.id === i, `reply ${i}`)))
  t.same(acks.map((f) => [f.type, f.offset]), rooms.map(() => ['ack', 1]), 'every publish was acknowledged')
  const counts = await Promise.all(masters.map(waits))
  const total = counts.reduce((a, b) => a + b, 0)
  t.ok(counts.every((n) => n >= 1), `every master waited for its replica (${counts.join(', ')} WAITs)`)
  // The replies of one master's calls come in one or two reads; one WAIT per call would be one per partition touched.
  t.ok(total <= 2 * masters.length, `${ROOMS} publishes to as many rooms took ${total} WAITs`)
})
