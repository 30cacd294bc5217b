import { MemoryAdapter } from '../../src/index.js'

type Gated = 'join' | 'room' | 'history' | 'publish'

/**
 * A memory store whose next calls of a method can be held, as a store across
 * a network holds its answer: each `hold` arms one call, in call order;
 * `entered` says the call came (its work done, its answer not yet given; a
 * history read and a publish are held before they run), `release` lets the
 * answer go, or fails it with `err` (a join's or a room read's work was done
 * all the same, as when a reply is lost).
 */
export class HeldStore extends MemoryAdapter {
  /** The gated methods called so far, in order, recorded as each call begins. */
  readonly asked: Gated[] = []
  /** The methods of the gated calls begun and not answered yet (held, or still at work), one entry a call. */
  readonly unanswered: Gated[] = []
  private readonly held = new Map<Gated, Array<{ reached: () => void, released: Promise<Error | undefined> }>>()

  hold (method: Gated): { entered: Promise<void>, release: (err?: Error) => void } {
    let reached = (): void => {}
    let release = (_err?: Error): void => {}
    const entered = new Promise<void>((resolve) => { reached = resolve })
    const released = new Promise<Error | undefined>((resolve) => { release = resolve })
    const queue = this.held.get(method) ?? []
    queue.push({ reached, released })
    this.held.set(method, queue)
    return { entered, release }
  }

  /** A call begins: recorded in `asked`, and in `unanswered` until `answered`. */
  private begin (method: Gated): void {
    this.asked.push(method)
    this.unanswered.push(method)
  }

  /** Called as a call settles, in the same turn as its promise (no await of its own: the calls keep their timing). */
  private answered (method: Gated): void {
    this.unanswered.splice(this.unanswered.indexOf(method), 1)
  }

  private async pass (method: Gated): Promise<void> {
    const gate = this.held.get(method)?.shift()
    if (gate === undefined) return
    gate.reached()
    const err = await gate.released
    if (err !== undefined) throw err
  }

  override async join (...args: Parameters<MemoryAdapter['join']>): ReturnType<MemoryAdapter['join']> {
    this.begin('join')
    try {
      try {
        return await super.join(...args)
      } finally {
        // A refusal (ROOM_FULL) is held too.
        await this.pass('join')
      }
    } finally {
      this.answered('join')
    }
  }

  override async room (...args: Parameters<MemoryAdapter['room']>): ReturnType<MemoryAdapter['room']> {
    this.begin('room')
    try {
      const result = await super.room(...args)
      await this.pass('room')
      return result
    } finally {
      this.answered('room')
    }
  }

  /** Held before it reads, so what is published meanwhile is in its page. */
  override async history (...args: Parameters<MemoryAdapter['history']>): ReturnType<MemoryAdapter['history']> {
    this.begin('history')
    try {
      await this.pass('history')
      return await super.history(...args)
    } finally {
      this.answered('history')
    }
  }

  /** Held before it stores, as `history`. */
  override async publish (...args: Parameters<MemoryAdapter['publish']>): ReturnType<MemoryAdapter['publish']> {
    this.begin('publish')
    try {
      await this.pass('publish')
      return await super.publish(...args)
    } finally {
      this.answered('publish')
    }
  }
}

/**
 * Arm `store` so that its next join, once `lower` is set, answers with the
 * room's epoch but offset 1: a count below what a rejoin sent. Any memory
 * store: on a plain MemoryAdapter, member publishes keep the adapter's
 * synchronous path, which HeldStore's `publish` turns off.
 */
export function lowerOnce<T extends MemoryAdapter> (store: T): T & { lower: boolean } {
  const armed = Object.assign(store, { lower: false })
  const join = store.join.bind(store)
  armed.join = async (...args) => {
    const result = await join(...args)
    if (!armed.lower) return result
    armed.lower = false
    return { ...result, offset: 1 }
  }
  return armed
}
