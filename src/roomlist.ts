import type { FastifyBaseLogger } from 'fastify'
import type { Adapter, RoomCountWatcher } from './adapters/adapter.js'
import { forbidden } from './errors.js'
import { MAX_ROOMS_PAGE, type RoomCount, type RoomsFrame, type RoomsPageFrame } from './protocol.js'
import type { Peer } from './registry.js'

export interface RoomListOptions {
  log: FastifyBaseLogger
  /** Whether `rooms` frames are answered at all. */
  enabled: boolean
  /** A subscriber gets at most one `counts` frame per interval. */
  intervalMs: number
  /** Rooms in a page when the frame gives no `limit`. */
  pageSize: number
}

/** One connection subscribed to the room list. */
interface Watch {
  peer: Peer
  prefix: string
  limit: number
  /**
   * Changes heard while one of its pages was being read: held until the last
   * page in flight is sent, so that no update reaches it before a page read
   * earlier and is overwritten by it (set while `reading > 0`).
   */
  held: Map<string, number> | undefined
  /** Pages of this watch in flight: its first page, pages without `subscribe`, a resync's page. */
  reading: number
  /** A resync came while a page was in flight (that page may predate it): a fresh first page follows it. */
  stale: boolean
}

/** A failed resync page is tried again after this, doubling each time up to RESYNC_RETRY_MAX_MS. */
export const RESYNC_RETRY_MS = 50
export const RESYNC_RETRY_MAX_MS = 5000

/**
 * The live room list: pages of rooms with their member counts, and for
 * subscribers, every count change across the cluster. Changes are coalesced
 * per node (the latest count of each room) and sent at most once per
 * interval, at most MAX_ROOMS_PAGE rooms a frame, encoded once per prefix;
 * so a busy server costs a watcher one bounded frame per interval however
 * many joins and leaves it sees.
 */
export class RoomList implements RoomCountWatcher {
  private readonly adapter: Adapter
  private readonly options: RoomListOptions
  private readonly watchers = new Map<string, Watch>()
  /** Latest count of each room changed since the last flush. */
  private readonly changed = new Map<string, number>()
  private timer: NodeJS.Timeout | undefined
  /** Whether the adapter is reporting to us; changed only through `sync`, one call at a time. */
  private watching = false
  private syncing: Promise<void> = Promise.resolve()
  private closed = false
  /** Watches whose resync page failed: read again together when `retry` fires. */
  private readonly retrying = new Set<Watch>()
  private retry: NodeJS.Timeout | undefined
  /** Failed resync rounds since the last resync, for the backoff. */
  private failures = 0

  constructor (adapter: Adapter, options: RoomListOptions) {
    this.adapter = adapter
    this.options = options
  }

  /** Answer a `rooms` frame: subscribe or unsubscribe as asked, then send the page. */
  async request (peer: Peer, frame: RoomsFrame): Promise<void> {
    if (!this.options.enabled || this.adapter.watchRooms === undefined) {
      throw forbidden(this.options.enabled ? 'This server\'s adapter cannot report room counts: list rooms over REST instead.' : 'This server does not offer its room list.')
    }
    const prefix = frame.prefix ?? ''
    const limit = frame.limit ?? this.options.pageSize
    let watch: Watch | undefined
    if (frame.subscribe === true) {
      this.stop(this.watchers.get(peer.id))
      watch = { peer, prefix, limit, held: undefined, reading: 0, stale: false }
      this.hold(watch)
      this.watchers.set(peer.id, watch)
      try {
        await this.sync()
      } catch (err) {
        if (this.watchers.get(peer.id) === watch) this.watchers.delete(peer.id)
        this.stop(watch)
        throw err
      }
    } else if (frame.subscribe === false) {
      this.drop(peer)
    } else {
      // A page only, of a subscribed connection: what changes while it is read waits for its reply,
      // or a counts frame could reach the client before a page read earlier and be overwritten by it.
      watch = this.watchers.get(peer.id)
      if (watch !== undefined) this.hold(watch)
    }
    let page: Awaited<ReturnType<Adapter['rooms']>>
    try {
      page = await this.adapter.rooms({ prefix: frame.prefix, after: frame.after, limit })
    } catch (err) {
      if (watch !== undefined) {
        // A subscription whose first page failed is not one: the client got an error, so it is
        // left unsubscribed (and its held changes dropped with it) rather than registered and mute.
        if (frame.subscribe === true) {
          if (this.watchers.get(peer.id) === watch) this.drop(peer)
          this.stop(watch)
        } else {
          this.unhold(watch)
        }
      }
      throw err
    }
    const reply: RoomsPageFrame = { type: 'rooms', rooms: page.rooms, next: page.next, subscribed: this.watchers.has(peer.id) }
    if (frame.id !== undefined) reply.id = frame.id
    peer.sendEncoded(JSON.stringify(reply))
    if (watch !== undefined) this.unhold(watch)
  }

  /** Forget a connection that closed (or unsubscribed). */
  drop (peer: Peer): void {
    const watch = this.watchers.get(peer.id)
    if (watch === undefined) return
    this.watchers.delete(peer.id)
    this.stop(watch)
    if (this.watchers.size === 0) {
      this.changed.clear()
      void this.sync().catch(() => {})
    }
  }

  /** From the adapter: a room's member count changed somewhere in the cluster. */
  count (room: string, count: number): void {
    if (this.watchers.size === 0) return
    this.changed.set(room, count)
    this.schedule()
  }

  /**
   * From the adapter: changes may have been missed; every subscriber gets a
   * fresh first page. One whose page is in flight gets it once that page is
   * out (the page may have been read before the changes were missed); pages
   * that fail are tried again together, with backoff, until they are sent,
   * their subscriptions end, or the list closes.
   */
  resync (): void {
    clearTimeout(this.retry)
    this.retry = undefined
    this.retrying.clear()
    this.failures = 0
    const now: Watch[] = []
    for (const watch of this.watchers.values()) {
      if (watch.reading > 0) watch.stale = true
      else now.push(watch)
    }
    this.refresh(now)
  }

  /**
   * Send these watches a fresh first page, unsolicited. One read per prefix
   * and page size serves every watch that wants it: they all hold their
   * changes from this moment, before it starts, so it is no older for any of
   * them. (A thousand subscribers cost the store one read, not a thousand,
   * each round.)
   */
  private refresh (watches: Iterable<Watch>): void {
    const reads = new Map<string, Watch[]>()
    for (const watch of watches) {
      if (this.closed || this.watchers.get(watch.peer.id) !== watch) continue
      watch.stale = false
      this.hold(watch)
      const key = `${watch.limit} ${watch.prefix}`
      const same = reads.get(key)
      if (same === undefined) reads.set(key, [watch])
      else same.push(watch)
    }
    for (const group of reads.values()) {
      const { prefix, limit } = group[0] as Watch
      // Through a promise: a custom adapter that throws at once must not throw out of a timer.
      Promise.resolve().then(async () => await this.adapter.rooms({ prefix: prefix === '' ? undefined : prefix, limit })).then((page) => {
        if (this.closed) return
        const frame = JSON.stringify({ type: 'rooms', rooms: page.rooms, next: page.next, subscribed: true } satisfies RoomsPageFrame)
        const stale: Watch[] = []
        for (const watch of group) {
          if (this.watchers.get(watch.peer.id) !== watch) continue
          watch.peer.sendEncoded(frame)
          this.unhold(watch, stale)
        }
        this.refresh(stale)
      }, (err: unknown) => {
        if (this.closed) return
        this.options.log.debug({ err }, 'fastify-rooms: room list resync failed; it is retried')
        const stale: Watch[] = []
        for (const watch of group) {
          if (this.watchers.get(watch.peer.id) !== watch) continue
          // A resync came meanwhile: its page (sent once no page is in flight) replaces this one.
          if (!watch.stale) this.retrying.add(watch)
          // Meanwhile the updates it holds go out: they are newer than anything it has.
          this.unhold(watch, stale)
        }
        // Those a resync marked while the read was out share one read again, not one each.
        this.refresh(stale)
        this.scheduleRetry()
      })
    }
  }

  private scheduleRetry (): void {
    if (this.retry !== undefined || this.retrying.size === 0 || this.closed) return
    const delay = Math.min(RESYNC_RETRY_MS * 2 ** this.failures, RESYNC_RETRY_MAX_MS)
    this.failures++
    this.retry = setTimeout(() => {
      this.retry = undefined
      const watches = [...this.retrying]
      this.retrying.clear()
      this.refresh(watches)
    }, delay)
    this.retry.unref()
  }

  /** The app is closing: no more frames, and the adapter stops reporting. */
  async close (): Promise<void> {
    this.closed = true
    clearTimeout(this.timer)
    clearTimeout(this.retry)
    for (const watch of this.watchers.values()) this.stop(watch)
    this.watchers.clear()
    this.changed.clear()
    await this.sync().catch(() => {})
  }

  /** Tell the adapter to report or stop, as the watchers need; calls run one after another. */
  private async sync (): Promise<void> {
    const attempt = this.syncing.then(async () => {
      const want = this.watchers.size > 0 && !this.closed
      if (want === this.watching) return
      await (this.adapter.watchRooms as NonNullable<Adapter['watchRooms']>)(want ? this : undefined)
      this.watching = want
    })
    this.syncing = attempt.catch(() => {})
    await attempt
  }

  /** A page of this watch is being read: changes for it are held until every page in flight is out. */
  private hold (watch: Watch): void {
    if (watch.reading++ === 0) watch.held = new Map()
  }

  /**
   * A page of this watch is out (or failed). Once none is in flight, what it
   * held goes with the next flush (values already newer stay), and a resync
   * that came meanwhile sends its fresh page.
   */
  private unhold (watch: Watch, stale?: Watch[]): void {
    if (watch.reading === 0 || --watch.reading > 0) return
    const held = watch.held
    watch.held = undefined
    if (this.watchers.get(watch.peer.id) !== watch) return
    if (held !== undefined && held.size > 0) {
      for (const [room, count] of held) if (!this.changed.has(room)) this.changed.set(room, count)
      this.schedule()
    }
    if (!watch.stale) return
    // Collected by a caller that releases many watches at once, to read their fresh page together.
    if (stale !== undefined) stale.push(watch)
    else this.refresh([watch])
  }

  /** A watch that ended: no retry, nothing held. */
  private stop (watch: Watch | undefined): void {
    if (watch === undefined) return
    this.retrying.delete(watch)
    watch.stale = false
    watch.held = undefined
    watch.reading = 0
  }

  private schedule (): void {
    if (this.timer !== undefined || this.closed) return
    this.timer = setTimeout(() => this.flush(), this.options.intervalMs)
    this.timer.unref()
  }

  /** Send each subscriber the changes of its prefix, at most MAX_ROOMS_PAGE rooms; the rest wait for the next interval. */
  private flush (): void {
    this.timer = undefined
    const batch: RoomCount[] = []
    for (const [name, count] of this.changed) {
      if (batch.length === MAX_ROOMS_PAGE) break
      batch.push({ name, count })
      this.changed.delete(name)
    }
    const encoded = new Map<string, string | undefined>()
    for (const watch of this.watchers.values()) {
      if (watch.held !== undefined) {
        for (const { name, count } of batch) if (name.startsWith(watch.prefix)) watch.held.set(name, count)
        continue
      }
      let frame = encoded.get(watch.prefix)
      if (!encoded.has(watch.prefix)) {
        const rooms = watch.prefix === '' ? batch : batch.filter((room) => room.name.startsWith(watch.prefix))
        frame = rooms.length === 0 ? undefined : JSON.stringify({ type: 'counts', rooms })
        encoded.set(watch.prefix, frame)
      }
      if (frame !== undefined) watch.peer.sendEncoded(frame)
    }
    if (this.changed.size > 0) this.schedule()
  }
}
