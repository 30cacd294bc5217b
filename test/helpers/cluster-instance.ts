import { redisAdapter, type RedisAdapterOptions } from '../../src/index.js'
import { slotOf } from '../../src/adapters/slot.js'
import { serves, type ClusterNodeInfo, type RedisCluster } from './cluster.js'
import type { LogSink } from './log.js'
import { startApp, type Started } from './server.js'
import { TestSocket } from './socket.js'

interface Teardown { teardown: (fn: () => unknown) => void }

/** The instance a connection is on: its connection id's prefix. */
export const nodeOf = (socket: TestSocket): string => socket.welcome.connectionId.slice(0, socket.welcome.connectionId.indexOf('-'))

/**
 * A master carrying none of an instance's shared keys and channels: not the
 * leases' slot nor the `all` channel's (fixed by their hash tags). A shard
 * holding one takes the whole instance down with it, so a test of one
 * shard's fault puts the fault on this one.
 */
export async function sparedMaster (c: RedisCluster): Promise<ClusterNodeInfo> {
  const masters = (await c.nodes()).filter((n) => n.role === 'master')
  const spared = masters.find((m) => !serves(m, slotOf('{global}')) && !serves(m, slotOf('{all}')))
  if (spared === undefined) throw new Error('every master carries the leases or the all channel')
  return spared
}

/**
 * An app on the cluster whose own channel is not on `master` either (its
 * node id is random: an instance whose channel lands there is replaced),
 * logging at debug level into `sink`.
 */
export async function instanceBeside (t: Teardown, c: RedisCluster, master: ClusterNodeInfo, options: Omit<RedisAdapterOptions, 'cluster'>, sink: LogSink): Promise<Started> {
  for (;;) {
    const a = await startApp(t, { adapter: redisAdapter({ cluster: c.seeds, ...options }) }, undefined, { logger: { level: 'debug', stream: sink.stream } })
    const probe = await TestSocket.open(a.wsUrl)
    await probe.close()
    if (!serves(master, slotOf(`{n:${nodeOf(probe)}}`))) return a
    await a.app.close()
  }
}
