import type { StoredMessage } from './adapter.js'

/** Records a log makes room for at first: a room that keeps one message pays for two. */
const MIN_RECORDS = 2
/** Numbers per record in `records`: the message's offset, where its bytes start, and their length. */
const STRIDE = 3
/** What an empty log holds: shared, never written (the first message allocates its own). */
const EMPTY = Buffer.alloc(0)
const NO_RECORDS = new Float64Array(0)

/**
 * A room's stored messages, oldest first, kept outside the JS heap: their
 * bytes in one circular buffer, their offsets and places in one typed array.
 * A message kept as a string lives long enough to be promoted to the old
 * generation, and a busy server then promotes every message it keeps; here
 * keeping one is a copy of its bytes, and the collector never sees it.
 *
 * Each message's bytes are contiguous: one that does not fit before the end
 * of the buffer goes to its start when the oldest messages have left room
 * there; when neither fits, the messages move to a new buffer of one and a
 * half times their bytes, or the oldest leave when a limit on `push` stops
 * the growth. The first message gets a buffer of its own size. The
 * buffer moves to a smaller one when less than a quarter of it is in use, and
 * an emptied log lets its buffers go. The records are a ring of power-of-two
 * size, halved when a quarter full. `footprint` is what all this allocates,
 * and what the memory adapter counts against `maxHistoryBytes`.
 */
export class MessageLog {
  private data: Buffer = EMPTY
  /**
   * Per message, STRIDE numbers, in a ring of `size` records starting at
   * `head`. One array, not one per field: each typed array costs about 200
   * bytes of heap beside its contents, more than a small room's messages.
   */
  private records = NO_RECORDS
  private size = 0
  private head = 0
  private count = 0
  /** Bytes of the messages held. */
  private used = 0
  /** Where the next message's bytes go. */
  private tail = 0

  /** Messages held. */
  get length (): number {
    return this.count
  }

  /** Bytes allocated: the buffer's capacity and the records' ring, used or not. */
  get footprint (): number {
    return this.data.length + this.records.byteLength
  }

  /** What `footprint` would be if the buffer held just the messages' bytes. */
  get tightFootprint (): number {
    return this.used + this.records.byteLength
  }

  /**
   * Keep a message (a copy of `bytes`) after the newest. Where growing the
   * buffer would take `footprint` over `limit`, it grows to the limit at most,
   * and a buffer already that large stays: the oldest messages leave until
   * the new one fits after the newest or at the start. A room whose budget
   * binds then costs one copy of the message per push, not of its history.
   */
  push (offset: number, bytes: Buffer, limit = Infinity): void {
    const length = bytes.length
    if (this.count === this.size) this.resize(Math.max(MIN_RECORDS, this.size * 2))
    const at = this.place(length, limit - this.records.byteLength)
    // TypedArray set: a plain copy, without Buffer.copy's bounds arithmetic.
    this.data.set(bytes, at)
    const record = ((this.head + this.count) & (this.size - 1)) * STRIDE
    const { records } = this
    records[record] = offset
    records[record + 1] = at
    records[record + 2] = length
    this.count++
    this.used += length
    this.tail = at + length
    if (this.data.length + this.records.byteLength > limit) {
      // `place` let many leave for one large message, and the ring sized for
      // them leaves the limit too little: it shrinks as `shift` would have.
      let size = this.size
      while (size > MIN_RECORDS && this.count * 4 <= size) size /= 2
      if (size !== this.size) this.resize(size)
    }
  }

  /** Drop the oldest message; returns its byte length (0 when empty). */
  shift (): number {
    if (this.count === 0) return 0
    const length = this.records[this.head * STRIDE + 2] as number
    this.head = (this.head + 1) & (this.size - 1)
    this.count--
    this.used -= length
    if (this.count === 0) {
      this.clear()
      return length
    }
    if (this.used * 4 < this.data.length) this.compact(grown(this.used))
    if (this.size > MIN_RECORDS && this.count * 4 <= this.size) this.resize(this.size / 2)
    return length
  }

  /**
   * Move the messages to a buffer small enough that `footprint` is at most
   * `bytes`, when it is over; never smaller than the messages' bytes.
   */
  fitWithin (bytes: number): void {
    if (this.count === 0 || this.footprint <= bytes) return
    this.compact(Math.max(this.used, bytes - this.records.byteLength))
  }

  /**
   * The index of the oldest message whose offset is above `offset` (`length`
   * when none is). Offsets rise but may skip: a message too large for the
   * history budget is delivered and never kept.
   */
  indexAfter (offset: number): number {
    const mask = this.size - 1
    let low = 0
    let high = this.count
    while (low < high) {
      const middle = (low + high) >>> 1
      if ((this.records[((this.head + middle) & mask) * STRIDE] as number) > offset) high = middle
      else low = middle + 1
    }
    return low
  }

  /** Messages from `start` up to, not including, `end`, oldest first, their frames decoded. */
  slice (start: number, end: number = this.count): StoredMessage[] {
    const from = Math.max(0, start)
    const to = Math.min(this.count, end)
    const out: StoredMessage[] = []
    const { records } = this
    for (let i = from; i < to; i++) {
      const record = ((this.head + i) & (this.size - 1)) * STRIDE
      const at = records[record + 1] as number
      out.push({ offset: records[record] as number, frame: this.data.toString('utf8', at, at + (records[record + 2] as number)) })
    }
    return out
  }

  /** Drop every message and let the buffers go. */
  clear (): void {
    this.data = EMPTY
    this.records = NO_RECORDS
    this.size = 0
    this.head = 0
    this.count = 0
    this.used = 0
    this.tail = 0
  }

  /**
   * Where `length` bytes go: after the newest message, at the start of the
   * buffer, or in another of at most `most` bytes; in a buffer of just
   * `most`, where the oldest messages leave.
   */
  private place (length: number, most: number): number {
    if (this.count > 0) {
      const capacity = this.data.length
      if (capacity <= most) {
        const at = this.free(length)
        if (at >= 0) return at
      }
      if (capacity === most) {
        // Moving to a buffer of the same size would copy the whole history on
        // every push from now on: the oldest make room in this one instead.
        while (this.count > 0) {
          this.drop()
          const at = this.free(length)
          if (at >= 0) return at
        }
      } else {
        // Smaller than `most`, it grows; larger (the records' ring has just
        // grown), it shrinks: in both, a copy once, then no more.
        while (this.count > 0 && this.used + length > most) this.drop()
        if (this.count > 0) {
          this.compact(Math.min(grown(this.used + length), most))
          return this.tail
        }
      }
    }
    // Most rooms that keep history keep one message or a few: the first gets no spare room.
    if (this.data.length < length || this.data.length > most) this.compact(length)
    return 0
  }

  /** Where `length` bytes fit without moving the messages, or -1. */
  private free (length: number): number {
    // Empty (the last message was just dropped): the head's record is stale, and may name a place past this buffer.
    if (this.count === 0) return -1
    const capacity = this.data.length
    const oldest = this.records[this.head * STRIDE + 1] as number
    if (this.tail > oldest) {
      // In use: [oldest, tail). Free: after tail, and before oldest.
      if (capacity - this.tail >= length) return this.tail
      if (oldest >= length) return 0
    } else if (oldest - this.tail >= length) {
      // Wrapped: in use from oldest to the end, and from 0 to tail.
      return this.tail
    }
    return -1
  }

  /** Drop the oldest message, keeping the buffers as they are: `place` is about to use them. */
  private drop (): void {
    this.used -= this.records[this.head * STRIDE + 2] as number
    this.head = (this.head + 1) & (this.size - 1)
    this.count--
  }

  /** Copy the messages, in order and without gaps, to a new buffer of `capacity` bytes. */
  private compact (capacity: number): void {
    const data = Buffer.allocUnsafeSlow(capacity)
    const { records } = this
    const mask = this.size - 1
    let at = 0
    for (let i = 0; i < this.count; i++) {
      const record = ((this.head + i) & mask) * STRIDE
      const start = records[record + 1] as number
      const length = records[record + 2] as number
      data.set(this.data.subarray(start, start + length), at)
      records[record + 1] = at
      at += length
    }
    this.data = data
    this.tail = at
  }

  /** Move the records to a ring of `size` (a power of two, at least `count`), the oldest first. */
  private resize (size: number): void {
    const records = new Float64Array(size * STRIDE)
    const mask = this.size - 1
    for (let i = 0; i < this.count; i++) {
      const from = ((this.head + i) & mask) * STRIDE
      const to = i * STRIDE
      records[to] = this.records[from] as number
      records[to + 1] = this.records[from + 1] as number
      records[to + 2] = this.records[from + 2] as number
    }
    this.records = records
    this.size = size
    this.head = 0
  }
}

/**
 * A buffer size for `bytes` of messages: half as much again, so that the
 * next ones fit and the oldest leave room to wrap into, without the two to
 * four times a power-of-two doubling would hold.
 */
function grown (bytes: number): number {
  return bytes + (bytes >>> 1)
}
