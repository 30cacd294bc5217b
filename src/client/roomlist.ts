import type { RoomCount, RoomCountsFrame, RoomsPageFrame } from '../protocol.js'
import { Emitter } from './emitter.js'
import { compareCodePoints } from './order.js'

export type { RoomCount }

export interface WatchRoomsOptions {
  /** Only rooms whose name starts with it. */
  prefix?: string
  /** Rooms in the first page (default: the server's, 100); changes of every matching room follow whatever the page held. */
  limit?: number
}

/** What a room list `change` event says happened. */
export interface RoomListChange {
  /** The rooms whose count changed (0: it has no members any more). */
  changed: readonly RoomCount[]
  /** True when the list was replaced by a fresh page (the first one, after a reconnect, or after the server missed changes). */
  reset: boolean
}

type RoomListEvents = {
  change: (change: RoomListChange) => void
}

/** What the client does for a RoomList: send its frames. */
export interface RoomListOwner {
  /** @internal */
  requestRooms (frame: Record<string, unknown>): Promise<RoomsPageFrame>
  /** @internal */
  stopRooms (list: RoomList): void
}

/**
 * The live room list, from `client.watchRooms()`: rooms with members and
 * their member counts, kept current by the server's coalesced `counts`
 * updates, and read again after every reconnect.
 */
export class RoomList extends Emitter<RoomListEvents> {
  readonly prefix: string
  readonly limit: number | undefined
  /** Room name -> member count. */
  readonly rooms = new Map<string, number>()
  /** Pass to `more()`: whether the first page left rooms out (their changes still arrive). */
  next: string | null = null
  /** @internal Set by the first page. */
  started = false
  private readonly owner: RoomListOwner
  private stopped = false

  /** @internal */
  constructor (owner: RoomListOwner, options: WatchRoomsOptions) {
    super()
    this.owner = owner
    this.prefix = options.prefix ?? ''
    this.limit = options.limit
  }

  /** The rooms sorted by name. */
  list (): RoomCount[] {
    return [...this.rooms].map(([name, count]) => ({ name, count })).sort((a, b) => compareCodePoints(a.name, b.name))
  }

  /** Load the next page of rooms into the list; resolves false when there was none. */
  async more (): Promise<boolean> {
    if (this.next === null || this.stopped) return false
    const frame: Record<string, unknown> = { type: 'rooms', after: this.next }
    if (this.prefix !== '') frame.prefix = this.prefix
    if (this.limit !== undefined) frame.limit = this.limit
    const page = await this.owner.requestRooms(frame)
    if (this.stopped) return false
    for (const room of page.rooms) if (!this.rooms.has(room.name)) this.rooms.set(room.name, room.count)
    this.next = page.next
    this.emit('change', { changed: page.rooms, reset: false })
    return true
  }

  /** Stop the updates; the server is told when connected. */
  stop (): void {
    if (this.stopped) return
    this.stopped = true
    this.owner.stopRooms(this)
  }

  /** @internal The frame that (re)starts the subscription. */
  subscribeFrame (): Record<string, unknown> {
    const frame: Record<string, unknown> = { type: 'rooms', subscribe: true }
    if (this.prefix !== '') frame.prefix = this.prefix
    if (this.limit !== undefined) frame.limit = this.limit
    return frame
  }

  /** @internal A first page: it replaces the list. */
  applyPage (frame: RoomsPageFrame): void {
    if (this.stopped) return
    this.started = true
    this.rooms.clear()
    for (const room of frame.rooms) this.rooms.set(room.name, room.count)
    this.next = frame.next
    this.emit('change', { changed: frame.rooms, reset: true })
  }

  /** @internal */
  applyCounts (frame: RoomCountsFrame): void {
    if (this.stopped) return
    for (const { name, count } of frame.rooms) {
      if (count === 0) this.rooms.delete(name)
      else this.rooms.set(name, count)
    }
    this.emit('change', { changed: frame.rooms, reset: false })
  }
}
