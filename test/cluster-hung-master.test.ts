import t, { type Test } from 'tap'
import { redisAdapter } from '../src/index.js'
import { Partitions } from '../src/adapters/partitions.js'
import { slotOf } from '../src/adapters/slot.js'
import { serves, skipCluster, startCluster, NODE_TIMEOUT_MS as FAILOVER_NODE_TIMEOUT_MS, type ClusterNodeInfo, type RedisCluster } from './helpers/cluster.js'
import { clientsNamed, eventually } from './helpers/redis.js'
import { logSink, type LogSink } from './helpers/log.js'
import { instanceBeside, nodeOf, sparedMaster } from './helpers/cluster-instance.js'
import { startApp, type Started } from './helpers/server.js'
import { TestSocket, type Frame } from './helpers/socket.js'

/**
 * plugin.md, "Redis Cluster": a master that stops answering without closing
 * its connections (a frozen process) costs an instance its connection to that
 * master only. Its calls settle after `commandTimeoutMs`, as for a broken
 * connection; rooms on the other masters go on as if nothing happened; and
 * once it answers again nothing it was sent is applied behind the instance's
 * back: a join answered UNAVAILABLE leaves nobody in the room, though the
 * frozen master may still hold it, unread, and run it when it thaws.
 */

/** Short, so the test does not wait long for the instance to give up on the frozen master. */
const COMMAND_TIMEOUT_MS = 1000
/**
 * Far longer than the freeze: the other masters never flag the frozen one as
 * failing, so no replica takes over and the cluster as a whole stays ok. What
 * is tested is the instance's side alone.
 */
const NODE_TIMEOUT_MS = 60_000
/** Room for a loaded 2-core machine on top of the bound: a guard against a hang, not a measure of speed. */
const MARGIN_MS = 4000

const ids = (info: { members: Array<{ id: string }> } | null): string[] => (info?.members ?? []).map((m) => m.id).sort()

interface Setup {
  c: RedisCluster
  /** The master to freeze. */
  victim: ClusterNodeInfo
  a: Started
  sink: LogSink
  /** The instance's partitions. */
  parts: Partitions
  /** `n` rooms whose slot `node` serves, named `name0`, `name1`... */
  on: (node: ClusterNodeInfo, name: string, n: number) => string[]
  /** SIGSTOP the victim; `thaw` (SIGCONT) is also run at teardown. */
  freeze: () => { thaw: () => void }
}

/**
 * A cluster, a master to freeze that carries none of the instance's own keys
 * and channels (with the leases or the instance's own channel on it, the
 * instance cannot work at all while it is frozen: plugin.md says so), and an
 * instance whose node channel is elsewhere (its node id is random: one whose
 * channel lands there is replaced).
 */
async function setup (t: Test, nodeTimeoutMs: number): Promise<Setup> {
  const c = await startCluster(t, { nodeTimeoutMs })
  const victim = await sparedMaster(c)
  const prefix = 'hung:'
  const parts = new Partitions(prefix, 64)
  const sink = logSink()
  const a = await instanceBeside(t, c, victim, { keyPrefix: prefix, commandTimeoutMs: COMMAND_TIMEOUT_MS }, sink)
  const on = (node: ClusterNodeInfo, name: string, n: number): string[] => {
    const rooms: string[] = []
    for (let i = 0; rooms.length < n; i++) if (serves(node, parts.slot(parts.base(`${name}${i}`)))) rooms.push(`${name}${i}`)
    return rooms
  }
  const freeze = (): { thaw: () => void } => {
    const pid = c.pid(victim.port)
    if (pid === undefined) throw new Error(`no process on ${victim.port}`)
    process.kill(pid, 'SIGSTOP')
    let thawed = false
    const thaw = (): void => {
      if (thawed) return
      thawed = true
      process.kill(pid, 'SIGCONT')
    }
    t.teardown(thaw)
    return { thaw }
  }
  return { c, victim, a, sink, parts, on, freeze }
}

const lostTheLink = (sink: LogSink): boolean => sink.lines.some((line) => /lost the link to Redis/.test(line.msg))

t.test('a frozen master costs the instance its calls to that master only', { skip: skipCluster }, async (t) => {
  const { c, victim, a, sink, parts, on, freeze } = await setup(t, NODE_TIMEOUT_MS)
  const other = (await c.nodes()).find((m) => m.role === 'master' && m.port !== victim.port && !serves(m, slotOf('{global}')))!
  const [frozen, refused] = on(victim, 'frozen', 2) as [string, string]
  const [live, fresh] = on(other, 'live', 2) as [string, string]
  // On the frozen master too, in another partition than `frozen`: its publishes do not wait for ada's.
  const flooded = on(victim, 'flooded', 20).find((room) => parts.base(room) !== parts.base(frozen))!
  const [ada, bob, cy, dee, eve] = await Promise.all([0, 1, 2, 3, 4].map(async () => await TestSocket.open(a.wsUrl))) as [TestSocket, TestSocket, TestSocket, TestSocket, TestSocket]
  t.teardown(async () => await Promise.all([ada, bob, cy, dee, eve].map(async (s) => await s.close())))
  for (const room of [frozen, live]) t.match(await ada.join(room), { type: 'joined', count: 1 })
  t.match(await bob.join(live), { type: 'joined', count: 2 })
  t.match(await ada.request({ type: 'publish', room: frozen, data: 'before' }), { type: 'ack', offset: 1 })

  const { thaw } = freeze()
  const stopped = performance.now()
  // All wait on the frozen master: a publish and a join in a room the instance listens to (their script calls are
  // sent to it), and a join into a room it does not listen to yet (its subscription is).
  const stuck = ada.request({ type: 'publish', room: frozen, data: 'stuck' }, COMMAND_TIMEOUT_MS * 4 + MARGIN_MS)
  const entering = eve.request({ type: 'join', room: frozen }, COMMAND_TIMEOUT_MS * 4 + MARGIN_MS)
  const joining = cy.request({ type: 'join', room: refused }, COMMAND_TIMEOUT_MS * 4 + MARGIN_MS)
  // Server publishes, more than four script calls' worth (256 a call): they wait for the partition's call in flight
  // and are refused with it, not sent one full call after another, each waiting as long again.
  const flood = Promise.all(Array.from({ length: 1100 }, async (_, i) => await a.app.rooms.broadcast(flooded, `flood ${i}`).then(
    () => 'acked', (err: { code: string, message: string }) => err.code === 'INTERNAL' && /may or may not have been published/.test(err.message) ? 'unknown outcome' : err.code)))
    .then((outcomes) => ({ outcomes, waited: performance.now() - stopped }))
  const answer = await stuck
  const waited = performance.now() - stopped
  t.match(answer, { type: 'error', code: 'INTERNAL', message: /may or may not have been published/ }, 'the publish on the frozen master is answered as one that may have run')
  t.ok(waited < COMMAND_TIMEOUT_MS * 2 + MARGIN_MS, `after about commandTimeoutMs: ${Math.round(waited)} ms`)
  t.match(await entering, { type: 'error', code: 'UNAVAILABLE', room: frozen }, 'the join sent to the frozen master answers UNAVAILABLE')
  t.match(await joining, { type: 'error', code: 'UNAVAILABLE', room: refused }, 'the join whose subscription waits on the frozen master answers UNAVAILABLE')
  const { outcomes, waited: floodWaited } = await flood
  t.same([...new Set(outcomes)].filter((o) => o !== 'UNAVAILABLE' && o !== 'unknown outcome'), [], 'the server publishes are refused, or of unknown outcome')
  t.ok(floodWaited < COMMAND_TIMEOUT_MS * 2 + MARGIN_MS, `all ${outcomes.length} answered about as soon as one: ${Math.round(floodWaited)} ms`)

  // The rest of the cluster is untouched: joins, publishes and deliveries in rooms on the other masters.
  t.match(await dee.join(fresh), { type: 'joined', room: fresh, count: 1 }, 'a join into a new room on another master')
  t.match(await dee.join(live), { type: 'joined', room: live, count: 3 }, 'a join into a busy room on another master')
  const during = await bob.request({ type: 'publish', room: live, data: 'during' })
  t.match(during, { type: 'ack', offset: 1 }, 'a publish on another master is acked')
  t.match(await ada.next((f) => f.type === 'message' && f.room === live, 'the message on the other master'), { data: 'during', offset: 1 })
  t.notOk(lostTheLink(sink), 'the instance never took its whole link to the cluster for lost')
  t.equal(ada.closedWith, undefined, 'the member of both rooms was not disconnected')
  t.ok(performance.now() - stopped >= COMMAND_TIMEOUT_MS, 'all of it while the master was still frozen')
  t.comment(`the master was frozen for ${Math.round(performance.now() - stopped)} ms`)
  thaw()

  // Once it answers again: the frozen master's rooms work, and its store says who is really in them.
  let tries = 0
  const after = await eventually(async () => await ada.request({ type: 'publish', room: frozen, data: `after ${++tries}` }), (f) => f.type === 'ack', 'a publish in the thawed master\'s room is acked')
  const acked = ['before', `after ${tries}`]
  // A server publish numbered after every flood publish the thawed master ran: only those of unknown outcome may have run.
  const unknown = outcomes.filter((o) => o === 'unknown outcome').length
  const next = await a.app.rooms.broadcast(flooded, 'after the flood') as number
  t.ok(next - 1 <= unknown, `no flood publish refused UNAVAILABLE was applied: ${next - 1} applied, ${unknown} of unknown outcome`)
  t.match(await ada.next((f) => f.type === 'message' && f.room === frozen && f.data === acked[1], `"${acked[1]}" in the thawed room`), { offset: after.offset })
  const delivered = ada.frames.filter((f) => f.type === 'message' && f.room === frozen).map((f) => f.data)
  t.same(delivered.filter((d) => acked.includes(d)), acked, 'every acked message once, in order')
  t.equal(new Set(delivered).size, delivered.length, `nothing twice: ${JSON.stringify(delivered)}`)
  // The undo of eve's join may be owed until the master answers again: it is done by the instance's next rounds.
  t.same(await eventually(async () => ids(await a.app.rooms.get(frozen)), (members) => members.length === 1, `only ada in ${frozen}`, 20_000), [ada.welcome.user.id], `${frozen}: its member throughout, not eve, whose join was sent to the master while it was frozen`)
  t.same(ids(await a.app.rooms.get(refused)), [], `${refused}: nobody`)
  t.match(await cy.join(refused), { type: 'joined', count: 1 }, 'the refused member joins now')
  t.match(await eve.join(frozen), { type: 'joined', count: 2 }, 'and so does the other')
  t.same(ids(await a.app.rooms.get(live)), [ada.welcome.user.id, bob.welcome.user.id, dee.welcome.user.id].sort())
})

t.test('a frozen master that its replica replaces: the instance never breaks its whole link, and nothing acked is lost', { skip: skipCluster }, async (t) => {
  // The cluster's short node timeout: the replica takes over a second or two after the freeze, while the
  // instance's calls to the frozen master still wait, and its connections to that master are still being closed.
  const { c, victim, a, sink, parts, on, freeze } = await setup(t, FAILOVER_NODE_TIMEOUT_MS)
  const [room] = on(victim, 'frozen', 1) as [string]
  const slot = parts.slot(parts.base(room))
  const ada = await TestSocket.open(a.wsUrl)
  t.teardown(async () => await ada.close())
  t.match(await ada.join(room), { type: 'joined', count: 1 })
  freeze()
  // A publish every 100 ms while the replica takes over, and until one made after that is acked.
  const answers: Array<Promise<{ data: string, frame: Frame }>> = []
  let replaced = false
  let ackedAfter = false
  // ownerOf throws while nobody serves the slot (the victim flagged failing, its replica not yet promoted).
  const owner = async (): Promise<number | undefined> => await c.ownerOf(slot).then((node) => node.port, () => undefined)
  const watching = eventually(owner, (port) => port !== undefined && port !== victim.port, `a replica serves slot ${slot}`, 30_000).then(() => { replaced = true })
  watching.catch(() => {})
  for (let i = 0; !ackedAfter; i++) {
    if (i > 600) {
      const seen = await Promise.all(answers.slice(-5))
      throw new Error(`no publish was acked within a minute of the freeze (replica serving: ${String(replaced)}; last answers: ${JSON.stringify(seen).slice(0, 600)})`)
    }
    const after = replaced
    const data = `p${i}`
    answers.push(ada.request({ type: 'publish', room, data }, 30_000).then((frame) => {
      if (after && frame.type === 'ack') ackedAfter = true
      return { data, frame }
    }))
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  await watching
  const all = await Promise.all(answers)
  const acked = all.filter(({ frame }) => frame.type === 'ack')
  const odd = all.filter(({ frame }) => frame.type !== 'ack' && !(frame.type === 'error' && (frame.code === 'UNAVAILABLE' || /may or may not/.test(frame.message))))
  t.same(odd, [], 'every publish is acked, refused UNAVAILABLE, or answered as one that may have run')
  t.comment(`${all.length} publishes: ${acked.length} acked, ${all.length - acked.length} not`)
  t.notOk(lostTheLink(sink), 'the instance never took its whole link to the cluster for lost')
  const stored = (await a.app.rooms.history(room))?.messages.map((m) => [JSON.parse(m.frame).data, m.offset]) ?? []
  t.same(acked.map(({ data, frame }) => [data, frame.offset]).filter(([data, offset]) => !stored.some((m) => m[0] === data && m[1] === offset)), [], 'every acked message is stored at its offset')
  t.same(acked.filter(({ frame }, k) => k > 0 && (frame.offset as number) < (acked[k - 1]!.frame.offset as number)), [], 'acked offsets increase in the order the publishes were made')
  // Once the instance resynchronises the room from the promoted replica, it may find that the room's state moved
  // on without it and close its members to rejoin (1012, the contract's answer), rather than go on with a gap.
  const last = acked.at(-1)!
  const outcome = await Promise.race([
    ada.next((f) => f.type === 'message' && f.data === last.data, `the last acked message, ${last.data}`).then(() => 'delivered'),
    ada.closed.then((close) => `closed ${close.code}`)
  ])
  if (outcome === 'delivered') {
    const delivered = ada.frames.filter((f) => f.type === 'message' && f.room === room).map((f) => f.data)
    t.equal(new Set(delivered).size, delivered.length, 'nothing delivered twice')
    t.same(delivered.filter((d) => acked.some((m) => m.data === d)), acked.map((m) => m.data), 'the acked ones delivered in the order they were published')
  } else {
    t.equal(outcome, 'closed 1012', 'the member is told to rejoin, not left with a gap')
  }
})

t.test('a frozen master nobody replaces takes the cluster down: the instance refuses calls meanwhile, never breaks its whole link, and works on once it thaws', { skip: skipCluster }, async (t) => {
  // The short node timeout flags the frozen master as failing and the cluster as down (CLUSTERDOWN from every
  // master), with no replica to take over. A call refused CLUSTERDOWN is sent again after a read of the slots from a
  // random node, and one sent to the frozen node waits a whole slotsRefreshTimeout: that wait is not the call's, and
  // not the link's fault (when ioredis did the resending, the call looked unanswered and the link was broken).
  const { c, victim, a, sink, parts, on, freeze } = await setup(t, FAILOVER_NODE_TIMEOUT_MS)
  const replica = (await c.nodes()).find((n) => n.masterOf === victim.id)!
  await c.node(replica.port).call('CONFIG', 'SET', 'cluster-replica-no-failover', 'yes')
  t.teardown(async () => await c.node(replica.port).call('CONFIG', 'SET', 'cluster-replica-no-failover', 'no'))
  const other = (await c.nodes()).find((m) => m.role === 'master' && m.port !== victim.port && !serves(m, slotOf('{global}')))!
  const [live] = on(other, 'live', 1) as [string]
  const [ada, bob] = await Promise.all([TestSocket.open(a.wsUrl), TestSocket.open(a.wsUrl)])
  t.teardown(async () => await Promise.all([ada.close(), bob.close()]))
  t.match(await ada.join(live), { type: 'joined', count: 1 })
  t.match(await bob.join(live), { type: 'joined', count: 2 })
  const observer = c.node(other.port)
  /** Whether `other` finds the cluster ok (cluster_state is ok or fail). */
  const clusterOk = async (): Promise<boolean> => String(await observer.call('CLUSTER', 'INFO')).includes('cluster_state:ok')
  const { thaw } = freeze()
  await eventually(clusterOk, (ok) => !ok, `${other.port} finds the cluster down`, 30_000)
  // A publish every 100 ms for three seconds, each refused: the cluster is down.
  const answers: Array<Promise<Frame>> = []
  for (let i = 0; i < 30; i++) {
    answers.push(bob.request({ type: 'publish', room: live, data: `down${i}` }, COMMAND_TIMEOUT_MS * 4 + MARGIN_MS))
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  const all = await Promise.all(answers)
  t.same(all.filter((f) => !(f.type === 'error' && f.code === 'UNAVAILABLE')), [], 'every publish while the cluster is down is refused UNAVAILABLE')
  t.notOk(lostTheLink(sink), 'the instance never took its whole link to the cluster for lost')
  thaw()
  await eventually(clusterOk, (ok) => ok, `${other.port} finds the cluster ok again`, 30_000)
  t.match(await bob.request({ type: 'publish', room: live, data: 'back' }), { type: 'ack' }, 'a publish is acked once the cluster is back')

  // Down again, and thawed as soon as the cluster is found down: the masters keep the FAIL flag, and the cluster
  // down, for twice the node timeout from the flag (then they clear it, as the master serves its slots again).
  // A server publish every 110 ms until then, each to a room of another partition than the 19 before it (so that
  // none waits for another's call, which is given up 2 s after its first send): one refused CLUSTERDOWN is sent again
  // till the cluster is back, and acked.
  // One room per partition, the first of each.
  const byPartition = new Map<string, string>()
  for (const room of on(other, 'thaw', 400)) if (!byPartition.has(parts.base(room))) byPartition.set(parts.base(room), room)
  const spread = [...byPartition.values()].slice(0, 20)
  const again = freeze()
  await eventually(clusterOk, (ok) => !ok, `${other.port} finds the cluster down again`, 30_000)
  again.thaw()
  const made: Array<{ at: number, answer: Promise<string> }> = []
  let back = false
  /** When the last CLUSTER INFO that found the cluster down was sent. */
  let downAt = performance.now()
  const polling = (async () => {
    const deadline = performance.now() + 30_000
    while (!back) {
      const sent = performance.now()
      if (await clusterOk()) back = true
      else downAt = sent
      if (performance.now() > deadline) throw new Error(`${other.port} did not find the cluster ok again within 30 s of the thaw`)
      // As often as eventually() asks, not back to back.
      if (!back) await new Promise((resolve) => setTimeout(resolve, 5))
    }
  })()
  polling.catch(() => {}) // awaited below, once the publishing stops
  const refusals = async (): Promise<number> => Number(/errorstat_CLUSTERDOWN:count=(\d+)/.exec(String(await observer.call('INFO', 'errorstats')))?.[1] ?? 0)
  const refusedBefore = await refusals()
  for (let i = 0; !back && i < 300; i++) {
    const answer = a.app.rooms.broadcast(spread[i % spread.length]!, `thaw${i}`).then(() => 'acked', (err: { code: string }) => err.code)
    made.push({ at: performance.now(), answer })
    await new Promise((resolve) => setTimeout(resolve, 110))
  }
  await polling
  const thawed = await Promise.all(made.map(async (m) => ({ at: m.at, outcome: await m.answer })))
  t.same(thawed.filter(({ outcome }) => outcome !== 'acked' && outcome !== 'UNAVAILABLE'), [], 'each publish around the thaw is acked or refused UNAVAILABLE')
  t.ok(await refusals() > refusedBefore, 'the master refused calls CLUSTERDOWN meanwhile')
  // Made before a CLUSTER INFO that still found the cluster down, with 300 ms to spare: refused at least once.
  const refusedFirst = thawed.filter(({ at }) => at < downAt - 300)
  const resent = refusedFirst.filter(({ outcome }) => outcome === 'acked')
  t.ok(resent.length > 0, `a publish refused CLUSTERDOWN is sent again and acked once the cluster is back (${resent.length} of ${refusedFirst.length})`)
  await eventually(async () => await bob.request({ type: 'publish', room: live, data: 'after' }), (f) => f.type === 'ack', 'a publish acked once the cluster is back', 30_000)
  t.match(await ada.next((f) => f.type === 'message' && f.data === 'after', 'the publish made after the thaw'), { room: live })
  t.equal(ada.closedWith, undefined, 'the members were not disconnected')
  t.notOk(lostTheLink(sink), 'nor after the thaw')
})

/**
 * Publishes of one room, cut off with their master connection while more are
 * made, then sent again: acked offsets follow the order they were made, and
 * a member gets them in that order. `refuse`: the master turns new
 * connections away for a while (maxclients), so that the one ioredis makes
 * for the first publish sent again waits, and ioredis refuses those after it.
 */
const cutOff = (name: string, refuse: boolean): void => {
  t.test(name, { skip: skipCluster }, async (t) => {
    const c = await startCluster(t)
    const prefix = 'order:'
    const parts = new Partitions(prefix, 64)
    const a = await startApp(t, { adapter: redisAdapter({ cluster: c.seeds, keyPrefix: prefix }) })
    const room = 'room0'
    const master = c.node((await c.ownerOf(parts.slot(parts.base(room)))).port)
    const [ada, bob] = await Promise.all([TestSocket.open(a.wsUrl), TestSocket.open(a.wsUrl)])
    t.teardown(async () => await Promise.all([ada.close(), bob.close()]))
    await ada.join(room)
    await bob.join(room)
    const answers: Array<Promise<Frame>> = []
    let reopened: Promise<unknown> = Promise.resolve()
    // The instance's command connection to the room's master, looked up beforehand: the kill follows a publish at once.
    const [cmd] = await clientsNamed(master, `fastify-rooms:${nodeOf(bob)}:cmd`)
    const clients = String(String(await master.call('CLIENT', 'LIST')).trim().split('\n').length)
    for (let i = 0; i < 200; i++) {
      answers.push(bob.request({ type: 'publish', room, data: `m${i}` }, 20_000))
      if (i === 60) {
        if (refuse) await master.call('CONFIG', 'SET', 'maxclients', clients)
        // Cut with publishes in flight and more to come.
        await master.call('CLIENT', 'KILL', 'ID', cmd!.id!)
        if (refuse) reopened = new Promise((resolve) => setTimeout(resolve, 400)).then(async () => await master.call('CONFIG', 'SET', 'maxclients', '10000'))
      }
      // Spread over some 400 ms, so that publishes are made while the cut ones wait to be sent again.
      await new Promise((resolve) => setTimeout(resolve, 2))
    }
    await reopened
    const frames = await Promise.all(answers)
    // None is refused (UNAVAILABLE): those refused while the connection was made again were sent again once it was.
    t.same(frames.filter((f) => f.type !== 'ack' && !(f.type === 'error' && /may or may not/.test(f.message))), [], 'each acked, or answered as one that may have run (its WAIT for replicas cut off)')
    const acked = frames.flatMap((f, i) => f.type === 'ack' ? [[i, f.offset as number]] : [])
    t.same(acked.filter(([, offset], k) => k > 0 && offset! < acked[k - 1]![1]!), [], 'acked offsets increase in the order the publishes were made')
    const last = frames.findLast((f) => f.type === 'ack')!
    await ada.next((f) => f.type === 'message' && f.offset === last.offset, 'the last acked message')
    const got = ada.frames.filter((f) => f.type === 'message').map((f) => Number(String(f.data).slice(1)))
    t.same(got.filter((n, k) => k > 0 && n < got[k - 1]!), [], 'a member gets them in the order they were made')
  })
}
cutOff('publishes of one room cut off with their master connection keep their order: those made after wait for their resend', false)
cutOff('the same while the master turns new connections away for a while', true)
