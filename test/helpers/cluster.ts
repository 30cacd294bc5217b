import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { once } from 'node:events'
import { promisify } from 'node:util'
import { Redis } from 'ioredis'
import { slotOf } from '../../src/adapters/slot.js'
import { needs } from './needs.js'
import { REDIS_SERVER, eventually, freePort } from './redis.js'

export const REDIS_CLI = '/usr/bin/redis-cli'
/** Reason to skip outside CI when redis-server or redis-cli is missing (under CI=true a missing binary fails). */
export const skipCluster = needs(REDIS_SERVER, 'apt-get install -y redis-server') || needs(REDIS_CLI, 'apt-get install -y redis-tools')

/**
 * How long a node may be silent before the others suspect it. Short, so a
 * killed master is replaced in about two seconds; long enough that a loaded
 * CI machine does not fail a healthy node over.
 */
export const NODE_TIMEOUT_MS = 1000
/** Every wait on the cluster reaching a state gives up after this long. */
const SETTLE_MS = 20_000
/** A node that takes longer to answer one question counts as not answering for now. */
const ASK_MS = 1_000

/** One node as `CLUSTER NODES` describes it. */
export interface ClusterNodeInfo {
  id: string
  port: number
  role: 'master' | 'replica'
  /** The master's id, for a replica. */
  masterOf: string | undefined
  /** Flagged failing, or in handshake. */
  failing: boolean
  /** The slots it serves, as [first, last] ranges; empty for a replica. */
  slots: Array<[number, number]>
}

/** A master killed by `killMaster`. */
export interface KilledMaster {
  /** The port the killed process listened on. */
  port: number
  /** The slot asked for. */
  slot: number
  /** The replica promoted in its place, now serving its slots. */
  promoted: ClusterNodeInfo
  /** Start the killed process again: it rejoins as a replica of `promoted` and is synced when this resolves. */
  restart: () => Promise<void>
}

export interface MigrateHooks {
  /** Called once both sides are IMPORTING/MIGRATING, before any key moves. */
  opened?: () => Promise<void>
  /** Called once every key is on the target, before the slot is handed over. */
  keysMoved?: () => Promise<void>
}

export interface RedisCluster {
  /** Every node's address, the seed list for ioredis `new Cluster(seeds)`. */
  seeds: Array<{ host: string, port: number }>
  /** A direct connection to one node, for looking at its state; closed at teardown. */
  node: (port: number) => Redis
  /** Every live node as one live node sees them. */
  nodes: () => Promise<ClusterNodeInfo[]>
  /** The master serving a slot, or a key's or shard channel's slot. */
  ownerOf: (slotOrKey: number | string) => Promise<ClusterNodeInfo>
  /**
   * SIGKILL the master serving a slot (or a key's slot); resolves once its replica took over and the cluster is ok.
   * `whileDown` runs between the kill and the takeover, which waits for it: a test sees the master down for as long
   * as it needs, up to about 10 s (later, the replica counts its data as too old to take over).
   */
  killMaster: (slotOrKey: number | string, options?: { whileDown?: () => Promise<void> }) => Promise<KilledMaster>
  /** CLUSTER FAILOVER on the replica of the master serving a slot: the two swap roles, nothing is lost; resolves once settled. */
  failover: (slotOrKey: number | string) => Promise<{ promoted: ClusterNodeInfo, demoted: ClusterNodeInfo }>
  /** Move a slot and its keys to another master, live (IMPORTING/MIGRATING, MIGRATE in batches, SETSLOT NODE on every master). */
  migrateSlot: (slot: number, toPort: number, hooks?: MigrateHooks) => Promise<void>
  /** Kill every node and start an empty cluster (new node ids, no data) on the same ports; resolves once it is ready. */
  restartEmpty: () => Promise<void>
  /** The process id of the redis-server on a port, while it runs (the bench reads its CPU time). */
  pid: (port: number) => number | undefined
}

interface Teardown { teardown: (fn: () => unknown) => void }

const run = promisify(execFile)

/** A port whose cluster bus port can also be chosen freely (Redis 7 takes `cluster-port`). */
async function freePorts (n: number): Promise<number[]> {
  const ports = new Set<number>()
  while (ports.size < n) ports.add(await freePort())
  return [...ports]
}

function parseNodes (text: string): ClusterNodeInfo[] {
  return text.trim().split('\n').map((line) => {
    const [id, address, flags, master, , , , , ...slots] = line.split(' ')
    const port = Number(/:(\d+)@/.exec(address!)?.[1])
    const flagList = flags!.split(',')
    return {
      id: id!,
      port,
      role: flagList.includes('master') ? 'master' : 'replica',
      masterOf: master === '-' ? undefined : master,
      failing: flagList.some((f) => f === 'fail' || f === 'fail?' || f === 'handshake' || f === 'noaddr'),
      // `[slot->-id]` / `[slot-<-id]` entries are open migrations, not served slots.
      slots: slots.filter((s) => !s.startsWith('[')).map((s) => {
        const [first, last] = s.split('-').map(Number)
        return [first!, last ?? first!] as [number, number]
      })
    } satisfies ClusterNodeInfo
  })
}

/** Whether a master serves a slot. */
export const serves = (node: ClusterNodeInfo, slot: number): boolean => node.slots.some(([first, last]) => slot >= first && slot <= last)

/**
 * Start a real Redis Cluster of 3 masters and 3 replicas for one test file
 * (`replicas: 0`: the 3 masters alone, for the bench's like-for-like baseline),
 * and wait until it serves every slot and every replica is synced. Every
 * process is killed and its directory removed at teardown. `nodeTimeoutMs`
 * (default `NODE_TIMEOUT_MS`): the bench, which loads the machine and kills
 * no node, takes a longer one so a starved node is not failed over mid-run.
 */
export async function startCluster (t: Teardown, { nodeTimeoutMs = NODE_TIMEOUT_MS, replicas = 1 }: { nodeTimeoutMs?: number, replicas?: 0 | 1 } = {}): Promise<RedisCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'fastify-rooms-cluster-'))
  const count = 3 * (1 + replicas)
  const ports = await freePorts(2 * count)
  const clientPorts = ports.slice(0, count)
  const busPort = new Map(clientPorts.map((port, i) => [port, ports[count + i]!]))
  const processes = new Map<number, ChildProcess>()
  const inspectors = new Map<number, Redis>()
  /** Bumped by restartEmpty, so each fresh cluster gets fresh node config files. */
  let generation = 0
  let starts = 0
  let closed = false

  const launch = async (port: number): Promise<void> => {
    const proc = spawn(REDIS_SERVER, [
      '--port', String(port), '--bind', '127.0.0.1',
      '--cluster-enabled', 'yes', '--cluster-port', String(busPort.get(port)),
      '--cluster-config-file', join(dir, `nodes-${port}-${generation}.conf`),
      '--cluster-node-timeout', String(nodeTimeoutMs),
      // No persistence: a replica's full sync still writes an RDB file, which a restarted node must not load.
      '--save', '', '--appendonly', 'no', '--dir', dir, '--dbfilename', `dump-${port}-${++starts}.rdb`, '--repl-diskless-load', 'on-empty-db',
      // A master otherwise waits 5 s for more replicas before it sends the first one its data.
      '--repl-diskless-sync-delay', '0'
    ], { stdio: ['ignore', 'pipe', 'pipe'] })
    processes.set(port, proc)
    let out = ''
    await new Promise<void>((resolve, reject) => {
      proc.stdout?.on('data', (chunk: Buffer) => {
        out += chunk.toString()
        if (out.includes('Ready to accept connections')) resolve()
      })
      proc.once('exit', (code) => reject(new Error(`redis-server on ${port} exited with ${code}: ${out}`)))
    })
  }

  const kill = async (port: number): Promise<void> => {
    const proc = processes.get(port)
    if (proc === undefined || proc.exitCode !== null || proc.signalCode !== null) return
    const exited = once(proc, 'exit')
    proc.kill('SIGKILL')
    await exited
  }

  const alive = (port: number): boolean => {
    const proc = processes.get(port)
    return proc !== undefined && proc.exitCode === null && proc.signalCode === null
  }

  const node = (port: number): Redis => {
    let redis = inspectors.get(port)
    if (redis === undefined) {
      // Fail at once while the node is down rather than queue: every wait below asks again.
      redis = new Redis({ port, host: '127.0.0.1', connectionName: 'harness', enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => 20 })
      // A killed node's reconnect attempts are expected while a test has it down.
      redis.on('error', () => {})
      inspectors.set(port, redis)
    }
    return redis
  }

  /** One node's view of the cluster. */
  const viewOf = async (port: number): Promise<ClusterNodeInfo[]> => parseNodes(String(await node(port).call('CLUSTER', 'NODES')))

  const livePorts = (): number[] => clientPorts.filter(alive)

  /**
   * Ask a node: undefined while its connection is not ready (it may have just
   * started), or when it does not answer within ASK_MS (a test may have
   * paused its clients: the other nodes are asked meanwhile).
   */
  const ask = async <T>(port: number, fn: (redis: Redis) => Promise<T>): Promise<T | undefined> => {
    const redis = node(port)
    if (redis.status !== 'ready') return undefined
    let timer: NodeJS.Timeout | undefined
    try {
      return await Promise.race([fn(redis), new Promise<undefined>((resolve) => { timer = setTimeout(() => resolve(undefined), ASK_MS) })])
    } catch {
      return undefined
    } finally {
      clearTimeout(timer)
    }
  }

  /**
   * The cluster is settled: every live node is ok, serves all 16384 slots,
   * sees the same masters with the same slots and no failing node, every
   * master it knows is alive, and every replica's link to its master is up.
   */
  const settled = async (): Promise<string | true> => {
    const live = livePorts()
    let reference: string | undefined
    for (const port of live) {
      const info = await ask(port, async (r) => String(await r.call('CLUSTER', 'INFO')))
      if (info === undefined) return `${port} does not answer`
      if (!info.includes('cluster_state:ok') || !info.includes('cluster_slots_ok:16384')) return `${port} is not ok: ${info.split('\r\n').slice(0, 4).join(' ')}`
      const view = await ask(port, async () => await viewOf(port))
      if (view === undefined) return `${port} does not answer CLUSTER NODES`
      const members = view.filter((n) => live.includes(n.port))
      if (members.length !== live.length || members.some((n) => n.failing)) return `${port} does not see every live node healthy yet`
      const masters = members.filter((n) => n.role === 'master')
      const covered = masters.reduce((sum, m) => sum + m.slots.reduce((s, [a, b]) => s + b - a + 1, 0), 0)
      if (covered !== 16384) return `${port}: live masters serve ${covered} slots`
      const shape = JSON.stringify(masters.map((m) => [m.id, m.slots]).sort())
      if (reference === undefined) reference = shape
      else if (shape !== reference) return `${port} disagrees on who serves which slots`
      const me = view.find((n) => n.port === port)
      if (me?.role === 'replica') {
        const replication = await ask(port, async (r) => await r.info('replication'))
        if (replication === undefined || !replication.includes('master_link_status:up') || replication.includes('master_sync_in_progress:1')) return `replica ${port} is not synced`
      }
    }
    return true
  }

  const waitSettled = async (what: string): Promise<void> => {
    await eventually(settled, (state) => state === true, what, SETTLE_MS)
  }

  /** Any live node's view, from the first that answers. */
  const nodes = async (): Promise<ClusterNodeInfo[]> => {
    const view = await eventually(async () => {
      for (const port of livePorts()) {
        const view = await ask(port, async () => await viewOf(port))
        if (view !== undefined) return view
      }
      return undefined
    }, (view) => view !== undefined, 'a cluster node answers', SETTLE_MS)
    return view!.filter((n) => !n.failing && alive(n.port))
  }

  const create = async (): Promise<void> => {
    await Promise.all(clientPorts.map(launch))
    await run(REDIS_CLI, ['--cluster', 'create', ...clientPorts.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', String(replicas), '--cluster-yes'])
    await waitSettled('the new cluster is ready')
  }

  t.teardown(async () => {
    closed = true
    for (const redis of inspectors.values()) redis.disconnect()
    await Promise.all(clientPorts.map(kill))
    rmSync(dir, { recursive: true, force: true })
  })
  await create()

  const slotFor = (slotOrKey: number | string): number => typeof slotOrKey === 'number' ? slotOrKey : slotOf(slotOrKey)

  const ownerOf = async (slotOrKey: number | string): Promise<ClusterNodeInfo> => {
    const slot = slotFor(slotOrKey)
    const owner = (await nodes()).find((n) => n.role === 'master' && serves(n, slot))
    if (owner === undefined) throw new Error(`no live master serves slot ${slot}`)
    return owner
  }

  const killMaster = async (slotOrKey: number | string, { whileDown }: { whileDown?: () => Promise<void> } = {}): Promise<KilledMaster> => {
    const slot = slotFor(slotOrKey)
    const view = await nodes()
    const master = view.find((n) => n.role === 'master' && serves(n, slot))
    const replica = view.find((n) => n.masterOf === master?.id)
    if (master === undefined || replica === undefined) throw new Error(`slot ${slot} has no master with a replica to promote`)
    if (whileDown === undefined) {
      await kill(master.port)
    } else {
      const failover = async (allowed: boolean): Promise<unknown> => await node(replica.port).call('CONFIG', 'SET', 'cluster-replica-no-failover', allowed ? 'no' : 'yes')
      await failover(false)
      try {
        await kill(master.port)
        await whileDown()
      } finally {
        await failover(true)
      }
    }
    await waitSettled(`replica ${replica.port} took over slot ${slot} from killed master ${master.port}`)
    const promoted = await ownerOf(slot)
    if (promoted.port !== replica.port) throw new Error(`slot ${slot} went to ${promoted.port}, not to the killed master's replica ${replica.port}`)
    return {
      port: master.port,
      slot,
      promoted,
      restart: async () => {
        if (closed) return
        await launch(master.port)
        await eventually(async () => (await nodes()).find((n) => n.port === master.port), (n) => n?.masterOf === promoted.id, `restarted ${master.port} rejoined as a replica of ${promoted.port}`, SETTLE_MS)
        await waitSettled(`restarted ${master.port} is synced`)
      }
    }
  }

  const failover = async (slotOrKey: number | string): Promise<{ promoted: ClusterNodeInfo, demoted: ClusterNodeInfo }> => {
    const slot = slotFor(slotOrKey)
    const view = await nodes()
    const master = view.find((n) => n.role === 'master' && serves(n, slot))
    const replica = view.find((n) => n.masterOf === master?.id)
    if (master === undefined || replica === undefined) throw new Error(`slot ${slot} has no master with a replica`)
    await node(replica.port).call('CLUSTER', 'FAILOVER')
    await eventually(async () => await ownerOf(slot), (owner) => owner.id === replica.id, `replica ${replica.port} took slot ${slot} over`, SETTLE_MS)
    await waitSettled(`the cluster is ok after ${replica.port} took over from ${master.port}`)
    const after = await nodes()
    return { promoted: after.find((n) => n.id === replica.id)!, demoted: after.find((n) => n.id === master.id)! }
  }

  const migrateSlot = async (slot: number, toPort: number, hooks: MigrateHooks = {}): Promise<void> => {
    const view = await nodes()
    const source = view.find((n) => n.role === 'master' && serves(n, slot))
    const target = view.find((n) => n.port === toPort)
    if (source === undefined) throw new Error(`no live master serves slot ${slot}`)
    if (target?.role !== 'master') throw new Error(`${toPort} is not a live master`)
    if (target.id === source.id) throw new Error(`slot ${slot} is already on ${toPort}`)
    const from = node(source.port)
    const to = node(target.port)
    // The order redis-cli follows: the target first, so no moment exists where the source redirects to a target that refuses.
    await to.call('CLUSTER', 'SETSLOT', slot, 'IMPORTING', source.id)
    await from.call('CLUSTER', 'SETSLOT', slot, 'MIGRATING', target.id)
    await hooks.opened?.()
    // While MIGRATING, the source creates no new key in the slot (it sends ASK to the target): once empty it stays empty.
    for (;;) {
      const keys = await from.call('CLUSTER', 'GETKEYSINSLOT', slot, 100) as string[]
      if (keys.length === 0) break
      await from.call('MIGRATE', '127.0.0.1', target.port, '', 0, 5000, 'KEYS', ...keys)
    }
    await hooks.keysMoved?.()
    await to.call('CLUSTER', 'SETSLOT', slot, 'NODE', target.id)
    await from.call('CLUSTER', 'SETSLOT', slot, 'NODE', target.id)
    for (const other of view.filter((n) => n.role === 'master' && n.id !== source.id && n.id !== target.id)) {
      await node(other.port).call('CLUSTER', 'SETSLOT', slot, 'NODE', target.id)
    }
    await eventually(async () => {
      const views = await Promise.all(livePorts().map(async (port) => await ask(port, async () => await viewOf(port))))
      return views.every((v) => v?.find((n) => n.id === target.id && serves(n, slot)) !== undefined && v.filter((n) => serves(n, slot)).length === 1)
    }, (agreed) => agreed, `every node sees slot ${slot} on ${toPort}`, SETTLE_MS)
    await waitSettled(`the cluster is ok after moving slot ${slot}`)
  }

  const restartEmpty = async (): Promise<void> => {
    await Promise.all(clientPorts.map(kill))
    generation++
    await create()
  }

  return {
    seeds: clientPorts.map((port) => ({ host: '127.0.0.1', port })),
    node,
    nodes,
    ownerOf,
    killMaster,
    failover,
    migrateSlot,
    restartEmpty,
    pid: (port) => alive(port) ? processes.get(port)?.pid : undefined
  }
}
