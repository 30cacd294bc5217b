/**
 * A first-in first-out queue over a circular array: taking the oldest item is
 * O(1) and moves nothing, where `Array.prototype.shift` moves or trims the
 * array on every call. The array grows by doubling and never shrinks; `clear`
 * lets it go.
 */
export class Ring<T> {
  /** Power-of-two sized, so that an index wraps with a mask. */
  private items: Array<T | undefined> = []
  /** Where the oldest item is. */
  private head = 0
  private count = 0

  /** Items held. */
  get length (): number {
    return this.count
  }

  /** Add an item after the newest. */
  push (item: T): void {
    if (this.count === this.items.length) this.grow()
    this.items[(this.head + this.count) & (this.items.length - 1)] = item
    this.count++
  }

  /** Take the oldest item out; undefined when empty. */
  shift (): T | undefined {
    if (this.count === 0) return undefined
    const item = this.items[this.head]
    this.items[this.head] = undefined
    this.head = (this.head + 1) & (this.items.length - 1)
    this.count--
    return item
  }

  /** The item at `index`, 0 being the oldest; undefined outside 0..length-1. */
  at (index: number): T | undefined {
    if (!(index >= 0 && index < this.count)) return undefined
    return this.items[(this.head + index) & (this.items.length - 1)]
  }

  /** Items from `start` up to, not including, `end`, oldest first (indexes as `at`, clamped). */
  slice (start: number, end = this.count): T[] {
    const from = Math.max(0, start)
    const to = Math.min(this.count, end)
    const out: T[] = []
    for (let i = from; i < to; i++) out.push(this.items[(this.head + i) & (this.items.length - 1)] as T)
    return out
  }

  /** Drop every item and the array that held them. */
  clear (): void {
    this.items = []
    this.head = 0
    this.count = 0
  }

  private grow (): void {
    const old = this.items
    const items = new Array<T | undefined>(old.length === 0 ? 8 : old.length * 2)
    for (let i = 0; i < this.count; i++) items[i] = old[(this.head + i) & (old.length - 1)]
    this.items = items
    this.head = 0
  }
}
