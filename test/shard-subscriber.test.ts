import t, { type Test } from 'tap'
import { once } from 'node:events'
import { Cluster, type ClusterOptions } from 'ioredis'
import { ShardSubscriber, type ShardSubscriberOptions } from '../src/adapters/shard-subscriber.js'
import { slotOf } from '../src/adapters/slot.js'
import { skipCluster, startCluster, type RedisCluster } from './helpers/cluster.js'
import { clientsNamed, eventually } from './helpers/redis.js'

const TIMEOUT_MS = 1000
/** How long a master stays down while the subscriber's connections to it and its CLUSTER SLOTS are counted. */
const DOWN_WINDOW_MS = 4000
/**
 * Bound on each of those per second. Measured with twenty slots on the dead master: retried together, about 1
 * connection and 1-1.75 CLUSTER SLOTS a second; retried each on its own timer (before), about 19 connections, but
 * already only 1-1.5 CLUSTER SLOTS (a slot skipped the question when another had just asked it), so the second bound
 * guards that rate rather than telling the two apart.
 */
const MAX_PER_SECOND = 4
const silent = { debug: () => {}, warn: () => {} }
/** What the shard subscriber needs of the cluster client: a few retries while a failover is in progress. */
const CLUSTER_OPTIONS: ClusterOptions = { retryDelayOnFailover: 200, retryDelayOnClusterDown: 200, slotsRefreshTimeout: TIMEOUT_MS }

type Event =
  | { kind: 'message', channel: string, data: string }
  | { kind: 'broken' | 'restored', channels: string[] }
  | { kind: 'published', channel: string, data: string }

/** Every event of one subscriber in arrival order, with a way to wait for one. */
class Recorder {
  readonly events: Event[] = []
  private readonly watchers = new Set<() => void>()
  readonly handlers = {
    message: (channel: string, message: Buffer) => this.push({ kind: 'message', channel, data: message.toString() }),
    broken: (channels: string[]) => this.push({ kind: 'broken', channels: [...channels].sort() }),
    restored: (channels: string[]) => this.push({ kind: 'restored', channels: [...channels].sort() })
  }

  push (event: Event): void {
    this.events.push(event)
    for (const watcher of this.watchers) watcher()
  }

  /** Resolve once `done(events)` holds, checked at every event; fail after `ms`. */
  async until (done: (events: Event[]) => boolean, what: string, ms = 15_000): Promise<void> {
    if (done(this.events)) return
    await new Promise<void>((resolve, reject) => {
      const watcher = (): void => {
        if (!done(this.events)) return
        this.watchers.delete(watcher)
        clearTimeout(timer)
        resolve()
      }
      const timer = setTimeout(() => {
        this.watchers.delete(watcher)
        reject(new Error(`timed out waiting until ${what}; events: ${JSON.stringify(this.events.slice(-20))}`))
      }, ms)
      this.watchers.add(watcher)
    })
  }

  messages (channel: string): string[] {
    return this.events.flatMap((e) => e.kind === 'message' && e.channel === channel ? [e.data] : [])
  }

  /** Channels named by `broken` or `restored` events, each once, sorted. */
  named (kind: 'broken' | 'restored'): string[] {
    return [...new Set(this.events.flatMap((e) => e.kind === kind ? e.channels : []))].sort()
  }
}

/** Channels `room:{p<i>}`, one per slot, `perMaster` for each master. */
async function channelsOnEveryMaster (c: RedisCluster, perMaster: number, offset = 0): Promise<Map<number, string[]>> {
  const byPort = new Map<number, string[]>()
  for (let i = offset; [...byPort.values()].reduce((n, l) => n + l.length, 0) < perMaster * 3; i++) {
    const channel = `room:{p${i}}`
    const owner = (await c.ownerOf(channel)).port
    const list = byPort.get(owner) ?? []
    if (list.length < perMaster) byPort.set(owner, [...list, channel])
  }
  return byPort
}

function open (t: Test, c: RedisCluster, options: Partial<Pick<ShardSubscriberOptions, 'verifyIntervalMs' | 'timeoutMs' | 'log'>> = {}): { sub: ShardSubscriber, rec: Recorder, client: Cluster } {
  const client = new Cluster(c.seeds, CLUSTER_OPTIONS)
  // While a test has a node down, the client's retries report errors: expected.
  client.on('error', () => {})
  const rec = new Recorder()
  const sub = new ShardSubscriber(client, rec.handlers, { timeoutMs: TIMEOUT_MS, log: silent, ...options })
  t.teardown(() => {
    sub.close()
    client.disconnect()
  })
  return { sub, rec, client }
}

/** Publish one message per channel and wait until each arrived. */
async function roundTrip (client: Cluster, rec: Recorder, channels: string[], data: string): Promise<void> {
  for (const channel of channels) await client.spublish(channel, `${data}:${channel}`)
  await rec.until(() => channels.every((ch) => rec.messages(ch).includes(`${data}:${ch}`)), `${data} reached every channel`)
}

async function ssubConnections (c: RedisCluster, port: number): Promise<number> {
  return (await clientsNamed(c.node(port), 'fastify-rooms:ssub')).length
}

async function ssubscribeCalls (c: RedisCluster, port: number): Promise<number> {
  return Number(/cmdstat_ssubscribe:calls=(\d+)/.exec(await c.node(port).info('commandstats'))?.[1] ?? 0)
}

t.test('sharded pub/sub receiving on a real cluster', { skip: skipCluster }, async (t) => {
  const c = await startCluster(t)

  t.test('channels in several slots on every master: one SSUBSCRIBE per slot, one connection per master', async (t) => {
    const { sub, rec, client } = open(t, c)
    const byPort = await channelsOnEveryMaster(c, 2)
    // Two more channels sharing a slot with the first: they go in the same SSUBSCRIBE.
    const [first] = [...byPort.values()][0]!
    const tagged = [first!.replace('room:', 'chat:'), first!.replace('room:', 'typing:')]
    const channels = [...[...byPort.values()].flat(), ...tagged]
    for (const port of byPort.keys()) await c.node(port).call('CONFIG', 'RESETSTAT')
    t.equal(sub.ready, true, 'nothing wanted yet')
    await sub.subscribe(channels)
    t.equal(sub.ready, true)
    for (const [port, list] of byPort) {
      t.equal(await ssubConnections(c, port), 1, `one subscriber connection on master ${port}`)
      t.equal(await ssubscribeCalls(c, port), list.length, `one SSUBSCRIBE per slot on master ${port}`)
      const counts = await c.node(port).call('PUBSUB', 'SHARDNUMSUB', ...list) as Array<string | number>
      t.same(counts.filter((_, i) => i % 2 === 1), list.map(() => 1), 'each channel has one subscriber there')
    }
    for (const replica of (await c.nodes()).filter((n) => n.role === 'replica')) t.equal(await ssubConnections(c, replica.port), 0, `none on replica ${replica.port}`)
    await roundTrip(client, rec, channels, 'hello')
    t.same(rec.events.filter((e) => e.kind !== 'message'), [], 'nothing broken')
    await sub.subscribe(channels)
    t.equal(await ssubscribeCalls(c, [...byPort.keys()][0]!), byPort.get([...byPort.keys()][0]!)!.length, 'subscribing again to live channels asks Redis nothing')
  })

  t.test('unsubscribe stops the messages and drops a connection no channel uses', async (t) => {
    const { sub, rec, client } = open(t, c)
    const byPort = await channelsOnEveryMaster(c, 2)
    const [[port, [gone, kept]], [otherPort, otherChannels]] = [...byPort] as Array<[number, string[]]>
    await sub.subscribe([...byPort.values()].flat())
    await sub.unsubscribe([gone!])
    t.same(await c.node(port).call('PUBSUB', 'SHARDNUMSUB', gone!), [gone, 0])
    t.equal(await client.spublish(gone!, 'lost'), 0, 'nobody receives it')
    await roundTrip(client, rec, [kept!], 'after')
    t.same(rec.messages(gone!), [], 'nothing for the unsubscribed channel')
    await sub.unsubscribe(otherChannels!)
    await eventually(async () => await ssubConnections(c, otherPort!), (n) => n === 0, `the connection to ${otherPort} closed`)
    t.equal(await ssubConnections(c, port!), 1, 'the one still in use stays')
    await sub.unsubscribe(['never:{subscribed}'])
    t.equal(sub.ready, true)
    t.same(rec.events.filter((e) => e.kind !== 'message'), [], 'nothing broken')
  })

  t.test('a killed master: its channels are broken, then restored on the promoted replica in one SSUBSCRIBE per slot', async (t) => {
    const { sub, rec, client } = open(t, c)
    // A resubscription storm: ten slots per master, three channels in each.
    const byPort = await channelsOnEveryMaster(c, 10)
    const withTags = (list: string[]): string[] => list.flatMap((ch) => [ch, ch.replace('room:', 'chat:'), ch.replace('room:', 'typing:')])
    const channels = withTags([...byPort.values()].flat())
    const [doomedPort, doomedRooms] = [...byPort][0]!
    await sub.subscribe(channels)
    await roundTrip(client, rec, channels, 'before')
    const killed = await c.killMaster(doomedRooms[0]!)
    t.equal(killed.port, doomedPort)
    const affected = withTags(doomedRooms).sort()
    await rec.until(() => rec.named('restored').length === affected.length, 'every affected channel is restored')
    t.same(rec.named('broken'), affected, 'exactly the dead master\'s channels were broken')
    t.same(rec.named('restored'), affected)
    const broken = rec.events.filter((e) => e.kind === 'broken')
    t.equal(broken.length, doomedRooms.length, 'one broken event per slot')
    t.ok(broken.every((e) => e.kind === 'broken' && e.channels.length === 3 && new Set(e.channels.map(slotOf)).size === 1), 'each with its slot\'s channels')
    t.equal(rec.events.filter((e) => e.kind === 'restored').length, doomedRooms.length, 'one restored event per slot')
    t.ok(rec.events.findIndex((e) => e.kind === 'restored') > rec.events.findLastIndex((e) => e.kind === 'broken'), 'all broken before any restored (one connection lost at once)')
    t.equal(sub.ready, true)
    t.equal(await ssubscribeCalls(c, killed.promoted.port), doomedRooms.length, 'one SSUBSCRIBE per slot on the promoted replica')
    t.equal(await ssubConnections(c, killed.promoted.port), 1)
    await roundTrip(client, rec, channels, 'after')
    await killed.restart()
    await roundTrip(client, rec, channels, 'restarted')
    t.equal(rec.events.filter((e) => e.kind === 'broken').length, doomedRooms.length, 'the restart broke nothing')
  })

  t.test('while a master is down, its slots retry together: one reconnection and one CLUSTER SLOTS per round, not per slot', async (t) => {
    // Each connection the subscriber tries to the dead master fails, and it says so (debug): those are counted.
    const failedConnections: string[] = []
    const log = {
      ...silent,
      debug: (fields: unknown, message?: unknown) => { if (message === 'fastify-rooms: shard subscriber connection error') failedConnections.push((fields as { shard: string }).shard) }
    }
    const { sub, rec, client } = open(t, c, { log })
    // Twenty slots on the master to kill: each on its own retry timer, they reconnected to it about twenty times a second.
    const byPort = await channelsOnEveryMaster(c, 20, 500)
    const channels = [...byPort.values()].flat()
    const [doomedPort, doomed] = [...byPort][0]!
    await sub.subscribe(channels)
    const survivors = c.seeds.map((s) => s.port).filter((port) => port !== doomedPort)
    const slotsCalls = async (): Promise<number> => {
      const stats = await Promise.all(survivors.map(async (port) => await c.node(port).info('commandstats')))
      return stats.reduce((sum, text) => sum + Number(/cmdstat_cluster\|slots:calls=(\d+)/.exec(text)?.[1] ?? 0), 0)
    }
    const flaggedFailed = async (): Promise<boolean> => {
      const line = String(await c.node(survivors[0]!).call('CLUSTER', 'NODES')).split('\n').find((l) => l.includes(`:${doomedPort}@`))
      return line?.split(' ')[2]?.split(',').includes('fail') === true
    }
    const toDoomed = (): number => failedConnections.filter((shard) => shard === `127.0.0.1:${doomedPort}`).length
    let [slots, connections, seconds] = [0, 0, 0]
    const killed = await c.killMaster(doomed[0]!, {
      whileDown: async () => {
        await rec.until(() => rec.named('broken').length === doomed.length, 'the dead master\'s channels are broken')
        // By the time the others flag it failed (cluster-node-timeout), the first quick retries are over: what is counted is the steady state.
        await eventually(flaggedFailed, (failed) => failed, `the others flag ${doomedPort} as failed`, 10_000)
        const [slotsBefore, connectionsBefore] = [await slotsCalls(), toDoomed()]
        const started = performance.now()
        // A fixed window, for the counting only: what is measured is a rate while the master stays down.
        await new Promise((resolve) => setTimeout(resolve, DOWN_WINDOW_MS))
        ;[slots, connections, seconds] = [await slotsCalls() - slotsBefore, toDoomed() - connectionsBefore, (performance.now() - started) / 1000]
      }
    })
    const rate = (n: number): string => `${n} in ${seconds.toFixed(1)} s of down time`
    t.ok(connections > 0 && slots > 0, `it keeps trying (${rate(connections)} connections, ${rate(slots)} CLUSTER SLOTS): that is how it finds the promoted replica`)
    t.ok(connections <= MAX_PER_SECOND * seconds, `connections to the dead master: ${rate(connections)}, at most ${MAX_PER_SECOND} a second`)
    t.ok(slots <= MAX_PER_SECOND * seconds, `CLUSTER SLOTS: ${rate(slots)}, at most ${MAX_PER_SECOND} a second`)
    await rec.until(() => rec.named('restored').length === doomed.length, 'every channel of the dead master is restored on the promoted replica')
    t.same(rec.named('broken'), [...doomed].sort(), 'only the dead master\'s channels broke')
    t.same(rec.named('restored'), [...doomed].sort())
    t.equal(sub.ready, true)
    await roundTrip(client, rec, channels, 'after')
    await killed.restart()
  })

  t.test('a manual failover (CLUSTER FAILOVER): the channels of the demoted master are broken, then restored', async (t) => {
    const { sub, rec, client } = open(t, c)
    const byPort = await channelsOnEveryMaster(c, 2, 50)
    const channels = [...byPort.values()].flat()
    const [, affected] = [...byPort][0]!
    await sub.subscribe(channels)
    const { promoted } = await c.failover(affected[0]!)
    // The demoted master drops its shard subscribers (a sunsubscribe push each): nothing else tells a subscriber.
    await rec.until(() => rec.named('restored').length === affected.length, 'the demoted master\'s channels are restored')
    t.same(rec.named('broken'), [...affected].sort())
    t.equal(await ssubConnections(c, promoted.port), 1, 'subscribed on the new master')
    await roundTrip(client, rec, channels, 'after')
  })

  t.test('a stale topology naming a replica as master: the subscription still ends on the master', async (t) => {
    const real = new Cluster(c.seeds, CLUSTER_OPTIONS)
    real.on('error', () => {})
    // CLUSTER commands skip the client's offline queue: before ready one may go to a seed connection the first slot refresh then closes.
    await once(real, 'ready')
    const [channel] = [...(await channelsOnEveryMaster(c, 1, 60)).values()][0]!
    const stale = await real.cluster('SLOTS')
    const { promoted, demoted } = await c.failover(channel!)
    // The first CLUSTER SLOTS answers as a node that has not heard of the failover yet would.
    let staleAnswers = 1
    const client = new Proxy(real, {
      get: (target, prop) => prop === 'cluster' ? async (...args: Parameters<Cluster['cluster']>) => staleAnswers-- > 0 ? stale : await target.cluster(...args) : Reflect.get(target, prop)
    })
    const rec = new Recorder()
    const sub = new ShardSubscriber(client, rec.handlers, { timeoutMs: TIMEOUT_MS, log: silent })
    t.teardown(() => {
      sub.close()
      real.disconnect()
    })
    await sub.subscribe([channel!])
    t.equal(staleAnswers, -1, 'the stale answer was used, then a fresh one')
    t.equal(await ssubConnections(c, promoted.port), 1, 'subscribed on the master')
    await eventually(async () => await ssubConnections(c, demoted.port), (n) => n === 0, 'no subscription is left on the replica')
    t.same(rec.events, [], 'nothing was live yet, so nothing is broken')
    await roundTrip(real, rec, [channel!], 'on the master')
  })

  t.test('a slot migrated mid-traffic: broken, restored on the new master, no message after restored missed', async (t) => {
    const { sub, rec, client } = open(t, c)
    const byPort = await channelsOnEveryMaster(c, 2, 100)
    const [sourcePort, [moving, staying]] = [...byPort][0]!
    const targetPort = [...byPort.keys()][1]!
    const others = [...byPort.values()].flat().filter((ch) => ch !== moving && ch !== staying)
    await sub.subscribe([...byPort.values()].flat())
    // The stand-in for the adapter's publish: history and message in one script, as the real one does.
    client.defineCommand('publish', { numberOfKeys: 1, lua: "redis.call('RPUSH', KEYS[1], ARGV[2]); return redis.call('SPUBLISH', ARGV[1], ARGV[2])" })
    const publish = async (channel: string, data: string): Promise<unknown> => await (client as unknown as { publish: (k: string, ch: string, d: string) => Promise<unknown> }).publish(`hist:${channel.slice(5)}`, channel, data)
    let running = true
    const traffic = Promise.all([moving!, staying!].map(async (channel) => {
      for (let i = 0; running; i++) {
        rec.push({ kind: 'published', channel, data: String(i) })
        await publish(channel, String(i))
      }
    }))
    await rec.until(() => rec.messages(moving!).length > 20, 'traffic flows')
    const pausedAt = rec.events.length
    await c.migrateSlot(slotOf(moving!), targetPort, {
      // Hold the slot half-moved while publishes go on: they now run on the target, where this node is not subscribed yet.
      keysMoved: async () => await rec.until((events) => events.slice(pausedAt).filter((e) => e.kind === 'published' && e.channel === moving).length > 10, 'publishes reach the target during the migration')
    })
    t.equal((await c.ownerOf(moving!)).port, targetPort)
    await rec.until(() => rec.named('restored').includes(moving!), 'the moved channel is restored')
    const restoredAt = rec.events.findLastIndex((e) => e.kind === 'restored' && e.channels.includes(moving!))
    await rec.until((events) => events.slice(restoredAt).filter((e) => e.kind === 'message' && e.channel === moving).length > 20, 'messages flow again after restored')
    running = false
    await traffic
    t.ok(rec.named('broken').includes(moving!), 'the moved channel was reported broken')
    t.equal(sub.ready, true)
    t.equal(await ssubConnections(c, targetPort), 1, 'still one connection on the target')
    for (const channel of [moving!, staying!]) {
      const received = rec.messages(channel).map(Number)
      t.same(received, [...received].sort((a, b) => a - b), `${channel}: in order, no duplicates`)
      t.equal(new Set(received).size, received.length)
      const lastRestored = rec.events.findLastIndex((e) => e.kind === 'restored' && e.channels.includes(channel))
      // Published after the channel's last `restored`: must have arrived. Before it: may be missed, and history has it.
      const after = rec.events.slice(lastRestored + 1).flatMap((e) => e.kind === 'published' && e.channel === channel ? [Number(e.data)] : [])
      const stored = (await client.lrange(`hist:${channel.slice(5)}`, 0, -1)).map(Number)
      t.ok(after.length > 0, `${channel}: ${after.length} published after its last restored`)
      t.same(after.filter((n) => !received.includes(n)), [], `${channel}: none published after restored is missed`)
      const missed = stored.filter((n) => !received.includes(n))
      const publishedAt = (n: number): number => rec.events.findIndex((e) => e.kind === 'published' && e.channel === channel && e.data === String(n))
      const firstBroken = rec.events.findIndex((e) => e.kind === 'broken' && e.channels.includes(channel))
      t.ok(missed.every((n) => publishedAt(n) < lastRestored) && firstBroken !== -1 && firstBroken < lastRestored, `${channel}: ${missed.length} missed, each published before a broken/restored pair ended`)
      if (channel === moving) t.ok(missed.length > 0, 'publishes run on the target while this node was still subscribed on the source: the gap the test is about')
    }
    t.same(rec.named('broken').filter((ch) => others.includes(ch)), [], 'channels on other masters were not disturbed')
    await roundTrip(client, rec, [...byPort.values()].flat(), 'final')
  })

  t.test('without the sunsubscribe notice, the periodic count check finds a subscription a migration dropped', async (t) => {
    class Unhinted extends ShardSubscriber {
      protected override watchMoves (): void {}
    }
    const client = new Cluster(c.seeds, CLUSTER_OPTIONS)
    client.on('error', () => {})
    const rec = new Recorder()
    const sub = new Unhinted(client, rec.handlers, { timeoutMs: TIMEOUT_MS, log: silent, verifyIntervalMs: 100 })
    t.teardown(() => {
      sub.close()
      client.disconnect()
    })
    const [[, [channel]], [targetPort]] = [...await channelsOnEveryMaster(c, 1, 150)]
    await sub.subscribe([channel!])
    await c.migrateSlot(slotOf(channel!), targetPort!)
    await rec.until(() => rec.named('restored').includes(channel!), 'the moved channel is restored')
    t.same(rec.named('broken'), [channel])
    await roundTrip(client, rec, [channel!], 'moved')
  })

  t.test('a promise settles within timeoutMs while a shard cannot answer', async (t) => {
    // Well under the cluster's node timeout, so the stopped master is not failed over meanwhile.
    const timeoutMs = 300
    const { sub, rec, client } = open(t, c, { timeoutMs })
    const [port, [channel]] = [...await channelsOnEveryMaster(c, 1, 200)][0]!
    const pid = Number(/process_id:(\d+)/.exec(await c.node(port).info('server'))?.[1])
    process.kill(pid, 'SIGSTOP')
    const started = Date.now()
    try {
      await t.rejects(sub.subscribe([channel!]), { code: 'UNAVAILABLE' })
    } finally {
      process.kill(pid, 'SIGCONT')
    }
    const took = Date.now() - started
    // A timer may fire a few ms early (libuv's cached loop time); the upper bound leaves a loaded machine
    // a second of slack, well short of a failover (node timeout 1000 ms, then the election) ending the wait.
    t.ok(took >= timeoutMs - 5 && took < timeoutMs + 1000, `rejected after ${took} ms (timeoutMs ${timeoutMs})`)
    t.equal(sub.ready, false, 'still wanted, not confirmed')
    await rec.until(() => rec.named('restored').includes(channel!), 'confirmed once the shard answers again')
    t.equal(sub.ready, true)
    await roundTrip(client, rec, [channel!], 'resumed')
  })

  t.test('the cluster restarted empty: every channel broken, then restored, even past handlers that throw', async (t) => {
    const { sub, rec, client } = open(t, c)
    const channels = [...(await channelsOnEveryMaster(c, 2, 300)).values()].flat()
    await sub.subscribe(channels)
    const { broken, message } = rec.handlers
    let thrown = 0
    rec.handlers.broken = (list) => {
      broken(list)
      thrown++
      throw new Error('a bug in the broken handler')
    }
    rec.handlers.message = (channel, data) => {
      message(channel, data)
      if (data.toString().startsWith('throw')) {
        thrown++
        throw new Error('a bug in the message handler')
      }
    }
    await roundTrip(client, rec, channels, 'throw')
    await roundTrip(client, rec, channels, 'still')
    await c.restartEmpty()
    await rec.until(() => rec.named('restored').length === channels.length, 'every channel is restored')
    t.same(rec.named('broken'), [...channels].sort())
    t.equal(thrown, channels.length * 2, 'every handler call threw')
    t.equal(sub.ready, true)
    await roundTrip(client, rec, channels, 'new cluster')
  })

  t.test('after close, calls fail and nothing is reported', async (t) => {
    const { sub, rec } = open(t, c)
    const [channel] = [...(await channelsOnEveryMaster(c, 1, 400)).values()].flat()
    await sub.subscribe([channel!])
    sub.close()
    t.equal(sub.ready, false)
    await t.rejects(sub.subscribe([channel!]), { code: 'UNAVAILABLE' })
    await sub.unsubscribe([channel!])
    t.same(rec.events, [])
  })
})
