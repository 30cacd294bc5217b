import t from 'tap'
import { Writable } from 'node:stream'
import Fastify from 'fastify'
import { Cluster } from 'ioredis'
import type { AdapterConfig, AdapterListener } from '../src/adapters/adapter.js'
import { slotOf } from '../src/adapters/slot.js'
import { ShardSubscriber } from '../src/adapters/shard-subscriber.js'
import { Partitions } from '../src/adapters/partitions.js'
import { redisAdapter } from '../src/index.js'
import { skipCluster, startCluster, type ClusterNodeInfo } from './helpers/cluster.js'
import { clientsNamed, eventually } from './helpers/redis.js'
import { startApp } from './helpers/server.js'
import { TestSocket, type Frame } from './helpers/socket.js'

/**
 * One shard's trouble stays that shard's: the cases where a Redis Cluster
 * shard's subscription, or one master, goes wrong while the others are fine,
 * and the races of a channel left and wanted again. Real 3-master cluster,
 * real adapters and sockets.
 */

const TIMEOUT_MS = 2000
const silent = { debug: () => {}, warn: () => {} }
let prefixes = 0
const serves = (node: ClusterNodeInfo, slot: number): boolean => node.slots.some(([first, last]) => slot >= first && slot <= last)
/** The app instance's node id, from a connection id (`<node>-<n>`). */
const nodeOf = (socket: TestSocket): string => socket.welcome.connectionId.slice(0, socket.welcome.connectionId.indexOf('-'))

/** What the plugin gives an adapter, for the cases that drive one directly. */
const config = (nodeId: string): AdapterConfig => ({ log: Fastify({ logger: false }).log, nodeId, maxMembersPerRoom: 1000, historySize: 100, historyTtlMs: 60_000, maxHistoryRooms: 1000, maxHistoryBytes: 1 << 26, membersPageSize: 50, presenceEvents: true })
const ignored: AdapterListener = { message: () => {}, messages: () => {}, presence: () => {}, direct: () => false, reset: () => {}, control: () => 0 }

/** An instance's log lines, with a wait for one that fails after `ms` rather than hang. */
class LogWatch {
  readonly lines: Array<{ msg: string }> = []
  private readonly watchers = new Set<() => void>()
  readonly stream = new Writable({
    write: (chunk: Buffer, _encoding, done) => {
      for (const line of chunk.toString().split('\n')) if (line !== '') this.lines.push(JSON.parse(line) as { msg: string })
      for (const watcher of this.watchers) watcher()
      done()
    }
  })

  async until (pattern: RegExp, ms = 10_000): Promise<void> {
    const seen = (): boolean => this.lines.some((line) => pattern.test(line.msg))
    if (seen()) return
    await new Promise<void>((resolve, reject) => {
      const watcher = (): void => {
        if (!seen()) return
        this.watchers.delete(watcher)
        clearTimeout(timer)
        resolve()
      }
      const timer = setTimeout(() => {
        this.watchers.delete(watcher)
        reject(new Error(`timed out waiting for a log line ${pattern}; got ${JSON.stringify(this.lines.map((l) => l.msg))}`))
      }, ms)
      this.watchers.add(watcher)
    })
  }
}

/** Messages of a shard subscriber, with a wait that fails after `ms` rather than hang. */
class Inbox {
  readonly got: string[] = []
  private readonly watchers = new Set<() => void>()

  push (message: string): void {
    this.got.push(message)
    for (const watcher of this.watchers) watcher()
  }

  async until (message: string, ms = 10_000): Promise<void> {
    if (this.got.includes(message)) return
    await new Promise<void>((resolve, reject) => {
      const watcher = (): void => {
        if (!this.got.includes(message)) return
        this.watchers.delete(watcher)
        clearTimeout(timer)
        resolve()
      }
      const timer = setTimeout(() => {
        this.watchers.delete(watcher)
        reject(new Error(`timed out waiting for ${message}`))
      }, ms)
      this.watchers.add(watcher)
    })
  }
}

t.test('Redis Cluster: one shard at a time', { skip: skipCluster }, async (t) => {
  // No replicas, and a node timeout no test reaches: a paused or stopped master is never failed over.
  const c = await startCluster(t, { replicas: 0, nodeTimeoutMs: 60_000 })

  t.test('a channel wanted again while its SSUNSUBSCRIBE is in flight: subscribe resolves only once it is subscribed again', async (t) => {
    const client = new Cluster(c.seeds)
    client.on('error', () => {})
    const inbox = new Inbox()
    const sub = new ShardSubscriber(client, {
      message: (_channel, message) => inbox.push(message.toString()),
      broken: () => {},
      restored: () => {}
    }, { timeoutMs: TIMEOUT_MS, log: silent, verifyIntervalMs: 0 })
    t.teardown(() => {
      sub.close()
      client.disconnect()
    })
    // Same slot: once `fence` is confirmed, every channel of the slot wanted before it is subscribed.
    const [channel, fence] = ['race:{p1}c:room', 'race:{p1}c:fence']
    const lost: string[] = []
    for (let i = 0; i < 30; i++) {
      await sub.subscribe([channel])
      // The last local member leaves...
      const leaving = sub.unsubscribe([channel]).catch(() => {})
      // ...its SSUNSUBSCRIBE goes out (the microtasks that send it have run), its reply is not read yet...
      await new Promise((resolve) => setImmediate(resolve))
      // ...and a member joins again: what is published once this resolves must arrive.
      await sub.subscribe([channel])
      await client.spublish(channel, `m${i}`)
      await leaving
      await sub.subscribe([fence])
      await client.spublish(channel, `after${i}`)
      await inbox.until(`after${i}`)
      if (!inbox.got.includes(`m${i}`)) lost.push(`m${i}`)
      await sub.unsubscribe([fence])
    }
    t.same(lost, [], 'nothing published after a confirmed subscribe is missed')
    t.equal(sub.ready, true)
  })
  t.test('a publish cut off on its shard, then refused until ioredis gives up: INTERNAL "may or may not", not UNAVAILABLE', async (t) => {
    const prefix = `shards${++prefixes}:`
    const parts = new Partitions(prefix, 64)
    const app = await startApp(t, { adapter: redisAdapter({ cluster: c.seeds, keyPrefix: prefix, waitReplicas: 0 }) })
    const room = 'cut'
    const slot = parts.slot(parts.base(room))
    const masters = (await c.nodes()).filter((n) => n.role === 'master')
    const source = masters.find((m) => serves(m, slot))!
    const target = masters.find((m) => m !== source)!
    const socket = await TestSocket.open(app.wsUrl)
    t.teardown(async () => await socket.close())
    // The partition's room index now exists on its master, its guard key never does: while the slot migrates, Redis refuses the script (TRYAGAIN).
    t.match(await socket.join(room), { type: 'joined' })
    const stable = async (): Promise<void> => {
      for (const m of [source, target]) await c.node(m.port).call('CLUSTER', 'SETSLOT', slot, 'STABLE')
    }
    t.teardown(stable)
    await c.node(target.port).call('CLUSTER', 'SETSLOT', slot, 'IMPORTING', source.id)
    await c.node(source.port).call('CLUSTER', 'SETSLOT', slot, 'MIGRATING', target.id)
    t.match(await socket.request({ type: 'publish', room, data: 'refused' }), { type: 'error', code: 'UNAVAILABLE' }, 'refused by every attempt, never cut: it did not run')

    const refusals = async (): Promise<number> => Number(/errorstat_TRYAGAIN:count=(\d+)/.exec(await c.node(source.port).info('errorstats'))?.[1] ?? 0)
    const before = await refusals()
    const answer = socket.request({ type: 'publish', room, data: 'cut' })
    await eventually(refusals, (n) => n > before, 'the publish is refused and retried')
    // Its connection breaks while ioredis retries it: an attempt could have been under way, and run.
    const [cmd] = await clientsNamed(c.node(source.port), `fastify-rooms:${nodeOf(socket)}:cmd`)
    await c.node(source.port).call('CLIENT', 'KILL', 'ID', cmd!.id!)
    t.match(await answer, { type: 'error', code: 'INTERNAL', message: /may or may not have been published/ })

    await stable()
    t.match(await socket.request({ type: 'publish', room, data: 'after' }), { type: 'ack' }, 'served again once the slot is stable')
  })
  t.test('a watchRooms that failed leaves no room list channel subscribed', async (t) => {
    const prefix = `shards${++prefixes}:`
    const parts = new Partitions(prefix, 64)
    const masters = (await c.nodes()).filter((n) => n.role === 'master')
    const masterOf = (channel: string): ClusterNodeInfo => masters.find((m) => serves(m, slotOf(channel)))!
    // This instance's own channels away from the master the test pauses, so nothing else of it waits there.
    const busy = [masterOf(`${prefix}{global}`), masterOf(`${prefix}{all}`)]
    let nodeId = 'w0'
    for (let i = 1; !busy.includes(masterOf(`${prefix}{n:${nodeId}}`)); i++) nodeId = `w${i}`
    const paused = masters.find((m) => !busy.includes(m))!
    const base = parts.bases.find((b) => serves(paused, parts.slot(b)))!
    let room = 'r0'
    for (let i = 1; parts.base(room) !== base; i++) room = `r${i}`
    const adapter = redisAdapter({ cluster: c.seeds, keyPrefix: prefix, waitReplicas: 0, commandTimeoutMs: 1000 })
    await adapter.start(ignored, config(nodeId))
    t.teardown(async () => await adapter.close())
    const node = c.node(paused.port)
    await node.call('CLIENT', 'PAUSE', '2500', 'ALL')
    await t.rejects(adapter.watchRooms!({ count: () => {}, resync: () => {} }), { code: 'UNAVAILABLE' }, 'a shard does not answer the subscribe')
    // Answered once the pause is over.
    await node.ping()
    // The room's channel and its partition's room list channel share a slot: one sync of the slot subscribes whatever of it is wanted.
    await adapter.join(room, `${nodeId}-1`, { id: 'u1', name: 'u1' })
    t.same(await node.call('PUBSUB', 'SHARDNUMSUB', `${base}c:${room}`, `${base}roomlist`), [`${base}c:${room}`, 1, `${base}roomlist`, 0], 'the room subscribed, its room list not')
  })
  t.test('one shard\'s subscription broken: joins and messages go on in other shards\' rooms; its rooms get what they missed from history once it is back', async (t) => {
    const prefix = `shards${++prefixes}:`
    const parts = new Partitions(prefix, 64)
    const log = new LogWatch()
    const a = await startApp(t, { adapter: redisAdapter({ cluster: c.seeds, keyPrefix: prefix, waitReplicas: 0 }) }, undefined, { logger: { level: 'warn', stream: log.stream } })
    const b = await startApp(t, { adapter: redisAdapter({ cluster: c.seeds, keyPrefix: prefix, waitReplicas: 0 }) })
    const watcher = await TestSocket.open(a.wsUrl)
    const joiner = await TestSocket.open(a.wsUrl)
    const publisher = await TestSocket.open(b.wsUrl)
    t.teardown(async () => await Promise.all([watcher, joiner, publisher].map(async (s) => await s.close())))
    const nodeId = nodeOf(watcher)
    const masters = (await c.nodes()).filter((n) => n.role === 'master')
    const masterOf = (channel: string): ClusterNodeInfo => masters.find((m) => serves(m, slotOf(channel)))!
    // The shard that breaks carries none of the instance's own channels: only rooms.
    const busy = [masterOf(`${prefix}{n:${nodeId}}`), masterOf(`${prefix}{all}`)]
    const broken = masters.find((m) => !busy.includes(m))!
    const healthy = masters.find((m) => m !== broken)!
    const roomOn = (m: ClusterNodeInfo, name: string): string => {
      for (let i = 0; ; i++) if (serves(m, parts.slot(parts.base(`${name}${i}`)))) return `${name}${i}`
    }
    const [cut, fine, later] = [roomOn(broken, 'cut'), roomOn(healthy, 'fine'), roomOn(healthy, 'later')]
    for (const room of [cut, fine]) {
      t.match(await watcher.join(room), { type: 'joined' })
      t.match(await publisher.join(room), { type: 'joined' })
    }
    const node = c.node(broken.port)
    // No new connection to the shard is accepted, the ones open go on: A's shard subscriber cannot come back, B publishes there.
    const clients = Number(/connected_clients:(\d+)/.exec(await node.info('clients'))?.[1])
    const maxclients = (await node.call('CONFIG', 'GET', 'maxclients') as string[])[1]!
    const restore = async (): Promise<void> => { await node.call('CONFIG', 'SET', 'maxclients', maxclients) }
    t.teardown(restore)
    await node.call('CONFIG', 'SET', 'maxclients', String(clients - 1))
    const [shard] = await clientsNamed(node, `fastify-rooms:${nodeId}:shard`)
    await node.call('CLIENT', 'KILL', 'ID', shard!.id!)
    await log.until(/lost a shard subscriber connection/)

    t.match(await joiner.join(later), { type: 'joined' }, 'a join in another shard\'s room goes on')
    t.match(await joiner.join(cut), { type: 'error', code: 'UNAVAILABLE' }, 'a join in a room of the broken shard waits for it')
    const missed: Frame[] = []
    for (let i = 0; i < 3; i++) missed.push(await publisher.request({ type: 'publish', room: cut, data: `missed${i}` }))
    t.match(missed, [{ type: 'ack' }, { type: 'ack' }, { type: 'ack' }], 'published while the instance cannot hear the shard')
    t.match(await publisher.request({ type: 'publish', room: fine, data: 'live' }), { type: 'ack' })
    t.match(await watcher.next((f) => f.type === 'message' && f.room === fine, 'the healthy shard\'s message'), { data: 'live' })

    await restore()
    t.match(await publisher.request({ type: 'publish', room: cut, data: 'after' }), { type: 'ack' })
    const got: Frame[] = []
    for (let i = 0; i < 4; i++) got.push(await watcher.next((f) => f.type === 'message' && f.room === cut, 'the broken shard\'s messages'))
    t.same(got.map((f) => f.data), ['missed0', 'missed1', 'missed2', 'after'], 'what it missed from history, in order, then the rest')
    t.same(got.map((f) => f.offset), [1, 2, 3, 4].map((n) => (missed[0]!.offset as number) - 1 + n), 'each once, no offset skipped')
    t.match(await joiner.join(cut), { type: 'joined' }, 'joins in its rooms work again')
    t.equal(watcher.closedWith, undefined, 'nobody had to rejoin')
    t.notOk(log.lines.some((line) => /lost the link to Redis/.test(line.msg)), 'the instance as a whole never went down')
  })
})
