import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { setTimeout as delay } from 'node:timers/promises'
import { Cluster } from 'ioredis'
import WebSocket from 'ws'
import { redisAdapter, type RoomsOptions } from '../src/index.js'
import { connect, type Gap, type Room, type RoomsClient, type RoomsClientError } from '../src/client/index.js'
import { Partitions } from '../src/adapters/partitions.js'
import { slotOf } from '../src/adapters/slot.js'
import { startApp, type Started } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { clientsNamed, eventually } from './helpers/redis.js'
import { skipCluster, startCluster, type ClusterNodeInfo, type RedisCluster } from './helpers/cluster.js'
import { waitUntil } from './helpers/waiters.js'
import { nextEvent } from './helpers/client.js'
import { childInstance } from './helpers/child-instance.js'

/**
 * The fault cases of Redis Cluster support, against a real cluster of 3
 * masters and 3 replicas, real app instances and real clients: the key and
 * connection layout, the history budgets per partition, dead instances
 * reaped, a master killed mid-traffic, a replica that cannot confirm writes
 * and a failover that loses some, a slot migrated mid-traffic, the whole
 * cluster restarted empty. The guarantee under every fault: no acknowledged
 * message is lost silently (each reaches every member of its room in offset
 * order, or the member is told of a gap), and none is delivered twice.
 * `FAULTS_LOG=debug npx tap test/cluster.test.ts` shows the instances' logs.
 */

/** No rate limit in the way of the publishers. */
const UNLIMITED: RoomsOptions = { maxFramesPerSecond: 1e6, frameBurst: 10_000 }
/**
 * A publisher's pace: a rate, not a synchronisation (nothing waits for it to
 * pass). It keeps 12 publishers from flooding two cores, where the cluster's
 * 1 s node timeout must keep healthy nodes from being failed over.
 */
const PACE_MS = 15
/** How long a wait on clients may take before the test fails (a guard, not a synchronisation). */
const WAIT_MS = 30_000
/** Codes a publish may get while a shard fails over or its slot moves: it was not applied, or may or may not have been. */
const MAY_FAIL = new Set(['UNAVAILABLE', 'DISCONNECTED'])
/** INTERNAL is one of those only with the sentence of a publish whose outcome is unknown. */
const mayFail = (err: RoomsClientError): boolean => MAY_FAIL.has(err.code) || (err.code === 'INTERNAL' && /may or may not have been published/.test(err.message))

/** The instances' log, when asked for (see above); otherwise none. */
const LOG = process.env.FAULTS_LOG === undefined ? {} : { logger: { level: process.env.FAULTS_LOG } }

let prefixes = 0

interface Deployed {
  prefix: string
  partitions: Partitions
  nodes: Started[]
}

interface DeployOptions extends RoomsOptions {
  partitions?: number
  leaseMs?: number
  /** Per-instance Fastify options (a logger). */
  server?: (index: number) => Record<string, unknown>
}

/** `count` app instances on the cluster, under a key prefix of their own. */
async function deploy (t: Test, c: RedisCluster, { partitions = 64, leaseMs, server, ...options }: DeployOptions = {}, count = 2): Promise<Deployed> {
  const prefix = `faults${++prefixes}:`
  const nodes: Started[] = []
  for (let i = 0; i < count; i++) {
    const adapter = redisAdapter({ cluster: c.seeds, keyPrefix: prefix, partitions, leaseMs })
    nodes.push(await startApp(t, { ...UNLIMITED, ...options, adapter }, undefined, server?.(i) ?? LOG))
  }
  return { prefix, partitions: new Partitions(prefix, partitions), nodes }
}

const serves = (node: ClusterNodeInfo, slot: number): boolean => node.slots.some(([first, last]) => slot >= first && slot <= last)

async function masters (c: RedisCluster): Promise<ClusterNodeInfo[]> {
  return (await c.nodes()).filter((n) => n.role === 'master').sort((a, b) => a.port - b.port)
}

/** The slot of a room's keys and channel. */
const slotOfRoom = (parts: Partitions, room: string): number => parts.slot(parts.base(room))

/** `perShard` room names for each master (by the slot of their partition), in the masters' port order. */
async function roomsOnEveryShard (c: RedisCluster, parts: Partitions, name: string, perShard: number): Promise<string[][]> {
  const all = await masters(c)
  const found = all.map(() => [] as string[])
  for (let i = 0; found.some((rooms) => rooms.length < perShard); i++) {
    const room = `${name}${i}`
    const shard = all.findIndex((m) => serves(m, slotOfRoom(parts, room)))
    if (found[shard]!.length < perShard) found[shard]!.push(room)
  }
  return found
}

/** `count` room names of one partition (`base`). */
function roomsIn (parts: Partitions, base: string, name: string, count: number): string[] {
  const rooms: string[] = []
  for (let i = 0; rooms.length < count; i++) if (parts.base(`${name}${i}`) === base) rooms.push(`${name}${i}`)
  return rooms
}

async function json (url: string): Promise<any> {
  const res = await fetch(url)
  return await res.json()
}

/** The app instance's node id, from a connection id (`<node>-<n>`). */
const nodeOf = (socket: TestSocket): string => socket.welcome.connectionId.slice(0, socket.welcome.connectionId.indexOf('-'))

/** Every message of a room's current epoch, paged from REST. */
async function wholeHistory (http: string, room: string): Promise<{ epoch: string, messages: Array<{ offset: number, data: string }> }> {
  const messages: Array<{ offset: number, data: string }> = []
  let epoch = ''
  for (let after = 0; ;) {
    const page = await json(`${http}/rooms/${room}/messages?after=${after}&limit=1000`)
    if (epoch !== '' && page.epoch !== epoch) throw new Error(`${room}'s epoch changed while its history was read`)
    epoch = page.epoch
    messages.push(...page.messages)
    if (page.messages.length < 1000) return { epoch, messages }
    after = page.messages[page.messages.length - 1].offset
  }
}

/**
 * Fastify's log, readable by a test: `next` waits for a line, as TestSocket
 * waits for a frame. Lines are kept, so a line that came before the wait
 * started is found too; each is returned once.
 */
class Logs {
  private readonly lines: Array<Record<string, any>> = []
  private readonly waiters = new Set<() => void>()
  private read = 0

  /** Fastify server options that send the instance's log here. */
  options (level = 'warn'): Record<string, unknown> {
    return { logger: { level, stream: { write: (line: string) => { this.lines.push(JSON.parse(line)); for (const wake of [...this.waiters]) wake() } } } }
  }

  /** The first line after the last one returned whose message matches. */
  async next (msg: RegExp): Promise<Record<string, any>> {
    const find = (): Record<string, any> | undefined => {
      const i = this.lines.findIndex((line, k) => k >= this.read && msg.test(String(line.msg)))
      if (i === -1) return undefined
      this.read = i + 1
      return this.lines[i]
    }
    let found: Record<string, any> | undefined
    await waitUntil(this.waiters, () => (found = find()) !== undefined, WAIT_MS, () => `timed out waiting for a log line ${msg}; last: ${JSON.stringify(this.lines.slice(-5))}`)
    return found as Record<string, any>
  }
}

/** One SDK client in one room, and everything its room handle reported. */
interface Member {
  name: string
  room: string
  client: RoomsClient<string>
  handle: Room<string>
  delivered: Array<{ epoch: string, offset: number, data: string }>
  gaps: Gap[]
  /** `recovered` of each rejoin. */
  rejoins: Array<boolean | undefined>
}

/**
 * Members that publish continuously with acks, one SDK client per member,
 * and the record of every publish: acked (with its offset) or refused.
 */
class Traffic {
  readonly members: Member[] = []
  readonly acked = new Map<string, { room: string, offset: number }>()
  readonly refused = new Map<string, string>()
  /** Per room: publishes acked, and publishes answered either way. */
  private readonly tally = new Map<string, { acked: number, settled: number }>()
  private readonly waiters = new Set<() => void>()
  private running = false
  private loops: Array<Promise<void>> = []

  get rooms (): string[] {
    return [...new Set(this.members.map((m) => m.room))]
  }

  /** A member of `room` on the instance at `wsUrl`. */
  async add (t: Test, wsUrl: string, room: string): Promise<Member> {
    const client = await connect<string>(wsUrl, { WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 100 } })
    t.teardown(() => client.close())
    const handle = await client.join(room)
    const member: Member = { name: `${room}/${this.members.length}`, room, client, handle, delivered: [], gaps: [], rejoins: [] }
    handle.on('message', (m) => { member.delivered.push({ epoch: m.epoch, offset: m.offset, data: m.data }) })
    handle.on('gap', (gap) => { member.gaps.push(gap) })
    handle.on('joined', ({ recovered }) => { member.rejoins.push(recovered) })
    this.members.push(member)
    return member
  }

  /** Every member publishes, one publish at a time, until stop(). */
  start (): void {
    this.running = true
    this.loops = this.members.map(async (member) => {
      for (let n = 0; this.running; n++) {
        const data = `${member.name}#${n}`
        const tally = this.tally.get(member.room) ?? { acked: 0, settled: 0 }
        this.tally.set(member.room, tally)
        try {
          this.acked.set(data, { room: member.room, offset: await member.handle.publish(data) })
          tally.acked++
        } catch (err) {
          const code = (err as RoomsClientError).code
          if (!mayFail(err as RoomsClientError)) throw new Error(`publish ${data} failed with ${code}: ${(err as Error).message}`)
          this.refused.set(data, code)
        }
        tally.settled++
        for (const wake of [...this.waiters]) wake()
        await delay(PACE_MS)
      }
    })
  }

  async stop (): Promise<void> {
    this.running = false
    await Promise.all(this.loops)
  }

  private count (room: string, settled: boolean): number {
    const tally = this.tally.get(room)
    return tally === undefined ? 0 : settled ? tally.settled : tally.acked
  }

  /**
   * Resolves once every room in `rooms` has `n` more publishes acked (or, with
   * `settled`, answered either way) than now. Fails at once when a publisher failed.
   */
  async more (rooms: string[], n: number, settled = false, what = `${n} more acks in ${rooms.join(', ')}`): Promise<void> {
    const start = new Map(rooms.map((room) => [room, this.count(room, settled)]))
    const done = (): boolean => rooms.every((room) => this.count(room, settled) >= (start.get(room) as number) + n)
    if (done()) return
    const failed = Promise.all(this.loops).then(() => { throw new Error(`the publishers stopped before ${what}`) })
    await Promise.race([failed, waitUntil(this.waiters, done, WAIT_MS, () =>
      `timed out waiting for ${what}: ${rooms.map((room) => `${room} ${this.count(room, settled) - (start.get(room) as number)}`).join(', ')}`)])
  }
}

/**
 * Once the publishers stopped: every member has caught up with its room's
 * final state, and
 * - each member got each message at most once, in offset order per epoch;
 * - every acked message is in the room's final history at its offset, or
 *   was delivered under an older epoch (the room's history was reset since);
 *   none is nowhere, unless it belongs to an epoch `ended` that every member
 *   was told had ended;
 * - each member got every acked message, or was told of a gap covering it;
 * - every offset of the final epoch reached every member, or a gap covers it;
 * - one (room, epoch, offset) is one message everywhere: members and history agree;
 * - history holds each message at most once, at contiguous offsets.
 * Returns the gaps the members were told of, for the caller to judge.
 */
async function verify (t: Test, traffic: Traffic, http: string, ended?: string): Promise<Gap[]> {
  const finals = new Map<string, { epoch: string, offset: number }>()
  for (const room of traffic.rooms) {
    const info = await json(`${http}/rooms/${room}`)
    // Said here, not as "stuck at ..., final undefined" a wait later: what REST answered instead.
    if (typeof info.epoch !== 'string') throw new Error(`${room}: REST did not answer the room's state: ${JSON.stringify(info)}`)
    finals.set(room, { epoch: info.epoch, offset: info.offset })
  }
  // Caught up: wait for it, message by message.
  await Promise.all(traffic.members.map(async (member) => await new Promise<void>((resolve, reject) => {
    const final = finals.get(member.room)!
    const done = (): boolean => member.handle.epoch === final.epoch && member.handle.offset >= final.offset
    if (done()) { resolve(); return }
    const timer = setTimeout(() => reject(new Error(`${member.name} stuck at ${member.handle.epoch}/${member.handle.offset}, final ${final.epoch}/${final.offset}, state ${member.client.state}`)), WAIT_MS)
    member.handle.on('message', () => { if (done()) { clearTimeout(timer); resolve() } })
  })))

  // Where each message is: (room, epoch, offset) -> data, from history and every delivery.
  const at = new Map<string, string>()
  const place = new Map<string, { epoch: string, offset: number }>()
  const conflicts: string[] = []
  const record = (room: string, epoch: string, offset: number, data: string): void => {
    const key = `${room}|${epoch}|${offset}`
    const known = at.get(key)
    if (known !== undefined && known !== data) conflicts.push(`${key}: ${known} and ${data}`)
    at.set(key, data)
    const was = place.get(data)
    if (was !== undefined && (was.epoch !== epoch || was.offset !== offset)) conflicts.push(`${data} at ${was.epoch}/${was.offset} and ${epoch}/${offset}`)
    place.set(data, { epoch, offset })
  }
  for (const room of traffic.rooms) {
    const final = finals.get(room)!
    const history = await wholeHistory(http, room)
    t.equal(history.epoch, final.epoch, `${room}: history is of the final epoch`)
    t.same(history.messages.map((m) => m.offset), Array.from({ length: history.messages.length }, (_, k) => k + 1), `${room}: history holds offsets 1..${history.messages.length}, once each`)
    t.ok(history.messages.length >= final.offset, `${room}: history covers the final offset`)
    for (const m of history.messages) record(room, history.epoch, m.offset, m.data)
  }
  for (const member of traffic.members) for (const d of member.delivered) record(member.room, d.epoch, d.offset, d.data)
  t.same(conflicts, [], 'one offset is one message, and one message one offset, everywhere')

  const lost = [...traffic.acked].filter(([data]) => !place.has(data)).map(([data, { offset }]) => `${data}@${offset}`)
  if (ended === undefined) {
    t.same(lost, [], `no acked message is lost (${traffic.acked.size} acked, ${traffic.refused.size} refused)`)
  } else {
    // Found nowhere, so not in the final epoch (its history holds every offset): in the ended one.
    for (const data of lost) place.set(data.slice(0, data.lastIndexOf('@')), { epoch: ended, offset: Number(data.slice(data.lastIndexOf('@') + 1)) })
    for (const member of traffic.members) t.ok(member.gaps.some((g) => g.epoch === ended && g.before === null), `${member.name} was told epoch ${ended} ended`)
    t.comment(`acked, and lost with epoch ${ended}: ${lost.length > 0 ? lost.join(', ') : 'none'}`)
  }
  for (const [data, { offset }] of traffic.acked) {
    const where = place.get(data)
    if (where !== undefined && where.offset !== offset) conflicts.push(`${data} acked with ${offset}, stored at ${where.offset}`)
  }
  t.same(conflicts, [], 'each acked message sits at the offset its ack gave')

  // An epoch that ended (before: null) may have lost anything of it the member did not get.
  const covered = (member: Member, epoch: string, offset: number): boolean =>
    member.gaps.some((g) => g.epoch === epoch && (g.before === null || (g.after < offset && offset < g.before)))
  for (const member of traffic.members) {
    const final = finals.get(member.room)!
    const data = member.delivered.map((d) => d.data)
    t.equal(new Set(data).size, data.length, `${member.name}: nothing delivered twice`)
    const byEpoch = new Map<string, number[]>()
    for (const d of member.delivered) byEpoch.set(d.epoch, [...(byEpoch.get(d.epoch) ?? []), d.offset])
    for (const [epoch, offsets] of byEpoch) t.ok(offsets.every((o, k) => k === 0 || o > offsets[k - 1]!), `${member.name}: offsets of epoch ${epoch} increase`)
    const got = new Set(data)
    const missed: string[] = []
    for (const [message, { room, offset }] of traffic.acked) {
      if (room !== member.room || got.has(message)) continue
      const where = place.get(message)
      if (where === undefined || !covered(member, where.epoch, offset)) missed.push(`${message}@${where?.epoch ?? '?'}/${offset}`)
    }
    t.same(missed, [], `${member.name}: every acked message reached it or sits in a gap it was told of`)
    const inFinal = new Set(member.delivered.filter((d) => d.epoch === final.epoch).map((d) => d.offset))
    const holes: number[] = []
    for (let o = 1; o <= final.offset; o++) if (!inFinal.has(o) && !covered(member, final.epoch, o)) holes.push(o)
    t.same(holes, [], `${member.name}: every offset of the final epoch reached it or sits in a gap it was told of`)
  }
  return traffic.members.flatMap((m) => m.gaps)
}

/** An app instance in its own process on the cluster, so it can be killed or paused for real. */
async function clusterInstance (t: Test, c: RedisCluster, prefix: string, leaseMs: number): Promise<{ child: ChildProcess, wsUrl: string }> {
  return await childInstance(t, { REDIS_CLUSTER: JSON.stringify(c.seeds), KEY_PREFIX: prefix, LEASE_MS: String(leaseMs) })
}

t.test('Redis Cluster faults', { skip: skipCluster }, async (t) => {
  const c = await startCluster(t)
  const inspect = new Cluster(c.seeds)
  t.teardown(() => inspect.disconnect())

  t.test('layout: every key of a room in its slot, one shard connection per master per instance, an exact listing from any instance', async (t) => {
    const { prefix, partitions: parts, nodes: [a, b] } = await deploy(t, c, { historySize: 10 }) as Deployed & { nodes: [Started, Started] }
    const byShard = await roomsOnEveryShard(c, parts, 'lay:', 3)
    const rooms = byShard.flat()
    const ada = await TestSocket.open(a.wsUrl)
    const bob = await TestSocket.open(b.wsUrl)
    t.teardown(() => Promise.all([ada.close(), bob.close()]))
    for (const [i, room] of rooms.entries()) {
      await ada.join(room)
      if (i % 2 === 0) await bob.join(room)
      await (i % 2 === 0 ? bob : ada).request({ type: 'publish', room, data: i })
    }
    // A room with history and no members, published to by the server.
    await a.app.rooms.broadcast('lay:quiet', 'kept')
    await ada.request({ type: 'leave', room: rooms[0]! })

    // Every key of the app, on whichever master holds it.
    const all = await masters(c)
    const global = `${prefix}{global}`
    const bases = new Set([...parts.bases, global])
    const misplaced: string[] = []
    let keys = 0
    for (const master of all) {
      let cursor = '0'
      do {
        const [next, found] = await c.node(master.port).scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
        cursor = next
        for (const key of found) {
          keys++
          const base = key.slice(0, key.indexOf('}') + 1)
          const slot = Number(await c.node(master.port).call('CLUSTER', 'KEYSLOT', key))
          // Redis's own answer (CLUSTER KEYSLOT) against the slot the adapter routes the partition's calls to.
          const routed = base === global ? slotOf(global) : parts.slot(base)
          if (!bases.has(base)) misplaced.push(`${key}: no partition's hash tag`)
          else if (slot !== routed) misplaced.push(`${key}: slot ${slot}, its partition's calls go to ${routed}`)
          if (!serves(master, slot)) misplaced.push(`${key}: on ${master.port}, which does not serve slot ${slot}`)
          const room = /^r:(.*):[a-z]+$/.exec(key.slice(base.length))?.[1]
          if (room !== undefined && parts.base(room) !== base) misplaced.push(`${key}: not in room ${room}'s partition ${parts.base(room)}`)
        }
      } while (cursor !== '0')
    }
    t.same(misplaced, [], `${keys} keys, each in its room's (or partition's) slot`)
    for (const room of [...rooms, 'lay:quiet']) {
      t.equal(await inspect.exists(`${parts.base(room)}r:${room}:hist`), 1, `${room}'s history is under its partition's tag`)
    }
    t.equal(await inspect.exists(`${parts.base(rooms[1]!)}r:${rooms[1]}:members`), 1, 'so are its members')

    // Each room's channel is subscribed on the master of its slot, by each instance with members there.
    for (const [i, room] of rooms.entries()) {
      const owner = all.find((m) => serves(m, slotOfRoom(parts, room)))!
      const [, subscribers] = await c.node(owner.port).call('PUBSUB', 'SHARDNUMSUB', `${parts.base(room)}c:${room}`) as [string, number]
      // rooms[0]: ada left, bob is there; odd rooms: ada alone; even rooms: both.
      t.equal(subscribers, i === 0 || i % 2 === 1 ? 1 : 2, `${room}'s channel on its shard's master`)
    }

    // Each instance's own channel (direct frames, commands for its connections) is a shard channel too, and so is `all`.
    for (const socket of [ada, bob]) {
      const channel = `${prefix}{n:${nodeOf(socket)}}`
      const owner = all.find((m) => serves(m, slotOf(channel)))!
      t.same(await c.node(owner.port).call('PUBSUB', 'SHARDNUMSUB', channel), [channel, 1], `${channel} on its shard's master`)
    }
    const everyone = `${prefix}{all}`
    t.same(await c.node(all.find((m) => serves(m, slotOf(everyone)))!.port).call('PUBSUB', 'SHARDNUMSUB', everyone), [everyone, 2], `${everyone}: both instances`)

    // One shard subscriber connection per master per instance, whatever the number of rooms; none on replicas.
    const replicas = (await c.nodes()).filter((n) => n.role === 'replica')
    for (const socket of [ada, bob]) {
      const name = `fastify-rooms:${nodeOf(socket)}:shard`
      for (const master of all) t.equal((await clientsNamed(c.node(master.port), name)).length, 1, `${name} on master ${master.port}`)
      for (const replica of replicas) t.equal((await clientsNamed(c.node(replica.port), name)).length, 0, `no ${name} on replica ${replica.port}`)
    }

    // The listing: exact across partitions, paged, with a prefix, the same from either instance.
    const counts = new Map<string, number>()
    for (const [i, room] of rooms.entries()) counts.set(room, i === 0 ? 1 : i % 2 === 0 ? 2 : 1)
    const child = await clusterInstance(t, c, prefix, 10_000)
    const carl = await TestSocket.open(child.wsUrl)
    t.teardown(() => carl.close())
    for (const room of [rooms[1]!, 'lay:carl']) {
      await carl.join(room)
      counts.set(room, (counts.get(room) ?? 0) + 1)
    }
    await carl.join('other:carl')
    const expected = [...counts].sort(([x], [y]) => Buffer.compare(Buffer.from(x), Buffer.from(y))).map(([name, count]) => ({ name, count }))
    // The third instance cannot answer anything while stopped: the listing needs only Redis.
    child.child.kill('SIGSTOP')
    try {
      for (const node of [a, b]) {
        const pages: Array<Array<{ name: string, count: number }>> = []
        let after: string | null = ''
        while (after !== null) {
          const page: { rooms: Array<{ name: string, count: number }>, next: string | null } = await json(`${node.url}/rooms?prefix=lay:&limit=4${after === '' ? '' : `&after=${encodeURIComponent(after)}`}`)
          pages.push(page.rooms)
          after = page.next
        }
        t.same(pages.flat(), expected, `${node.url}: every room under the prefix, once, sorted, with exact counts`)
        t.ok(pages.slice(0, -1).every((p) => p.length === 4), 'full pages until the last')
        t.same(await json(`${node.url}/rooms?prefix=other:`), { rooms: [{ name: 'other:carl', count: 1 }], next: null })
        t.same((await json(`${node.url}/rooms?limit=1000`)).rooms.map((r: { name: string }) => r.name), [...expected.map((r) => r.name), 'other:carl'], 'no prefix: every room of the app')
      }
    } finally {
      child.child.kill('SIGCONT')
    }
  })

  t.test('the publishes of one turn take one script call per partition they touch, each room in order with its own offsets', async (t) => {
    const { partitions: parts, nodes: [a, b] } = await deploy(t, c, { historySize: 10, leaseMs: 600_000 }) as Deployed & { nodes: [Started, Started] }
    // Two partitions on two masters, three rooms each.
    const all = await masters(c)
    const first = parts.bases.find((base) => serves(all[0]!, parts.slot(base)))!
    const second = parts.bases.find((base) => serves(all[1]!, parts.slot(base)))!
    const rooms = [...roomsIn(parts, first, 'turn', 3), ...roomsIn(parts, second, 'turn', 3)]
    const bob = await TestSocket.open(b.wsUrl)
    t.teardown(() => bob.close())
    for (const room of rooms) await bob.join(room)
    // Script calls on each master: EVAL too, as ioredis sends a script's first call on a connection.
    const calls = async (): Promise<number[]> => await Promise.all(all.map(async (m) => {
      const text = await c.node(m.port).info('commandstats')
      let n = 0
      for (const match of text.matchAll(/^cmdstat_(?:evalsha|eval):calls=(\d+)/gm)) n += Number(match[1])
      return n
    }))
    const before = await calls()
    // Called in one turn of the instance's event loop: the rooms interleaved.
    const sent = Array.from({ length: 4 * rooms.length }, (_, i) => ({ room: rooms[i % rooms.length]!, data: i }))
    const offsets = await Promise.all(sent.map(async ({ room, data }) => await a.app.rooms.broadcast(room, data)))
    const after = await calls()
    t.same(after.map((n, i) => n - before[i]!), [1, 1, 0], 'one script call on each of the two masters, none on the third')
    for (const room of rooms) {
      const mine = sent.flatMap((p, i) => p.room === room ? [{ ...p, offset: offsets[i] }] : [])
      t.same(mine.map((p) => p.offset), [1, 2, 3, 4], `${room}: offsets in publish order`)
      await bob.next((f) => f.type === 'message' && f.room === room && f.offset === 4, `${room}'s last message`)
      t.same(bob.frames.filter((f) => f.type === 'message' && f.room === room).map((f) => f.data), mine.map((p) => p.data), `${room}: bob got every message once, in order`)
    }
  })

  t.test('history budgets hold per partition', async (t) => {
    /** Rooms x0, x1, x2 share partition 0; y0 is alone in partition 1. */
    const setup = async (options: DeployOptions): Promise<{ nodes: Started[], x: string[], y: string, parts: Partitions }> => {
      const { nodes, partitions: parts } = await deploy(t, c, { partitions: 2, historySize: 10, ...options })
      const [first, second] = parts.bases as [string, string]
      return { nodes, x: roomsIn(parts, first, 'x', 3), y: roomsIn(parts, second, 'y', 1)[0]!, parts }
    }
    const kept = async (node: Started, room: string): Promise<number> => {
      const res = await fetch(`${node.url}/rooms/${room}/messages`)
      return res.status === 404 ? 0 : (await res.json()).messages.length
    }

    t.test('maxHistoryRooms: each partition keeps its share of the rooms', async (t) => {
      const { nodes: [a, b], x, y, parts } = await setup({ maxHistoryRooms: 4 }) as Awaited<ReturnType<typeof setup>> & { nodes: [Started, Started] }
      // Two rooms per partition: the third room of partition 0 evicts its least recently published.
      await a.app.rooms.broadcast(x[0]!, 'x0')
      await b.app.rooms.broadcast(x[1]!, 'x1')
      await a.app.rooms.broadcast(y, 'y0')
      await b.app.rooms.broadcast(x[2]!, 'x2')
      t.same(await Promise.all([x[0]!, x[1]!, x[2]!, y].map(async (room) => await kept(a, room))), [0, 1, 1, 1], 'x0 evicted, though the four rooms are within the total of 4')
      for (const base of parts.bases) t.ok(await inspect.zcard(`${base}history`) <= 2, `${base} holds at most 2 rooms`)
    })

    t.test('maxHistoryRooms below the partition count: each partition keeps at least one room', async (t) => {
      const { nodes: [a, b], x, y } = await setup({ maxHistoryRooms: 1 }) as Awaited<ReturnType<typeof setup>> & { nodes: [Started, Started] }
      await a.app.rooms.broadcast(x[0]!, 'x0')
      await b.app.rooms.broadcast(y, 'y0')
      await a.app.rooms.broadcast(x[1]!, 'x1')
      t.same(await Promise.all([x[0]!, x[1]!, y].map(async (room) => await kept(b, room))), [0, 1, 1])
    })

    t.test('maxHistoryBytes: each partition keeps its share of the bytes', async (t) => {
      // Frames of about 280 bytes: a partition's 600 hold two of them, not three.
      const { nodes: [a, b], x, y, parts } = await setup({ maxHistoryBytes: 1200 }) as Awaited<ReturnType<typeof setup>> & { nodes: [Started, Started] }
      const data = 'd'.repeat(200)
      await a.app.rooms.broadcast(x[0]!, data)
      await b.app.rooms.broadcast(x[1]!, data)
      await a.app.rooms.broadcast(y, data)
      await b.app.rooms.broadcast(x[2]!, data)
      t.same(await Promise.all([x[0]!, x[1]!, x[2]!, y].map(async (room) => await kept(a, room))), [0, 1, 1, 1], 'x0 evicted, though the four frames fit in the total')
      for (const base of parts.bases) t.ok(Number(await inspect.hget(`${base}history:bytes`, '#')) <= 600, `${base} holds at most 600 bytes`)
    })
  })

  t.test('a dead instance is reaped: its members leave, with presence, within the lease bound', async (t) => {
    const { prefix, partitions: parts, nodes: [a] } = await deploy(t, c, { leaseMs: 1000 }, 1) as Deployed & { nodes: [Started] }
    const rooms = (await roomsOnEveryShard(c, parts, 'reap:', 1)).flat()
    const { child, wsUrl } = await clusterInstance(t, c, prefix, 1000)
    const watcher = await TestSocket.open(a.wsUrl)
    t.teardown(() => watcher.close())
    const doomed = await TestSocket.open(wsUrl)
    for (const room of rooms) {
      await watcher.join(room)
      await doomed.join(room)
      await watcher.next((f) => f.type === 'presence' && f.room === room && f.joins.length > 0)
    }
    const killedAt = Date.now()
    const exited = once(child, 'exit')
    child.kill('SIGKILL')
    await exited
    for (const room of rooms) {
      t.match(await watcher.next((f) => f.type === 'presence' && f.room === room && f.leaves.length > 0), { leaves: [{ id: doomed.welcome.user.id }], count: 1 }, `${room}: a presence leave`)
    }
    const took = Date.now() - killedAt
    // The guarantee is lease + one reap interval (1.5 s here); the margin is for a loaded machine.
    t.ok(took < 3000, `every room's leave ${took} ms after the kill (lease 1000 ms, reaped every 500 ms)`)
    for (const room of rooms) t.equal((await a.app.rooms.get(room))?.count, 1, `${room}: only the watcher is left`)
    await eventually(async () => await inspect.zcard(`${prefix}{global}nodes`), (n) => n === 1, 'the dead instance\'s lease is gone')
  })

  t.test('an instance that comes back while it is being reaped registers no member until the reaping is done', async (t) => {
    // Long leases: no timer of these instances renews or reaps during the test, so each step below is driven by the test.
    const logs = new Logs()
    const { prefix, partitions: parts, nodes: [x, w] } = await deploy(t, c, { leaseMs: 60_000, server: (i) => i === 0 ? logs.options('debug') : {} }) as Deployed & { nodes: [Started, Started] }
    const room = (await roomsOnEveryShard(c, parts, 'back:', 1))[0]![0]!
    const watcher = await TestSocket.open(w.wsUrl)
    const member = await TestSocket.open(x.wsUrl)
    t.teardown(() => Promise.all([watcher.close(), member.close()]))
    await watcher.join(room)
    await member.join(room)
    await watcher.next((f) => f.type === 'presence' && f.joins.length > 0)
    const node = nodeOf(member)
    const leases = `${prefix}{global}nodes`

    /**
     * Drop the instance's shard subscriber connection that carries its own
     * channel: the whole instance resynchronises, renewing its lease first
     * (a shard carrying only rooms would resync those rooms alone). One
     * connection, so one recovery follows, and its log line is the one to wait for.
     */
    const jolt = async (): Promise<void> => {
      const master = await c.ownerOf(`${prefix}{n:${node}}`)
      const id = (await clientsNamed(c.node(master.port), `fastify-rooms:${node}:shard`))[0]?.id
      if (id === undefined) return void t.fail(`${node} has no shard connection to ${master.port}`)
      t.equal(await c.node(master.port).call('CLIENT', 'KILL', 'ID', id), 1, `dropped the shard connection of ${node} to ${master.port}`)
    }

    // What a reaper leaves when it stops half way (its first step, for a lease it found expired): the lease marked.
    await inspect.zadd(leases, -1, node)
    await jolt()
    t.equal((await member.closed).code, 1012, 'the instance learnt it was reaped and closed its member, to rejoin')
    t.match(await watcher.next((f) => f.type === 'presence'), { leaves: [{ id: member.welcome.user.id }], count: 1 })
    const refused = await logs.next(/redis recovery failed/)
    t.equal(refused.err?.code, 'UNAVAILABLE', 'its renewal answered WAIT: the reaping is not done')
    const back = await TestSocket.open(x.wsUrl)
    t.teardown(() => back.close())
    t.match(await back.join(room), { type: 'error', code: 'UNAVAILABLE' }, 'no member registers while the reaping is not done')
    t.equal(await inspect.zscore(leases, node), '-1', 'still marked')
    t.equal((await w.app.rooms.get(room))?.count, 1)

    // Another instance's reaper finishes the reaping: every partition forgets the instance, then its lease goes.
    await startApp(t, { adapter: redisAdapter({ cluster: c.seeds, keyPrefix: prefix, leaseMs: 400 }) })
    await eventually(async () => await inspect.zscore(leases, node), (score) => score === null, 'the reaping is done')
    await jolt()
    await logs.next(/the link to Redis is back/)
    t.match(await back.join(room), { type: 'joined', count: 2 }, 'once the reaping is done, the instance registers members again')
    t.match(await watcher.next((f) => f.type === 'presence'), { joins: [{ id: back.welcome.user.id }], count: 2 })
    t.ok(Number(await inspect.zscore(leases, node)) > 0, 'with a live lease')
  })

  t.test('a master killed mid-traffic: nothing acked is lost, nothing is delivered twice', async (t) => {
    const { partitions: parts, nodes: [a, b] } = await deploy(t, c, { historySize: 5000 }) as Deployed & { nodes: [Started, Started] }
    const byShard = await roomsOnEveryShard(c, parts, 'kill:', 2)
    const traffic = new Traffic()
    for (const room of byShard.flat()) {
      await traffic.add(t, a.wsUrl, room)
      await traffic.add(t, b.wsUrl, room)
    }
    const rooms = traffic.rooms
    traffic.start()
    await traffic.more(rooms, 10)
    const victims = byShard[0]!
    const killed = await c.killMaster(slotOfRoom(parts, victims[0]!))
    try {
      t.comment(`killed master ${killed.port}; ${killed.promoted.port} serves ${victims.join(', ')} now`)
      // Every room, those of the failed-over shard included, takes acked publishes again, and they reach the members.
      await traffic.more(rooms, 10)
      await traffic.stop()
      const gaps = await verify(t, traffic, a.url)
      t.comment(`${traffic.acked.size} acked, ${traffic.refused.size} refused, ${gaps.length} gaps`)
    } finally {
      // The later tests get a cluster with a replica for every master again.
      await traffic.stop().catch(() => {})
      await killed.restart()
    }
  })

  t.test('a replica that cannot confirm: publishes are not acked, and writes a failover then loses are reported, never replaced silently', async (t) => {
    const { prefix, partitions: parts, nodes: [a, b] } = await deploy(t, c, { historySize: 5000 }) as Deployed & { nodes: [Started, Started] }
    // Not on the leases' shard: the instances keep their leases through the outage.
    const shard = (await masters(c)).findIndex((m) => !serves(m, slotOf(`${prefix}{global}`)))
    const room = (await roomsOnEveryShard(c, parts, 'lag:', 1))[shard]![0]!
    const slot = slotOfRoom(parts, room)
    const traffic = new Traffic()
    await traffic.add(t, a.wsUrl, room)
    await traffic.add(t, b.wsUrl, room)
    const probe = await TestSocket.open(a.wsUrl)
    t.teardown(() => probe.close())
    const { epoch } = await probe.join(room)
    const master = await c.ownerOf(slot)
    const replica = (await c.nodes()).find((n) => n.masterOf === master.id)!
    traffic.start()
    await traffic.more([room], 5)
    // The replica stops applying what its master sends (its clients are paused, the link to its master with them),
    // for longer than the failover below takes: it is promoted without the writes since.
    await c.node(replica.port).call('CLIENT', 'PAUSE', 8000, 'ALL')
    t.match(await probe.request({ type: 'publish', room, data: 'unconfirmed' }), { type: 'error', code: 'INTERNAL', message: /may or may not have been published/ }, 'no ack for a write only the master holds')
    // The master dies with writes its replica never got: they were delivered, and are lost.
    const killed = await c.killMaster(slot)
    try {
      t.equal(killed.promoted.port, replica.port)
      // New writes on the promoted replica take the lost writes' offsets again.
      await traffic.more([room], 10)
      await traffic.stop()
      t.not((await json(`${b.url}/rooms/${room}`)).epoch, epoch, 'the room started a new epoch')
      // Acks the promoted replica gave in the old epoch before an instance noticed the lost writes go with that epoch.
      await verify(t, traffic, b.url, epoch)
      t.comment(`${traffic.acked.size} acked, ${traffic.refused.size} refused`)
    } finally {
      await traffic.stop().catch(() => {})
      await killed.restart()
    }
  })

  /**
   * A write the master delivered, lost in a failover (its replica was paused
   * so that it never got it), then its offset taken again by a new write on
   * the promoted replica before any instance looked at the room again. With
   * `reaped`, the instances also find, when they are back, that their leases
   * were reaped meanwhile (the lease removed, as a finished reaping leaves it).
   */
  const reusedOffset = (name: string, reaped: boolean): void => {
    t.test(name, async (t) => {
      const logs = new Logs()
      // Leases long enough that no timer renews or reaps during the test.
      const { prefix, partitions: parts, nodes: [a, b] } = await deploy(t, c, { leaseMs: 120_000, server: (i) => i === 0 ? logs.options() : {} }) as Deployed & { nodes: [Started, Started] }
      // A third instance with no member: its publishes are not held by any resynchronisation of its own.
      // Its calls may wait on a paused node for long, and must not be cut off meanwhile.
      const publisher = await startApp(t, { adapter: redisAdapter({ cluster: c.seeds, keyPrefix: prefix, leaseMs: 120_000, commandTimeoutMs: 30_000 }) })
      // The leases stay reachable: the room is on another shard than theirs.
      const leases = `${prefix}{global}nodes`
      const all = await masters(c)
      const view = await c.nodes()
      const shard = all.findIndex((m) => !serves(m, slotOf(leases)))
      const room = (await roomsOnEveryShard(c, parts, 'reuse:', 1))[shard]![0]!
      const ada = await TestSocket.open(a.wsUrl)
      const bob = await TestSocket.open(b.wsUrl)
      t.teardown(() => Promise.all([ada.close(), bob.close()]))
      const { epoch } = await ada.join(room)
      await bob.join(room)
      t.match(await ada.request({ type: 'publish', room, data: 'kept' }), { type: 'ack', offset: 1 })
      t.match(await bob.request({ type: 'publish', room, data: 'kept too' }), { type: 'ack', offset: 2 })
      const master = all[shard]!
      const replica = view.find((n) => n.masterOf === master.id)!
      const other = view.find((n) => n.port !== master.port && n.port !== replica.port)!
      // Paused for longer than the failover takes: the replica is promoted without what its master got since.
      await c.node(replica.port).call('CLIENT', 'PAUSE', 10_000, 'ALL')
      t.match(await ada.request({ type: 'publish', room, data: 'lost' }), { type: 'error', code: 'INTERNAL', message: /may or may not have been published/ })
      for (const socket of [ada, bob]) t.match(await socket.next((f) => f.type === 'message' && f.data === 'lost'), { offset: 3 }, 'delivered by the master')
      // Settles once the replica answers again: the promotion happens before, while it is paused.
      const killing = c.killMaster(slotOfRoom(parts, room))
      killing.catch(() => {})
      if (reaped) for (const socket of [ada, bob]) await inspect.zrem(leases, nodeOf(socket))
      await eventually(async () => String(await c.node(other.port).call('CLUSTER', 'NODES')), (view) => view.split('\n').some((line) => line.includes(`:${replica.port}@`) && line.includes('master') && !line.includes('slave')), 'the paused replica is promoted')
      // Queued on the promoted replica while it is paused, so it runs before any instance can look at the room again.
      t.equal(await publisher.app.rooms.broadcast(room, 'reuses its offset'), 3, 'the promoted replica never had offset 3: a new write takes it')
      const killed = await killing
      t.teardown(async () => await killed.restart())
      await publisher.app.rooms.broadcast(room, 'after')
      for (const socket of [ada, bob]) {
        const outcome = await Promise.race([
          socket.closed.then((close) => `closed ${close.code}`),
          socket.next((f) => f.type === 'message' && (f.offset ?? 0) > 3).then((f) => `got ${JSON.stringify(f.data)} at ${f.offset}, never "reuses its offset"`)
        ])
        t.equal(outcome, 'closed 1012', 'the member is closed to rejoin, not silently given offset 4 without the message at 3')
      }
      // The instance's own recovery, or its rooms' alone when the shard carried none of its own channels.
      await logs.next(/the link to Redis is back|rooms of a broken shard subscription are resynchronised/)
      const back = await TestSocket.open(a.wsUrl)
      t.teardown(() => back.close())
      const rejoined = await back.join(room, { since: { offset: 3, epoch } })
      t.match(rejoined, { type: 'joined', recovered: false }, 'the rejoin does not pass for recovered')
      t.not(rejoined.epoch, epoch, 'the room started a new epoch')
    })
  }
  reusedOffset('a lost write whose offset a new write took again ends the epoch: no member is given another message under an offset it saw', false)
  reusedOffset('the same, when the instances find their leases reaped on their return', true)

  t.test('a slot migrated mid-traffic: nothing acked is lost, nothing is delivered twice, the subscriptions follow the slot', async (t) => {
    const { partitions: parts, nodes: [a, b] } = await deploy(t, c, { historySize: 5000 }) as Deployed & { nodes: [Started, Started] }
    const others = (await roomsOnEveryShard(c, parts, 'calm:', 1)).flat()
    const base = parts.base(others[0]!)
    const slot = parts.slot(base)
    const moving = roomsIn(parts, base, 'move:', 3)
    // Member-less rooms with history in the slot, so its keys move in several MIGRATE batches.
    for (const room of roomsIn(parts, base, 'filler:', 40)) await a.app.rooms.broadcast(room, 'filler')
    const traffic = new Traffic()
    for (const room of [...moving, ...others]) {
      await traffic.add(t, a.wsUrl, room)
      await traffic.add(t, b.wsUrl, room)
    }
    const rooms = traffic.rooms
    const source = await c.ownerOf(slot)
    const target = (await masters(c)).find((m) => m.id !== source.id)!
    const [fresh, freshToo] = roomsIn(parts, base, 'fresh:', 2) as [string, string]
    const ada = await TestSocket.open(a.wsUrl)
    t.teardown(() => ada.close())
    traffic.start()
    await traffic.more(rooms, 10)
    const during: Array<{ step: string, join: string, broadcast: string }> = []
    /** Half way: the publishers keep going, and a first join and a first publish in the slot get a clear answer. */
    const halfWay = async (step: string): Promise<void> => {
      const [joined, broadcast] = await Promise.all([
        ada.join(fresh),
        a.app.rooms.broadcast(freshToo, step).then(() => 'ok', (err: { code: string, message: string }) => err.code === 'INTERNAL' && /may or may not have been published/.test(err.message) ? 'unknown outcome' : err.code)
      ])
      during.push({ step, join: joined.type === 'joined' ? 'joined' : joined.code, broadcast })
      await traffic.more(moving, 2, true, `2 more publishes answered in each migrating room (${step})`)
    }
    await c.migrateSlot(slot, target.port, { opened: async () => await halfWay('opened'), keysMoved: async () => await halfWay('keysMoved') })
    t.comment(`moved slot ${slot} from ${source.port} to ${target.port}; during it: ${JSON.stringify(during)}`)
    for (const { step, join, broadcast } of during) {
      t.ok(join === 'joined' || join === 'UNAVAILABLE', `${step}: a join answers joined or UNAVAILABLE, not ${join}`)
      t.ok(broadcast === 'ok' || broadcast === 'UNAVAILABLE' || broadcast === 'unknown outcome', `${step}: a publish answers, is UNAVAILABLE, or is of unknown outcome, not ${broadcast}`)
    }
    // Messages published after the migration arrive: the rooms' subscriptions are on the new owner.
    await traffic.more(rooms, 10)
    await traffic.stop()
    const gaps = await verify(t, traffic, b.url)
    t.comment(`${traffic.acked.size} acked, ${traffic.refused.size} refused, ${gaps.length} gaps`)
    for (const room of moving) {
      const channel = `${base}c:${room}`
      await eventually(async () => await c.node(target.port).call('PUBSUB', 'SHARDNUMSUB', channel) as [string, number], ([, n]) => n === 2, `both instances subscribe to ${room} on the new owner`)
      t.same(await c.node(source.port).call('PUBSUB', 'SHARDNUMSUB', channel), [channel, 0], `${room}: nothing left on the old owner`)
    }
    // Nothing was half applied: the first join works now, and counts one member.
    t.match(await ada.join(fresh), { type: 'joined', count: 1 })
    t.match(await json(`${b.url}/rooms/${fresh}`), { count: 1 })
  })

  t.test('a leave refused while its slot migrates is done once the slot is served again: no member is left behind, its diff reaches every member, and later diffs count exactly', async (t) => {
    // Upkeep every second.
    const { partitions: parts, nodes: [a, b] } = await deploy(t, c, { leaseMs: 3000 }) as Deployed & { nodes: [Started, Started] }
    const room = (await roomsOnEveryShard(c, parts, 'leaving:', 1))[2]![0]!
    const slot = slotOfRoom(parts, room)
    const watcher = await TestSocket.open(b.wsUrl)
    // The only member of the room on its instance: once it left, that instance has nothing of the slot to resubscribe.
    const lone = await TestSocket.open(a.wsUrl)
    t.teardown(() => Promise.all([watcher.close(), lone.close()]))
    await watcher.join(room)
    await lone.join(room)
    await watcher.next((f) => f.type === 'presence' && f.joins.length > 0)
    const source = await c.ownerOf(slot)
    const target = (await masters(c)).find((m) => m.id !== source.id)!
    await c.migrateSlot(slot, target.port, {
      opened: async () => {
        t.match(await lone.request({ type: 'leave', room }), { type: 'left' }, 'left at once, on its instance')
      }
    })
    // The retried leave is done in Redis: the member is not left behind (REST reads Redis; nothing to await).
    for (const node of [a, b]) await eventually(async () => await json(`${node.url}/rooms/${room}`), (r) => r.count === 1, 'the room counts one member')
    // Its presence diff reaches the watcher: live, or, when it was published on the slot's new owner before the
    // watcher's instance resubscribed there, replayed from the room's presence log by the resync.
    t.match(await watcher.next((f) => f.type === 'presence' && f.leaves.some((m: { id: string }) => m.id === lone.welcome.user.id), 'the leave\'s presence diff'), { count: 1 })
    const next = await TestSocket.open(a.wsUrl)
    t.teardown(() => next.close())
    await next.join(room)
    t.match(await watcher.next((f) => f.type === 'presence' && f.joins.some((j: { id: string }) => j.id === next.welcome.user.id)), { count: 2 }, 'a later diff counts exactly')
  })

  t.test('the whole cluster restarted empty: members are closed 1012 and rejoin a new epoch; the app works on', async (t) => {
    const logs = [new Logs(), new Logs()]
    const { partitions: parts, nodes: [a, b] } = await deploy(t, c, { historySize: 100, server: (i) => logs[i]!.options() }) as Deployed & { nodes: [Started, Started] }
    const rooms = (await roomsOnEveryShard(c, parts, 'reset:', 1)).flat()
    const ada = await TestSocket.open(a.wsUrl)
    const bob = await TestSocket.open(b.wsUrl)
    const before = new Map<string, { epoch: string, offset: number }>()
    for (const room of rooms) {
      await ada.join(room)
      await bob.join(room)
      await ada.request({ type: 'publish', room, data: 'before' })
      const ack = await bob.request({ type: 'publish', room, data: 'before too' })
      before.set(room, { epoch: (await json(`${a.url}/rooms/${room}`)).epoch, offset: ack.offset })
    }
    // An SDK member too: it rejoins by itself and reports the gap.
    const client = await connect<string>(a.wsUrl, { WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 100 } })
    t.teardown(() => client.close())
    const handle = await client.join(rooms[0]!)
    // Guarded for the whole restart of the cluster below, not only the event.
    const sdkGap = nextEvent<Gap>((h) => handle.on('gap', h), undefined, { client, room: handle, what: "the SDK member's gap", ms: 120_000 })
    const caughtUp = nextEvent((h) => handle.on('message', h), (m: { data: unknown }) => m.data === 'after too', { client, room: handle, what: "the SDK member's 'after too'", ms: 120_000 })

    await c.restartEmpty()
    t.equal((await ada.closed).code, 1012, 'a member on one instance')
    t.equal((await bob.closed).code, 1012, 'and on the other')
    await Promise.all(logs.map(async (l) => await l.next(/the link to Redis is back/)))

    // Bob rejoins first and publishes into the new epoch; ada rejoins then and gets those messages.
    const bob2 = await TestSocket.open(b.wsUrl)
    const ada2 = await TestSocket.open(a.wsUrl)
    t.teardown(() => Promise.all([ada2.close(), bob2.close()]))
    const epochs = new Map<string, string>()
    for (const room of rooms) {
      const joined = await bob2.join(room, { since: before.get(room) })
      t.match(joined, { type: 'joined', recovered: false, offset: 0 }, `${room}: bob rejoins, not recovered`)
      t.not(joined.epoch, before.get(room)!.epoch, `${room}: a new epoch`)
      epochs.set(room, joined.epoch)
      t.match(await bob2.request({ type: 'publish', room, data: 'after' }), { type: 'ack', offset: 1 })
      t.match(await bob2.request({ type: 'publish', room, data: 'after too' }), { type: 'ack', offset: 2 })
    }
    for (const room of rooms) {
      t.match(await ada2.join(room, { since: before.get(room) }), { type: 'joined', recovered: false, epoch: epochs.get(room), offset: 2 }, `${room}: ada rejoins, not recovered`)
      // The epoch-change rule: every retained message of the new epoch follows.
      t.match(await ada2.next((f) => f.type === 'message' && f.room === room), { offset: 1, data: 'after' })
      t.match(await ada2.next((f) => f.type === 'message' && f.room === room), { offset: 2, data: 'after too' })
    }
    t.match(await sdkGap, { room: rooms[0], epoch: before.get(rooms[0]!)!.epoch, before: null, currentEpoch: epochs.get(rooms[0]!) }, 'the SDK client was told its old epoch ended')
    await caughtUp

    // The app works on: publish, join, listing.
    t.match(await ada2.request({ type: 'publish', room: rooms[1]!, data: 'live' }), { type: 'ack', offset: 3 })
    t.match(await bob2.next((f) => f.type === 'message' && f.data === 'live'), { room: rooms[1], offset: 3 })
    t.match(await ada2.join('reset:new'), { type: 'joined', count: 1, offset: 0 })
    const listed = await json(`${b.url}/rooms?prefix=reset:`)
    t.same(listed, { rooms: [...rooms.map((name) => ({ name, count: name === rooms[0] ? 3 : 2 })), { name: 'reset:new', count: 1 }].sort((x, y) => x.name < y.name ? -1 : 1), next: null })

    // The instances read the new cluster's layout before its replicas had any write, so it names none:
    // a publish still waits for the replica, and is not acked while the replica cannot confirm it.
    const owner = await c.ownerOf(slotOfRoom(parts, rooms[1]!))
    const replica = (await c.nodes()).find((n) => n.masterOf === owner.id)!
    await c.node(replica.port).call('CLIENT', 'PAUSE', 3000, 'ALL')
    t.match(await ada2.request({ type: 'publish', room: rooms[1]!, data: 'unconfirmed' }), { type: 'error', code: 'INTERNAL', message: /may or may not have been published/ }, 'no ack while the replica cannot confirm')
    await c.node(replica.port).call('CLIENT', 'UNPAUSE')
    t.match(await ada2.request({ type: 'publish', room: rooms[1]!, data: 'confirmed' }), { type: 'ack' }, 'acked once it can')
  })
})
