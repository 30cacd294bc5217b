import t from 'tap'
import { MessageLog } from '../src/adapters/message-log.js'
import { seeded } from './helpers/random.js'

const PIECES = ['a', 'xyz', 'é', '中文', '😀', '"', '\\n', ' ', '{"type":"message"}']

/** The size of a log's byte buffer: what it holds in memory beyond its messages. */
const capacity = (log: MessageLog): number => (log as unknown as { data: Buffer }).data.length

t.test('a log behaves as an array of messages used as a queue, across growth, wrap-around and shrinking', async (t) => {
  const rand = seeded(17)
  const log = new MessageLog()
  const model: Array<{ offset: number, frame: string }> = []
  let offset = 0
  let longest = 0
  let biggest = 0
  const wrong: string[] = []
  const text = (): string => {
    // Mostly small frames, some large ones: the buffer grows, wraps and shrinks.
    const pieces = rand() < 0.05 ? 200 + Math.floor(rand() * 2000) : 1 + Math.floor(rand() * 60)
    let s = ''
    for (let k = 0; k < pieces; k++) s += PIECES[Math.floor(rand() * PIECES.length)]
    return s
  }
  for (let step = 0; step < 30_000 && wrong.length === 0; step++) {
    const roll = rand()
    // Phases that fill and drain, so the log is seen long, short and empty.
    const filling = Math.floor(step / 3000) % 2 === 0
    if (roll < (filling ? 0.6 : 0.35)) {
      offset += 1 + Math.floor(rand() * 3)
      const frame = text()
      log.push(offset, Buffer.from(frame))
      model.push({ offset, frame })
    } else if (roll < 0.995) {
      const got = log.shift()
      const want = model.shift()
      if (got !== (want === undefined ? 0 : Buffer.byteLength(want.frame))) wrong.push(`step ${step}: shift gave ${got} bytes, expected ${want === undefined ? 0 : Buffer.byteLength(want.frame)}`)
    } else if (roll < 0.998) {
      log.clear()
      model.length = 0
    } else {
      const start = Math.floor(rand() * (model.length + 4)) - 2
      const end = Math.floor(rand() * (model.length + 4)) - 2
      const got = JSON.stringify(log.slice(start, end)) + JSON.stringify(log.slice(start))
      const want = JSON.stringify(model.slice(Math.max(0, start), Math.max(0, end))) + JSON.stringify(model.slice(Math.max(0, start)))
      if (got !== want) wrong.push(`step ${step}: slice(${start}, ${end}) differs`)
    }
    if (log.length !== model.length) wrong.push(`step ${step}: length ${log.length}, expected ${model.length}`)
    // Offsets skip (as when a message too large to keep is delivered): indexAfter must find, not count.
    const probe = (model[0]?.offset ?? offset) - 2 + Math.floor(rand() * (offset - (model[0]?.offset ?? offset) + 5))
    const after = model.findIndex((m) => m.offset > probe)
    if (log.indexAfter(probe) !== (after === -1 ? model.length : after)) wrong.push(`step ${step}: indexAfter(${probe}) gave ${log.indexAfter(probe)}, expected ${after}`)
    const used = model.reduce((sum, m) => sum + Buffer.byteLength(m.frame), 0)
    if (capacity(log) > Math.max(1024, 4 * used)) wrong.push(`step ${step}: ${capacity(log)} bytes held for ${used}`)
    longest = Math.max(longest, model.length)
    biggest = Math.max(biggest, capacity(log))
  }
  t.same(wrong, [])
  t.same(log.slice(0), model, 'every frame intact at the end')
  t.ok(longest > 200 && biggest >= 65_536, `held up to ${longest} messages in up to ${biggest} bytes`)
})

t.test('an empty log: shift gives 0, indexAfter 0, slice nothing; emptied, it lets its buffer go', async (t) => {
  const log = new MessageLog()
  t.equal(log.length, 0)
  t.equal(log.shift(), 0)
  t.equal(log.indexAfter(0), 0)
  t.same(log.slice(0, 10), [])
  log.push(7, Buffer.from('x'.repeat(5000)))
  t.same(log.slice(0).map((m) => [m.offset, m.frame.length]), [[7, 5000]])
  t.ok(capacity(log) >= 5000)
  t.equal(log.shift(), 5000)
  t.equal(capacity(log), 0, 'no buffer held once empty')
  log.push(8, Buffer.from('y'))
  t.same(log.slice(0), [{ offset: 8, frame: 'y' }])
  log.clear()
  t.equal(log.length, 0)
  t.equal(capacity(log), 0)
})

t.test('a push with a limit keeps the newest messages within it, and at the limit reuses its buffer', async (t) => {
  const rand = seeded(23)
  const limit = 64 * 1024
  const log = new MessageLog()
  const model: Array<{ offset: number, frame: string }> = []
  const wrong: string[] = []
  let moved = 0
  for (let step = 1; step <= 20_000 && wrong.length === 0; step++) {
    // Phases of small, mixed and large messages: the records' ring grows and
    // shrinks under a buffer held at the limit, and one message may push out many.
    const phase = Math.floor(step / 2000) % 3
    const size = phase === 0 ? 1 + Math.floor(rand() * 300) : phase === 1 ? 1 + Math.floor(rand() * 6000) : rand() < 0.1 ? 20_000 + Math.floor(rand() * 40_000) : 1 + Math.floor(rand() * 100)
    const frame = 'abcdefghij'.repeat(Math.ceil(size / 10)).slice(0, size)
    const before = capacity(log) === 0 ? undefined : (log as unknown as { data: Buffer }).data
    log.push(step, Buffer.from(frame), limit)
    if (before !== undefined && (log as unknown as { data: Buffer }).data !== before) moved++
    model.push({ offset: step, frame })
    // What was dropped to keep within the limit is the oldest: the log holds the newest run of the model.
    const dropped = model.splice(0, model.length - log.length)
    if (log.footprint > limit) wrong.push(`step ${step}: footprint ${log.footprint}, over ${limit}`)
    if (log.footprint !== Object.values(log).reduce<number>((sum, v) => sum + (ArrayBuffer.isView(v) ? v.byteLength : 0), 0)) wrong.push(`step ${step}: footprint is not what is allocated`)
    if (dropped.length > 0 && [...dropped, ...model].every((m) => m.frame.length <= 300)) {
      // Messages left only for want of room: the buffer and the ring take
      // nearly the limit, and the buffer is full but for the free space no
      // message of up to 300 bytes could use.
      const kept = model.reduce((sum, m) => sum + m.frame.length, 0)
      if (log.footprint < limit * 0.9 || kept < capacity(log) - 3 * 300) wrong.push(`step ${step}: ${kept} bytes kept in a buffer of ${capacity(log)}, footprint ${log.footprint}`)
    }
    if (step % 97 === 0 && JSON.stringify(log.slice(0)) !== JSON.stringify(model)) wrong.push(`step ${step}: the log's messages differ from the newest ones pushed`)
  }
  t.same(wrong, [])
  t.same(log.slice(0), model, 'every frame intact at the end')
  t.ok(moved < 200, `${moved} moves to another buffer in 20,000 pushes: the ring's growth and shrinking, not one per push`)
})

// Found by a fuzz against an array model: the ring dropped its last message while
// making room, then read the stale record of a larger buffer it had just left, and
// wrote past the end of its buffer (RangeError: the publish was lost).
t.test('a push that must drop every older message at the limit takes the emptied buffer from its start', async (t) => {
  const log = new MessageLog()
  const lengths = [36, 27, 1, 22, 13, 20]
  let offset = 0
  for (const length of lengths) log.push(++offset, Buffer.alloc(length, 96 + offset), 120)
  t.ok(log.footprint <= 120, `within its limit (${log.footprint} bytes)`)
  const kept = log.slice(0, log.length)
  t.equal(kept.at(-1)?.offset, lengths.length, 'the newest message is kept')
  t.equal(kept.at(-1)?.frame, 'f'.repeat(20), 'whole')
  for (let i = 1; i < kept.length; i++) t.equal(kept[i]!.offset, kept[i - 1]!.offset + 1, 'the newest ones, without a hole')
})
