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

  private async pass (method: Gated): Promise<void> {
    const gate = this.held.get(method)?.shift()
    if (gate === undefined) return
    gate.reached()
    const err = await gate.released
    if (err !== undefined) throw err
  }

  override async join (...args: Parameters<MemoryAdapter['join']>): ReturnType<MemoryAdapter['join']> {
    this.asked.push('join')
    try {
      return await super.join(...args)
    } finally {
      // A refusal (ROOM_FULL) is held too.
      await this.pass('join')
    }
  }

  override async room (...args: Parameters<MemoryAdapter['room']>): ReturnType<MemoryAdapter['room']> {
    this.asked.push('room')
    const result = await super.room(...args)
    await this.pass('room')
    return result
  }

  /** Held before it reads, so what is published meanwhile is in its page. */
  override async history (...args: Parameters<MemoryAdapter['history']>): ReturnType<MemoryAdapter['history']> {
    this.asked.push('history')
    await this.pass('history')
    return await super.history(...args)
  }

  /** Held before it stores, as `history`. */
  override async publish (...args: Parameters<MemoryAdapter['publish']>): ReturnType<MemoryAdapter['publish']> {
    this.asked.push('publish')
    await this.pass('publish')
    return await super.publish(...args)
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
