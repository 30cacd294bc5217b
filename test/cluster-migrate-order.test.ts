import t from 'tap'
import { redisAdapter } from '../src/index.js'
import { Partitions } from '../src/adapters/partitions.js'
import { skipCluster, startCluster } from './helpers/cluster.js'
import { startApp } from './helpers/server.js'
import { TestSocket, type Frame } from './helpers/socket.js'

/**
 * plugin.md, "Redis Cluster": a room's publishes keep the order of the frames
 * that made them while the room's slot migrates. During the migration Redis
 * answers the publish script TRYAGAIN, and ioredis sends such a call again
 * later by way of a random master; a later publish of the room, sent once the
 * slot is served, must not be applied before it. A client that does not wait
 * for each ack (the SDK never does) publishes every few milliseconds through
 * the whole migration: its acks' offsets must follow its frames' order.
 */

/** Publishes by one client, one every PACE_MS, without waiting for acks: each one's id is its place in the order. */
const PACE_MS = 3
/** While every key is on the target and the slot not yet handed over, publishes sent (each is refused TRYAGAIN for now). */
const WHILE_MOVED = 40
/** Publishes after the hand-over, so that the calls held since the TRYAGAIN are sent again among them. */
const AFTER = 150

const mayFail = (f: Frame): boolean => f.type === 'error' && (f.code === 'UNAVAILABLE' || (f.code === 'INTERNAL' && /may or may not have been published/.test(f.message as string)))

t.test('a room\'s publishes keep their frame order while its slot migrates', { skip: skipCluster }, async (t) => {
  const c = await startCluster(t)
  const prefix = 'order:'
  const parts = new Partitions(prefix, 64)
  const room = 'busy'
  const slot = parts.slot(parts.base(room))
  const source = await c.ownerOf(slot)
  const target = (await c.nodes()).find((n) => n.role === 'master' && n.id !== source.id)!
  const a = await startApp(t, { adapter: redisAdapter({ cluster: c.seeds, keyPrefix: prefix }) })
  const pub = await TestSocket.open(a.wsUrl)
  t.teardown(() => pub.close())
  t.match(await pub.join(room), { type: 'joined' })

  // The publisher: a frame every PACE_MS, with waiters on how many were sent.
  let sent = 0
  let running = true
  const wakes = new Set<() => void>()
  const sentAtLeast = async (n: number): Promise<void> => {
    if (sent >= n) return
    await new Promise<void>((resolve, reject) => {
      const wake = (): void => { if (sent >= n) { wakes.delete(wake); resolve() } }
      wakes.add(wake)
      pub.closed.then(({ code }) => reject(new Error(`the publisher closed (${code}) after ${sent} publishes`)), () => {})
    })
  }
  const publishing = (async () => {
    while (running && pub.closedWith === undefined) {
      sent++
      pub.send({ type: 'publish', room, data: sent, id: sent })
      for (const wake of [...wakes]) wake()
      await new Promise((resolve) => setTimeout(resolve, PACE_MS))
    }
  })()

  await sentAtLeast(20)
  let window = { first: 0, last: 0 }
  let unanswered = 0
  await c.migrateSlot(slot, target.port, {
    keysMoved: async () => {
      window = { first: sent + 1, last: sent + WHILE_MOVED }
      await sentAtLeast(window.last)
      // Redis refuses the script TRYAGAIN now: what was sent in the window waits, so the test tests the resend.
      const answered = new Set(pub.frames.map((f) => f.id))
      for (let id = window.first; id <= window.last; id++) if (!answered.has(id)) unanswered++
    }
  })
  const moved = sent
  t.ok(unanswered >= WHILE_MOVED / 2, `${unanswered} of the ${WHILE_MOVED} publishes sent while the keys had moved were still unanswered when the slot was handed over`)
  await sentAtLeast(moved + AFTER)
  running = false
  await publishing

  // Every frame is answered: an ack, or a refusal that says nothing was (or may have been) published.
  const replies = new Map<number, Frame>()
  for (let id = 1; id <= sent; id++) replies.set(id, await pub.next((f) => f.id === id, `the answer to publish ${id}`))
  const acked: Array<{ id: number, offset: number }> = []
  const refused: string[] = []
  for (const [id, reply] of replies) {
    if (reply.type === 'ack') acked.push({ id, offset: reply.offset as number })
    else if (mayFail(reply)) refused.push(`${id}: ${reply.code as string}`)
    else t.fail(`publish ${id} answered ${JSON.stringify(reply)}`)
  }
  t.comment(`${sent} publishes (${moved} before the hand-over), ${acked.length} acked, refused: ${refused.join(', ') || 'none'}`)
  t.ok(acked.length > sent / 2, 'most publishes are acked')
  const backwards = acked.filter((x, k) => k > 0 && x.offset <= acked[k - 1]!.offset).map((x) => `${x.id}@${x.offset}`)
  t.same(backwards, [], 'each acked publish has a higher offset than every acked publish sent before it')

  // The messages reach their publisher at the offsets the acks gave, in offset order.
  const last = acked.at(-1)!
  await pub.next((f) => f.type === 'message' && f.offset === last.offset, `the message at offset ${last.offset}`)
  const delivered = pub.frames.filter((f) => f.type === 'message')
  t.same(delivered.map((f) => f.offset), [...delivered.map((f) => f.offset as number)].sort((x, y) => x - y), 'messages arrive in offset order')
  const at = new Map(delivered.map((f) => [f.data as number, f.offset as number]))
  t.same(acked.filter(({ id, offset }) => at.get(id) !== offset).map(({ id }) => id), [], 'each acked publish was delivered at its offset')
})
