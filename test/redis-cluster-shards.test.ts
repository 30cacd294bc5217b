import t from 'tap'
import { Cluster } from 'ioredis'
import { ShardSubscriber } from '../src/adapters/shard-subscriber.js'
import { skipCluster, startCluster } from './helpers/cluster.js'

/**
 * One shard's trouble stays that shard's: the cases where a Redis Cluster
 * shard's subscription, or one master, goes wrong while the others are fine,
 * and the races of a channel left and wanted again. Real 3-master cluster,
 * real adapters and sockets.
 */

const TIMEOUT_MS = 2000
const silent = { debug: () => {}, warn: () => {} }

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
})
