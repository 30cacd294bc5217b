import t from 'tap'
import { redisAdapter } from '../src/index.js'
import { Partitions } from '../src/adapters/partitions.js'
import { slotOf } from '../src/adapters/slot.js'
import { skipCluster, startCluster, type ClusterNodeInfo } from './helpers/cluster.js'
import { eventually } from './helpers/redis.js'
import { logSink } from './helpers/log.js'
import { startApp, type Started } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'

/**
 * plugin.md, "Redis Cluster": a master that stops answering without closing
 * its connections (a frozen process) costs an instance its connection to that
 * master only. Its calls settle after `commandTimeoutMs`, as for a broken
 * connection; rooms on the other masters go on as if nothing happened; and
 * once it answers again nothing it was sent is applied behind the instance's
 * back (a join answered UNAVAILABLE leaves nobody in the room).
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

const serves = (node: ClusterNodeInfo, slot: number): boolean => node.slots.some(([first, last]) => slot >= first && slot <= last)
const nodeOf = (socket: TestSocket): string => socket.welcome.connectionId.slice(0, socket.welcome.connectionId.indexOf('-'))
const ids = (info: { members: Array<{ id: string }> } | null): string[] => (info?.members ?? []).map((m) => m.id).sort()

t.test('a frozen master costs the instance its calls to that master only', { skip: skipCluster }, async (t) => {
  const c = await startCluster(t, { nodeTimeoutMs: NODE_TIMEOUT_MS })
  const masters = (await c.nodes()).filter((n) => n.role === 'master')
  // A master carrying none of the instance's own keys and channels: with the leases or the instance's own
  // channel on it, the instance cannot work at all while it is frozen.
  const victim = masters.find((m) => !serves(m, slotOf('{global}')) && !serves(m, slotOf('{all}')))
  if (victim === undefined) throw new Error('every master carries the leases or the all channel')
  const other = masters.find((m) => m !== victim && !serves(m, slotOf('{global}')))!
  const prefix = 'hung:'
  const parts = new Partitions(prefix, 64)
  const sink = logSink()
  let a: Started
  for (;;) {
    a = await startApp(t, { adapter: redisAdapter({ cluster: c.seeds, keyPrefix: prefix, commandTimeoutMs: COMMAND_TIMEOUT_MS }) }, undefined, { logger: { level: 'debug', stream: sink.stream } })
    const probe = await TestSocket.open(a.wsUrl)
    await probe.close()
    if (!serves(victim, slotOf(`{n:${nodeOf(probe)}}`))) break
    await a.app.close()
  }
  const on = (node: ClusterNodeInfo, name: string, n: number): string[] => {
    const rooms: string[] = []
    for (let i = 0; rooms.length < n; i++) if (serves(node, parts.slot(parts.base(`${name}${i}`)))) rooms.push(`${name}${i}`)
    return rooms
  }
  const [frozen, refused] = on(victim, 'frozen', 2) as [string, string]
  const [live, fresh] = on(other, 'live', 2) as [string, string]
  const [ada, bob, cy, dee] = await Promise.all([0, 1, 2, 3].map(async () => await TestSocket.open(a.wsUrl))) as [TestSocket, TestSocket, TestSocket, TestSocket]
  t.teardown(async () => await Promise.all([ada, bob, cy, dee].map(async (s) => await s.close())))
  for (const room of [frozen, live]) t.match(await ada.join(room), { type: 'joined', count: 1 })
  t.match(await bob.join(live), { type: 'joined', count: 2 })
  t.match(await ada.request({ type: 'publish', room: frozen, data: 'before' }), { type: 'ack', offset: 1 })

  const pid = c.pid(victim.port)
  if (pid === undefined) throw new Error(`no process on ${victim.port}`)
  process.kill(pid, 'SIGSTOP')
  let frozenFor = 0
  const thaw = (): void => {
    if (frozenFor !== 0) return
    frozenFor = performance.now() - stopped
    process.kill(pid, 'SIGCONT')
  }
  t.teardown(thaw)
  const stopped = performance.now()
  // Both wait on the frozen master: a publish and a join into a room the instance has not subscribed to yet.
  const stuck = ada.request({ type: 'publish', room: frozen, data: 'stuck' }, COMMAND_TIMEOUT_MS * 4 + MARGIN_MS)
  const joining = cy.request({ type: 'join', room: refused }, COMMAND_TIMEOUT_MS * 4 + MARGIN_MS)
  const answer = await stuck
  const waited = performance.now() - stopped
  t.match(answer, { type: 'error', code: 'INTERNAL', message: /may or may not have been published/ }, 'the publish on the frozen master is answered as one that may have run')
  t.ok(waited < COMMAND_TIMEOUT_MS * 2 + MARGIN_MS, `after about commandTimeoutMs: ${Math.round(waited)} ms`)
  t.match(await joining, { type: 'error', code: 'UNAVAILABLE', room: refused }, 'the join on the frozen master answers UNAVAILABLE')

  // The rest of the cluster is untouched: joins, publishes and deliveries in rooms on the other masters.
  t.match(await dee.join(fresh), { type: 'joined', room: fresh, count: 1 }, 'a join into a new room on another master')
  t.match(await dee.join(live), { type: 'joined', room: live, count: 3 }, 'a join into a busy room on another master')
  const during = await bob.request({ type: 'publish', room: live, data: 'during' })
  t.match(during, { type: 'ack', offset: 1 }, 'a publish on another master is acked')
  t.match(await ada.next((f) => f.type === 'message' && f.room === live, 'the message on the other master'), { data: 'during', offset: 1 })
  t.notOk(sink.lines.some((line) => /lost the link to Redis/.test(line.msg)), 'the instance never took its whole link to the cluster for lost')
  t.equal(ada.closedWith, undefined, 'the member of both rooms was not disconnected')
  t.ok(performance.now() - stopped >= COMMAND_TIMEOUT_MS, 'all of it while the master was still frozen')
  thaw()
  t.comment(`the master was frozen for ${Math.round(frozenFor)} ms`)

  // Once it answers again: the frozen master's rooms work, and its store says who is really in them.
  let tries = 0
  const after = await eventually(async () => await ada.request({ type: 'publish', room: frozen, data: `after ${++tries}` }), (f) => f.type === 'ack', 'a publish in the thawed master\'s room is acked')
  const acked = ['before', `after ${tries}`]
  t.match(await ada.next((f) => f.type === 'message' && f.room === frozen && f.data === acked[1], `"${acked[1]}" in the thawed room`), { offset: after.offset })
  const delivered = ada.frames.filter((f) => f.type === 'message' && f.room === frozen).map((f) => f.data)
  t.same(delivered.filter((d) => acked.includes(d)), acked, 'every acked message once, in order')
  t.equal(new Set(delivered).size, delivered.length, `nothing twice: ${JSON.stringify(delivered)}`)
  t.same(ids(await a.app.rooms.get(frozen)), [ada.welcome.user.id], `${frozen}: its member throughout`)
  t.same(await eventually(async () => ids(await a.app.rooms.get(refused)), (members) => members.length === 0, `${refused} empty`), [], `${refused}: nobody, though its join was sent to the frozen master`)
  t.match(await cy.join(refused), { type: 'joined', count: 1 }, 'the refused member joins now')
  t.same(ids(await a.app.rooms.get(live)), [ada.welcome.user.id, bob.welcome.user.id, dee.welcome.user.id].sort())
})
