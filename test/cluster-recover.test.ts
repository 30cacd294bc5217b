import t from 'tap'
import WebSocket from 'ws'
import { redisAdapter } from '../src/index.js'
import { Partitions } from '../src/adapters/partitions.js'
import { slotOf } from '../src/adapters/slot.js'
import { startApp, type Started } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { clientsNamed, eventually } from './helpers/redis.js'
import { skipCluster, startCluster, type ClusterNodeInfo } from './helpers/cluster.js'

const named = { authenticate: (r: { headers: Record<string, unknown> }) => ({ id: String(r.headers['x-user']), name: String(r.headers['x-user']) }) }
const as = (user: string): WebSocket.ClientOptions => ({ headers: { 'x-user': user } })
const serves = (node: ClusterNodeInfo, slot: number): boolean => node.slots.some(([first, last]) => slot >= first && slot <= last)

t.test('a shard subscription broken and restored while the instance recovers from another shard\'s break: both shards\' rooms resync', { skip: skipCluster }, async (t) => {
  const c = await startCluster(t)
  const prefix = 'recover:'
  const parts = new Partitions(prefix, 64)
  const nodes: Started[] = []
  for (let i = 0; i < 2; i++) nodes.push(await startApp(t, { ...named, presenceIntervalMs: 0, adapter: redisAdapter({ cluster: c.seeds, keyPrefix: prefix, partitions: 64, leaseMs: 10_000 }) }))
  const [a, b] = nodes as [Started, Started]
  const masters = (await c.nodes()).filter((n) => n.role === 'master')
  // Neither serves the leases' partition, so pausing one's writes does not hold the instance's lease renewal.
  const [first, second] = masters.filter((m) => !serves(m, slotOf(`${prefix}{global}`))) as [ClusterNodeInfo, ClusterNodeInfo]
  const roomOn = (m: ClusterNodeInfo, name: string): string => {
    for (let i = 0; ; i++) if (serves(m, parts.slot(parts.base(`${name}${i}`)))) return `${name}${i}`
  }
  const [roomA, roomB] = [roomOn(first, 'first'), roomOn(second, 'second')]
  const watcher = await TestSocket.open(a.wsUrl, as('watcher'))
  const publisher = await TestSocket.open(b.wsUrl, as('publisher'))
  const late = await TestSocket.open(b.wsUrl, as('late'))
  t.teardown(() => Promise.all([watcher, publisher, late].map(async (s) => await s.close())))
  for (const room of [roomA, roomB]) {
    await watcher.join(room)
    await publisher.join(room)
  }
  const nodeId = watcher.welcome.connectionId.split('-')[0] as string
  const clientOf = async (m: ClusterNodeInfo, kind: 'cmd' | 'shard'): Promise<Record<string, string> | undefined> =>
    (await clientsNamed(c.node(m.port), `fastify-rooms:${nodeId}:${kind}`))[0]
  const killShardSubscriber = async (m: ClusterNodeInfo): Promise<void> => {
    const id = (await clientOf(m, 'shard'))?.id
    if (id === undefined) throw new Error(`no shard subscriber of ${nodeId} on ${m.port}`)
    await c.node(m.port).call('CLIENT', 'KILL', 'ID', id)
  }
  const subscribers = async (room: string, m: ClusterNodeInfo): Promise<number> =>
    (await c.node(m.port).call('PUBSUB', 'SHARDNUMSUB', `${parts.base(room)}c:${room}`) as [string, number])[1]

  // The first shard's subscription breaks; the instance's recovery then waits on that shard (writes paused).
  await c.node(first.port).call('CLIENT', 'PAUSE', '30000', 'WRITE')
  t.teardown(async () => await c.node(first.port).call('CLIENT', 'UNPAUSE'))
  await killShardSubscriber(first)
  await eventually(async () => await clientOf(first, 'cmd'), (client) => client?.flags === 'b' && client.cmd === 'evalsha', 'the recovery\'s state call waits on the paused shard')
  // Meanwhile the second shard's subscription breaks and comes back.
  await killShardSubscriber(second)
  await eventually(async () => await subscribers(roomB, second), (n) => n === 2, 'both instances subscribe to the second room again')
  await c.node(first.port).call('CLIENT', 'UNPAUSE')

  // Published after both breaks: each room's message and presence reach the watcher.
  const acks = [await publisher.request({ type: 'publish', room: roomA, data: 'to the first' }), await publisher.request({ type: 'publish', room: roomB, data: 'to the second' })]
  t.match(acks, [{ type: 'ack' }, { type: 'ack' }])
  t.match(await watcher.next((f) => f.type === 'message' && f.room === roomA, 'the first room\'s message'), { data: 'to the first' })
  t.match(await watcher.next((f) => f.type === 'message' && f.room === roomB, 'the second room\'s message'), { data: 'to the second' })
  await late.join(roomB)
  t.match(await watcher.next((f) => f.type === 'presence' && f.room === roomB && f.joins.some((m: { id: string }) => m.id === 'late'), 'the second room\'s presence'), { count: 3 })
  t.equal(watcher.closedWith, undefined, 'history filled both gaps: nobody had to rejoin')
})
