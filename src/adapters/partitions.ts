import { SLOTS, slotOf } from './slot.js'

/**
 * Where a room's Redis keys and channel live. On one Redis every room shares
 * the key prefix. On a Redis Cluster each room belongs to one of `count`
 * partitions, and the partition's hash tag (`{...}`) is in every key and
 * channel of its rooms: a room's keys share one hash slot, so each Lua call
 * is atomic on one shard, and its channel is a sharded channel of that shard.
 * The partition's bookkeeping (its rooms for the listing, its history budget,
 * which node holds which of its connections) shares the slot too, so no call
 * ever spans two shards. The tags are chosen so that the partitions spread
 * evenly over the 16384 slots, and so over masters that own equal slot ranges
 * (what `redis-cli --cluster create` sets up).
 *
 * Every node of an app must agree on this layout: it depends only on the
 * prefix and the partition count.
 */
export class Partitions {
  /** The key base of each partition: the prefix, plus the hash tag on a cluster. */
  readonly bases: readonly string[]
  /** The hash slot of each partition's keys, by key base (0 on one Redis, where slots do not apply). */
  private readonly slots = new Map<string, number>()

  /**
   * @param prefix the key prefix, shared by every key of the app
   * @param count partitions on a cluster; `undefined` on one Redis (one partition, no tag)
   */
  constructor (prefix: string, count: number | undefined) {
    if (count === undefined) {
      this.bases = [prefix]
      return
    }
    const bases: string[] = []
    for (let i = 0; i < count; i++) {
      const tag = tagFor(i, count)
      bases.push(`${prefix}{${tag}}`)
      this.slots.set(`${prefix}{${tag}}`, slotOf(tag))
    }
    this.bases = bases
  }

  /** The hash slot of a partition's keys and channels. */
  slot (base: string): number {
    return this.slots.get(base) ?? 0
  }

  /** The key base of a room's partition. */
  base (room: string): string {
    const bases = this.bases
    return bases.length === 1 ? bases[0] as string : bases[fnv1a(room) % bases.length] as string
  }

  /** Rooms grouped by the key base of their partition. */
  group (rooms: Iterable<string>): Map<string, string[]> {
    const groups = new Map<string, string[]>()
    for (const room of rooms) {
      const base = this.base(room)
      const group = groups.get(base)
      if (group === undefined) groups.set(base, [room])
      else group.push(room)
    }
    return groups
  }
}

/** The first tag `<i>.<n>` whose slot falls in the i-th of `count` equal slot ranges. */
function tagFor (i: number, count: number): string {
  const low = Math.floor(i * SLOTS / count)
  const high = Math.floor((i + 1) * SLOTS / count)
  for (let n = 0; ; n++) {
    const tag = `${i}.${n}`
    const slot = slotOf(tag)
    if (slot >= low && slot < high) return tag
  }
}

/** FNV-1a over UTF-16 code units: stable across nodes and versions, cheap for short names. */
function fnv1a (text: string): number {
  let hash = 0x811c9dc5
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i)
    hash = Math.imul(hash, 0x01000193)
  }
  return hash >>> 0
}
