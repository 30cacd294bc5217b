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
   * Changes heard while its page was being read: held until the page is sent,
   * so that no update reaches it before the page and is overwritten by it.
   */
  held: Map<string, number> | undefined
}

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
      watch = { peer, prefix, limit, held: new Map() }
      this.watchers.set(peer.id, watch)
      try {
        await this.sync()
      } catch (err) {
        if (this.watchers.get(peer.id) === watch) this.watchers.delete(peer.id)
        throw err
      }
    } else if (frame.subscribe === false) {
      this.drop(peer)
    }
    const page = await this.adapter.rooms({ prefix: frame.prefix, after: frame.after, limit })
    const reply: RoomsPageFrame = { type: 'rooms', rooms: page.rooms, next: page.next, subscribed: this.watchers.has(peer.id) }
    if (frame.id !== undefined) reply.id = frame.id
    peer.sendEncoded(JSON.stringify(reply))
    if (watch !== undefined) this.release(watch)
  }

  /** Forget a connection that closed (or unsubscribed). */
  drop (peer: Peer): void {
    if (!this.watchers.delete(peer.id)) return
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

  /** From the adapter: changes may have been missed; every subscriber gets a fresh first page. */
  resync (): void {
    for (const watch of this.watchers.values()) {
      if (watch.held !== undefined) continue
      watch.held = new Map()
      this.adapter.rooms({ prefix: watch.prefix === '' ? undefined : watch.prefix, limit: watch.limit }).then((page) => {
        if (this.watchers.get(watch.peer.id) !== watch) return
        const frame: RoomsPageFrame = { type: 'rooms', rooms: page.rooms, next: page.next, subscribed: true }
        watch.peer.sendEncoded(JSON.stringify(frame))
        this.release(watch)
      }, (err: unknown) => {
        // Still away: the next recovery resyncs again; meanwhile the updates it holds go out.
        this.options.log.debug({ err }, 'fastify-rooms: room list resync failed')
        this.release(watch)
      })
    }
  }

  /** The app is closing: no more frames, and the adapter stops reporting. */
  async close (): Promise<void> {
    this.closed = true
    clearTimeout(this.timer)
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

  /** A watcher's page is out: what it held is sent with the next flush (values already newer stay). */
  private release (watch: Watch): void {
    const held = watch.held
    watch.held = undefined
    if (held === undefined || held.size === 0) return
    for (const [room, count] of held) if (!this.changed.has(room)) this.changed.set(room, count)
    this.schedule()
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
