import t from 'tap'
import { TestSocket } from './helpers/socket.js'
import { HeldStore } from './helpers/held-store.js'
import { startApp } from './helpers/server.js'
import { guard } from './helpers/until.js'

// A diff to a room of more than 1,000 members (the registry's PRESENCE_SLICE) is written 1,000 members
// per turn of the event loop. 3,100 members: four slices, the first member in the first, the last in the
// fourth; the server reads its sockets between slices (the poll phase of each loop iteration).
const MEMBERS = 3_100

type Frame = Awaited<ReturnType<TestSocket['next']>>

/** The count a member last heard of: its latest `presence` or `joined` frame for the room. */
function lastCount (socket: TestSocket): number {
  for (let i = socket.frames.length - 1; i >= 0; i--) {
    const f = socket.frames[i] as Frame
    if ((f.type === 'presence' || f.type === 'joined') && f.room === 'big') return f.count as number
  }
  return NaN
}

t.test('a diff to a room larger than a slice', async (t) => {
  // Holds a call only when a test asks it to (the repeated join's room read, below).
  const adapter = new HeldStore()
  const { wsUrl } = await startApp(t, { adapter, presenceIntervalMs: 1000 })
  const sockets: TestSocket[] = []
  t.teardown(async () => { await Promise.all(sockets.map(async (s) => await s.close())) })
  const first = await TestSocket.open(wsUrl)
  sockets.push(first)
  await first.join('big')
  // The rest join 500 at a time; a diff a second keeps the test short (every diff goes to thousands).
  let next = 1
  await Promise.all(Array.from({ length: 500 }, async () => {
    while (next < MEMBERS - 1) {
      next++
      const socket = await TestSocket.open(wsUrl)
      sockets.push(socket)
      await socket.join('big')
    }
  }))
  const last = await TestSocket.open(wsUrl)
  sockets.push(last)
  await last.join('big')
  t.equal(sockets.length, MEMBERS)

  await t.test('reaches every member once, in order', async (t) => {
    // Each member's wait ends with the frame that brings its count to MEMBERS (counts only grow); any member closed fails it at once.
    const counts = async (s: TestSocket): Promise<void> => {
      if (lastCount(s) === MEMBERS) return
      await new Promise<void>((resolve) => {
        // After TestSocket's own listener: the frame is in `frames` already.
        const onMessage = (): void => {
          if (lastCount(s) !== MEMBERS) return
          s.ws.off('message', onMessage)
          resolve()
        }
        s.ws.on('message', onMessage)
      })
    }
    await guard(Promise.all(sockets.map(counts)), `every member to count ${MEMBERS}`, { ms: 30_000, abort: sockets.map((s) => s.closed) })
    // Its own join may come back in its first diff (its `joined` was made mid-batch): only the others count.
    const seen = new Map<string, number>()
    let decreasing = 0
    for (const socket of sockets) {
      let count = 0
      for (const f of socket.frames) {
        if (f.type !== 'presence') continue
        if ((f.count as number) < count) decreasing++
        count = f.count as number
        if (socket !== first) continue
        for (const user of f.joins as Array<{ id: string }>) {
          if (user.id !== first.welcome.user.id) seen.set(user.id, (seen.get(user.id) ?? 0) + 1)
        }
      }
    }
    t.equal(decreasing, 0, 'no member got a diff after a later one (only joins: counts only grow)')
    t.equal(seen.size, MEMBERS - 1, 'the first member learnt of every other join, from diffs alone')
    t.same([...seen.values()].filter((n) => n !== 1), [], 'and of each join once')
  })

  /** A new member joins; resolves once its diff reached the first member (the first slice), with a matcher for it. */
  async function joinerDiffUnderWay (): Promise<(f: Frame) => boolean> {
    const joiner = await TestSocket.open(wsUrl)
    sockets.push(joiner)
    const id = joiner.welcome.user.id
    const isJoinerDiff = (f: Frame): boolean => f.type === 'presence' && (f.joins as Array<{ id: string }>).some((u) => u.id === id)
    const reached = first.next(isJoinerDiff, 'the diff of the new join at the first member')
    await joiner.join('big')
    await reached
    return isJoinerDiff
  }

  await t.test('lets the server answer a frame between its slices', async (t) => {
    const isJoinerDiff = await joinerDiffUnderWay()
    // The diff has reached the first slice; the last member, in the fourth, asks for a pong now. Written
    // in one turn, the diff would already be in the last member's socket, ahead of the pong.
    const pong = last.request({ type: 'ping' })
    const [reply, diff] = await Promise.all([pong, last.next(isJoinerDiff, 'the diff of the new join at the last member')])
    t.equal(reply.type, 'pong')
    t.ok(last.frames.indexOf(reply) < last.frames.indexOf(diff), 'the last member got its pong before the diff')
  })

  await t.test('reaches a member before its answer to a repeated join', async (t) => {
    // The answer carries the room as it is now; a diff still under way, older, must not follow it.
    const isJoinerDiff = await joinerDiffUnderWay()
    const [joined, diff] = await Promise.all([last.request({ type: 'join', room: 'big' }), last.next(isJoinerDiff, 'the diff of the new join at the last member')])
    t.equal(joined.type, 'joined')
    t.equal(joined.count, MEMBERS + 2)
    t.ok(last.frames.indexOf(diff) < last.frames.indexOf(joined), 'the diff came before the answer')
  })

  await t.test('follows the answer to a repeated join when it was made while the room was read', async (t) => {
    const leaver = await TestSocket.open(wsUrl)
    const id = leaver.welcome.user.id
    await leaver.join('big')
    await last.next((f) => f.type === 'presence' && (f.joins as Array<{ id: string }>).some((u) => u.id === id), 'the diff of its join at the last member')
    // The store reads the room (the leaver in it) and holds its answer; the leaver goes, and the diff of that
    // is under way (at the first member) as the answer is written: it is newer than the answer, and follows it.
    const held = adapter.hold('room')
    t.teardown(() => held.release())
    const answer = last.request({ type: 'join', room: 'big' })
    await held.entered
    const isLeave = (f: Frame): boolean => f.type === 'presence' && (f.leaves as Array<{ id: string }>).some((u) => u.id === id)
    const reachedFirst = first.next(isLeave, 'the diff of the leave at the first member')
    await leaver.request({ type: 'leave', room: 'big' })
    await reachedFirst
    held.release()
    const [joined, diff] = await Promise.all([answer, last.next(isLeave, 'the diff of the leave at the last member')])
    t.ok((joined.members as Array<{ id: string }>).length > 0)
    t.ok(last.frames.indexOf(joined) < last.frames.indexOf(diff), 'the answer came first, the newer diff after it')
    await leaver.close()
  })
})
