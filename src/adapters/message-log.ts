import type { StoredMessage } from './adapter.js'

/** The smallest byte store a log allocates. */
const MIN_BYTES = 1024
/** Records a log makes room for at first. */
const MIN_RECORDS = 8
/** What an empty log holds: shared, never written (the first message allocates its own). */
const EMPTY = Buffer.alloc(0)
const NO_OFFSETS = new Float64Array(0)
const NO_PLACES = new Uint32Array(0)

/**
 * A room's stored messages, oldest first, kept outside the JS heap: their
 * bytes in one circular buffer, their offsets and places in typed arrays. A
 * message kept as a string lives long enough to be promoted to the old
 * generation, and a busy server then promotes every message it keeps; here
 * keeping one is a copy of its bytes, and the collector never sees it.
 *
 * Each message's bytes are contiguous: one that does not fit before the end
 * of the buffer goes to its start when the oldest messages have left room
 * there; when neither fits, the messages move to a new buffer of two to four
 * times their bytes. The buffer also moves to a smaller one when less than a
 * quarter of it is in use, so it never holds more than four times the bytes
 * of its messages (or 1 KiB).
 */
export class MessageLog {
  private data: Buffer = EMPTY
  /** Per message, in a ring of power-of-two size starting at `head`. */
  private offsets = NO_OFFSETS
  private starts = NO_PLACES
  private lengths = NO_PLACES
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

  /** Keep a message (a copy of `bytes`) after the newest. */
  push (offset: number, bytes: Buffer): void {
    const length = bytes.length
    if (this.count === this.offsets.length) this.growRecords()
    const at = this.place(length)
    // TypedArray set: a plain copy, without Buffer.copy's bounds arithmetic.
    this.data.set(bytes, at)
    const slot = (this.head + this.count) & (this.offsets.length - 1)
    this.offsets[slot] = offset
    this.starts[slot] = at
    this.lengths[slot] = length
    this.count++
    this.used += length
    this.tail = at + length
  }

  /** Drop the oldest message; returns its byte length (0 when empty). */
  shift (): number {
    if (this.count === 0) return 0
    const length = this.lengths[this.head] as number
    this.head = (this.head + 1) & (this.offsets.length - 1)
    this.count--
    this.used -= length
    if (this.count === 0) {
      this.tail = 0
      if (this.data.length > MIN_BYTES) this.data = EMPTY
    } else if (this.data.length > MIN_BYTES && this.used * 4 < this.data.length) {
      this.compact(roomFor(this.used))
    }
    return length
  }

  /**
   * The index of the oldest message whose offset is above `offset` (`length`
   * when none is). Offsets rise but may skip: a message too large for the
   * history budget is delivered and never kept.
   */
  indexAfter (offset: number): number {
    const mask = this.offsets.length - 1
    let low = 0
    let high = this.count
    while (low < high) {
      const middle = (low + high) >>> 1
      if ((this.offsets[(this.head + middle) & mask] as number) > offset) high = middle
      else low = middle + 1
    }
    return low
  }

  /** Messages from `start` up to, not including, `end`, oldest first, their frames decoded. */
  slice (start: number, end: number = this.count): StoredMessage[] {
    const from = Math.max(0, start)
    const to = Math.min(this.count, end)
    const out: StoredMessage[] = []
    for (let i = from; i < to; i++) {
      const slot = (this.head + i) & (this.offsets.length - 1)
      const at = this.starts[slot] as number
      out.push({ offset: this.offsets[slot] as number, frame: this.data.toString('utf8', at, at + (this.lengths[slot] as number)) })
    }
    return out
  }

  /** Drop every message and let the buffers go. */
  clear (): void {
    this.data = EMPTY
    this.offsets = NO_OFFSETS
    this.starts = NO_PLACES
    this.lengths = NO_PLACES
    this.head = 0
    this.count = 0
    this.used = 0
    this.tail = 0
  }

  /** Where `length` bytes go: after the newest message, at the start of the buffer, or in a larger one. */
  private place (length: number): number {
    const capacity = this.data.length
    if (this.count === 0) {
      if (capacity < length) this.compact(roomFor(length))
      return 0
    }
    const oldest = this.starts[this.head] as number
    if (this.tail > oldest) {
      // In use: [oldest, tail). Free: after tail, and before oldest.
      if (capacity - this.tail >= length) return this.tail
      if (oldest >= length) return 0
    } else if (oldest - this.tail >= length) {
      // Wrapped: in use from oldest to the end, and from 0 to tail.
      return this.tail
    }
    this.compact(roomFor(this.used + length))
    return this.tail
  }

  /** Copy the messages, in order and without gaps, to a new buffer of `capacity` bytes. */
  private compact (capacity: number): void {
    const data = Buffer.allocUnsafeSlow(capacity)
    const mask = this.offsets.length - 1
    let at = 0
    for (let i = 0; i < this.count; i++) {
      const slot = (this.head + i) & mask
      const start = this.starts[slot] as number
      const length = this.lengths[slot] as number
      data.set(this.data.subarray(start, start + length), at)
      this.starts[slot] = at
      at += length
    }
    this.data = data
    this.tail = at
  }

  private growRecords (): void {
    const size = Math.max(MIN_RECORDS, this.offsets.length * 2)
    const offsets = new Float64Array(size)
    const starts = new Uint32Array(size)
    const lengths = new Uint32Array(size)
    const mask = this.offsets.length - 1
    for (let i = 0; i < this.count; i++) {
      const slot = (this.head + i) & mask
      offsets[i] = this.offsets[slot] as number
      starts[i] = this.starts[slot] as number
      lengths[i] = this.lengths[slot] as number
    }
    this.offsets = offsets
    this.starts = starts
    this.lengths = lengths
    this.head = 0
  }
}

/** A buffer size for `bytes` of messages: twice as many (rounded up to a power of two), so that the next ones fit. */
function roomFor (bytes: number): number {
  return Math.max(MIN_BYTES, 2 ** Math.ceil(Math.log2(2 * bytes)))
}
