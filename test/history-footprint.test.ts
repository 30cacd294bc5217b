import t from 'tap'
import { MemoryAdapter } from '../src/index.js'
import { MessageLog } from '../src/adapters/message-log.js'
import { startApp } from './helpers/server.js'
import { seeded } from './helpers/random.js'

const KB = 1024
/**
 * The least a room holding history costs beside its log's buffers: its state,
 * maps and typed arrays' objects, measured at 900 to 960 bytes (see
 * ROOM_OVERHEAD in src/adapters/memory.ts).
 */
const ROOM_FLOOR = 900

interface RoomState { room: string, history: MessageLog, historyBytes: number }

/** The adapter's rooms, read from inside: the test compares what is charged with what is allocated. */
const states = (adapter: MemoryAdapter): RoomState[] => [...(adapter as unknown as { states: Map<string, RoomState> }).states.values()]

/**
 * What a log really allocates: the bytes behind every typed array and buffer
 * it holds, whatever its layout (so that the test reads the same before and
 * after a change to it).
 */
const allocated = (log: MessageLog): number => Object.values(log).reduce<number>((sum, v) => sum + (ArrayBuffer.isView(v) ? v.byteLength : 0), 0)

t.test('maxHistoryBytes on the memory adapter charges what the logs allocate, and all history stays within it', async (t) => {
  const adapter = new MemoryAdapter()
  const budget = 48 * KB
  const historySize = 20
  const { app } = await startApp(t, { adapter, maxHistoryBytes: budget, historySize })
  const rand = seeded(7)
  /** Per room, the offsets published and their sizes. */
  const published = new Map<string, Array<{ offset: number, size: number }>>()
  /** Rooms by their last message that could be kept, least recent first. */
  const order: string[] = []
  const wrong: string[] = []
  let peak = 0
  for (let step = 0; step < 3000 && wrong.length === 0; step++) {
    // Phases: many rooms of one small message, few rooms of many, and some
    // large messages, so that buffers grow, wrap, shrink and rooms are evicted.
    const phase = Math.floor(step / 500) % 3
    const room = phase === 0 ? `wide-${step}` : `r${Math.floor(rand() * (phase === 1 ? 8 : 40))}`
    const roll = rand()
    // Large ones of 20 to 40 KiB fit the budget alone; of 50 to 60 KiB they are delivered but not kept.
    const size = roll < 0.02 ? 50 * KB + Math.floor(rand() * 10 * KB) : roll < 0.05 ? 20 * KB + Math.floor(rand() * 20 * KB) : roll < 0.2 ? Math.floor(rand() * 4 * KB) : Math.floor(rand() * 200)
    const offset = await app.rooms.broadcast(room, 'x'.repeat(size)) as number
    // A room that lost its history and has no members is forgotten: its next life starts again from 1.
    const list = offset === 1 ? [] : published.get(room) ?? []
    list.push({ offset, size })
    published.set(room, list)
    if (size < budget) {
      const at = order.indexOf(room)
      if (at >= 0) order.splice(at, 1)
      order.push(room)
    }

    const { retainedBytes, roomsWithHistory } = adapter.stats()
    let real = 0
    const overheads = new Set<number>()
    for (const state of states(adapter)) {
      if (state.history.length === 0) continue
      const bytes = allocated(state.history)
      real += bytes
      overheads.add(state.historyBytes - bytes - 2 * state.room.length)
    }
    peak = Math.max(peak, retainedBytes)
    if (retainedBytes > budget) wrong.push(`step ${step}: ${retainedBytes} bytes charged, over the budget of ${budget}`)
    if (real + roomsWithHistory * ROOM_FLOOR > budget) wrong.push(`step ${step}: ${real} bytes allocated in ${roomsWithHistory} rooms, over the budget of ${budget}`)
    if (overheads.size > 1 || [...overheads].some((o) => o < ROOM_FLOOR)) wrong.push(`step ${step}: each room's charge is not its log's allocation plus one constant of at least ${ROOM_FLOOR}: ${[...overheads].join(', ')}`)
  }
  t.same(wrong, [], 'after every publish')
  t.ok(peak > budget * 0.8, `the budget is used, not wasted (up to ${peak} bytes)`)

  // Eviction is as before: the rooms that keep history are the most recently
  // published, and each keeps its newest messages, up to historySize.
  const kept = order.filter((room) => states(adapter).some((s) => s.room === room && s.history.length > 0))
  t.same(kept, order.slice(order.length - kept.length), 'the least recently published rooms gave theirs up')
  for (const room of kept) {
    const page = await app.rooms.history(room, 0, 1000)
    const offsets = (page?.messages ?? []).map((m) => m.offset)
    const all = (published.get(room) ?? []).map((m) => m.offset)
    const from = all.indexOf(offsets[0] as number)
    t.ok(offsets.length <= historySize && from >= 0, `${room}: at most ${historySize} messages`)
    // Messages too large for the budget leave holes; everything else from the oldest kept on is there.
    const expected = (published.get(room) ?? []).slice(from).filter((m) => m.size < budget).map((m) => m.offset)
    if (JSON.stringify(offsets) !== JSON.stringify(expected)) t.fail(`${room}: kept ${offsets.join()} of ${all.join()}`)
  }
})

t.test('one room alone keeps the newest messages whose bytes fit with its bookkeeping, in a buffer that fits', async (t) => {
  const adapter = new MemoryAdapter()
  const budget = 16 * KB
  const { app } = await startApp(t, { adapter, maxHistoryBytes: budget, historySize: 100 })
  for (let i = 1; i <= 40; i++) await app.rooms.broadcast('r', 'y'.repeat(i % 5 === 0 ? 6 * KB : 300))
  const [state] = states(adapter)
  const { retainedBytes } = adapter.stats()
  t.ok(retainedBytes <= budget, `${retainedBytes} bytes, within ${budget}`)
  t.equal(retainedBytes, (state as RoomState).historyBytes)
  t.ok(allocated((state as RoomState).history) + ROOM_FLOOR <= budget, 'the buffers themselves fit')
  const offsets = ((await app.rooms.history('r'))?.messages ?? []).map((m) => m.offset)
  t.equal(offsets.at(-1), 40, 'the newest message is kept')
  t.same(offsets, Array.from({ length: offsets.length }, (_, i) => 41 - offsets.length + i), 'a run of the newest, without holes')
  t.ok(offsets.length >= 5, `${offsets.length} messages kept`)

  // One that fits alone in the budget, once the room's bookkeeping is counted, is kept by itself.
  const alone = budget - ROOM_FLOOR * 2 - 200
  await app.rooms.broadcast('r', 'z'.repeat(alone))
  t.same(((await app.rooms.history('r'))?.messages ?? []).map((m) => m.offset), [41])
  t.ok(adapter.stats().retainedBytes <= budget)
  // One that does not is delivered but not kept, and the room's history stays as it was.
  t.equal(await app.rooms.broadcast('r', 'z'.repeat(budget)), 42)
  t.same(((await app.rooms.history('r'))?.messages ?? []).map((m) => m.offset), [41])
})

t.test('a log allocates no spare room for its first message, and gives room back as it drains', async (t) => {
  const log = new MessageLog()
  log.push(1, Buffer.alloc(5900, 97))
  t.equal(allocated(log), 5900 + 2 * 24, 'the message\'s bytes and a ring of two records')
  t.equal(log.footprint, allocated(log))
  for (let i = 2; i <= 100; i++) log.push(i, Buffer.alloc(100, 98))
  t.equal(log.footprint, allocated(log))
  t.ok(log.footprint <= 1.5 * (5900 + 99 * 100) + 128 * 24, `${log.footprint} bytes for ${5900 + 99 * 100} of messages`)
  for (let i = 1; i < 100; i++) log.shift()
  t.equal(log.footprint, allocated(log))
  t.ok(log.footprint <= 4 * 100 + 2 * 24, `down to ${log.footprint} bytes for one message of 100`)
  t.same(log.slice(0).map((m) => m.offset), [100])
  log.shift()
  t.equal(allocated(log), 0, 'an emptied log holds nothing')
})

t.test('a room alone over the budget keeps its buffer: a publish copies its message, not the room\'s history', async (t) => {
  const adapter = new MemoryAdapter()
  const budget = 1024 * KB
  const { app } = await startApp(t, { adapter, maxHistoryBytes: budget, historySize: 100 })
  const message = 'x'.repeat(20 * KB)
  const log = (): MessageLog => (states(adapter)[0] as RoomState).history
  /** The log's byte buffer: a new one means every message kept was copied into it. */
  const buffer = (): unknown => Object.values(log()).find((v) => Buffer.isBuffer(v))
  // 100 messages of 20 KiB would take 2 MiB: the budget binds long before historySize.
  for (let i = 1; i <= 100; i++) await app.rooms.broadcast('r', message)
  let moved = 0
  let last = buffer()
  const wrong: string[] = []
  for (let i = 101; i <= 400; i++) {
    await app.rooms.broadcast('r', message)
    if (buffer() !== last) moved++
    last = buffer()
    const { retainedBytes } = adapter.stats()
    if (retainedBytes > budget) wrong.push(`publish ${i}: ${retainedBytes} bytes, over ${budget}`)
    if (allocated(log()) + ROOM_FLOOR > budget) wrong.push(`publish ${i}: ${allocated(log())} bytes allocated`)
  }
  t.equal(moved, 0, 'no publish moved the history to another buffer')
  t.same(wrong, [], 'within the budget after every publish')
  const offsets = ((await app.rooms.history('r', 0, 1000))?.messages ?? []).map((m) => m.offset)
  t.equal(offsets.at(-1), 400, 'the newest message is kept')
  t.same(offsets, Array.from({ length: offsets.length }, (_, i) => 401 - offsets.length + i), 'a run of the newest, without holes')
  t.ok(offsets.length >= 48, `${offsets.length} messages of 20 KiB kept in 1 MiB: the buffer is the budget, not a part of it`)
})
