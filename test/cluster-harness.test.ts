import t from 'tap'
import { Cluster } from 'ioredis'
import { slotOf } from '../src/adapters/slot.js'
import { skipCluster, startCluster, type ClusterNodeInfo } from './helpers/cluster.js'

const served = (nodes: ClusterNodeInfo[]): number => nodes.reduce((sum, n) => sum + n.slots.reduce((s, [a, b]) => s + b - a + 1, 0), 0)

t.test('the Redis Cluster test harness', { skip: skipCluster }, async (t) => {
  const c = await startCluster(t)
  const client = new Cluster(c.seeds)
  t.teardown(() => client.disconnect())

  t.test('starts 3 masters serving every slot and 3 synced replicas', async (t) => {
    t.equal(c.seeds.length, 6)
    t.ok(c.seeds.every((s) => s.host === '127.0.0.1' && s.port > 0))
    const nodes = await c.nodes()
    const masters = nodes.filter((n) => n.role === 'master')
    t.equal(masters.length, 3)
    t.equal(served(masters), 16384)
    for (const master of masters) t.equal(nodes.filter((n) => n.masterOf === master.id).length, 1, `${master.port} has one replica`)
    for (const replica of nodes.filter((n) => n.role === 'replica')) {
      t.match(await c.node(replica.port).info('replication'), /master_link_status:up/, `replica ${replica.port} is synced`)
    }
    await client.set('hello', 'world')
    t.equal(await client.get('hello'), 'world', 'ioredis Cluster works with the seed list')
  })

  t.test('slotOf computes the slot Redis computes', async (t) => {
    const node = c.node(c.seeds[0]!.port)
    const keys = ['', 'a', 'foo', 'room:lobby', '{user1000}.following', 'foo{}{bar}', 'foo{{bar}}zap', 'foo{bar}{zap}', '{}x', 'x{', 'héllo wörld', '🙂', 'fastify-rooms:{p17}:r:lobby:hist']
    for (const key of keys) t.equal(slotOf(key), await node.call('CLUSTER', 'KEYSLOT', key), JSON.stringify(key))
  })

  t.test('killMaster fails a master over to its replica; restart brings it back as a replica', async (t) => {
    const key = 'kill:{k}'
    const before = await c.ownerOf(key)
    await client.set(key, 'kept')
    // On the replica before the kill, so the failover keeps it.
    t.equal(await client.pipeline().get(key).call('WAIT', 1, 5000).exec().then((r) => r?.[1]?.[1]), 1)
    const killed = await c.killMaster(key)
    t.equal(killed.port, before.port)
    t.equal(killed.slot, slotOf(key))
    t.not(killed.promoted.port, before.port)
    t.equal((await c.ownerOf(key)).port, killed.promoted.port, 'the promoted replica serves the slot')
    t.notOk((await c.nodes()).some((n) => n.port === killed.port), 'the killed node is gone from the live view')
    t.match(String(await c.node(killed.promoted.port).call('CLUSTER', 'INFO')), /cluster_state:ok/)
    t.equal(await c.node(killed.promoted.port).get(key), 'kept', 'the data is on the promoted replica')
    t.equal(await client.get(key), 'kept', 'the cluster client follows')
    await killed.restart()
    const back = (await c.nodes()).find((n) => n.port === killed.port)
    t.equal(back?.role, 'replica')
    t.equal(back?.masterOf, killed.promoted.id)
    await c.node(killed.port).call('READONLY')
    t.equal(await c.node(killed.port).get(key), 'kept', 'the restarted node synced from its new master')
  })

  t.test('failover swaps a master and its replica without losing data', async (t) => {
    const key = 'failover:{f}'
    const before = await c.ownerOf(key)
    await client.set(key, 'kept')
    const { promoted, demoted } = await c.failover(key)
    t.equal(demoted.port, before.port)
    t.equal(demoted.role, 'replica')
    t.equal(demoted.masterOf, promoted.id)
    t.equal((await c.ownerOf(key)).port, promoted.port)
    t.equal(await c.node(promoted.port).get(key), 'kept')
    t.match(await c.node(demoted.port).info('replication'), /master_link_status:up/, 'the old master is a synced replica')
  })

  t.test('migrateSlot moves a slot and its keys live, in batches, while writes go on', async (t) => {
    const tag = '{m}'
    const slot = slotOf(tag)
    const source = await c.ownerOf(slot)
    const target = (await c.nodes()).find((n) => n.role === 'master' && n.id !== source.id)!
    for (let i = 0; i < 250; i++) await client.set(`k${i}:${tag}`, i)
    let writing = true
    let written = 0
    const writer = (async () => {
      while (writing) await client.set(`w${written++}:${tag}`, written)
    })()
    const steps: string[] = []
    await c.migrateSlot(slot, target.port, {
      opened: async () => {
        steps.push('opened')
        t.match(String(await c.node(source.port).call('CLUSTER', 'NODES')), new RegExp(`\\[${slot}->-${target.id}\\]`), 'MIGRATING on the source')
        t.match(String(await c.node(target.port).call('CLUSTER', 'NODES')), new RegExp(`\\[${slot}-<-${source.id}\\]`), 'IMPORTING on the target')
      },
      keysMoved: async () => {
        steps.push('keysMoved')
        t.equal(await c.node(source.port).call('CLUSTER', 'COUNTKEYSINSLOT', slot), 0, 'nothing left on the source')
      }
    })
    writing = false
    await writer
    t.same(steps, ['opened', 'keysMoved'])
    t.ok(written > 0, `${written} writes during the migration`)
    t.equal((await c.ownerOf(slot)).port, target.port)
    for (const n of await c.nodes()) {
      const owners = (await c.node(n.port).call('CLUSTER', 'SLOTS') as Array<[number, number, [string, number]]>).filter(([a, b]) => slot >= a && slot <= b)
      t.same(owners.map(([, , [, port]]) => port), [target.port], `${n.port} sees the slot on the target`)
    }
    t.equal(await c.node(target.port).call('CLUSTER', 'COUNTKEYSINSLOT', slot), 250 + written, 'every key, old and new, is on the target')
    t.equal(await client.get(`k7:${tag}`), '7')
    await t.rejects(c.migrateSlot(slot, target.port), /already on/)
  })

  t.test('restartEmpty starts an empty cluster with new node ids on the same ports', async (t) => {
    const before = await c.nodes()
    await c.restartEmpty()
    const after = await c.nodes()
    t.same(after.map((n) => n.port).sort(), before.map((n) => n.port).sort(), 'same ports')
    t.notOk(after.some((n) => before.some((b) => b.id === n.id)), 'new node ids')
    t.equal(served(after.filter((n) => n.role === 'master')), 16384)
    for (const n of after) t.equal(await c.node(n.port).dbsize(), 0, `${n.port} is empty`)
    t.equal(await client.get('hello'), null, 'the cluster client reconnects to the new cluster')
    await client.set('hello', 'again')
    t.equal(await client.get('hello'), 'again')
  })
})
