import type { Room } from '../../src/client/index.js'

// A leave the server refuses with RATE_LIMITED, kept as it is: a join held by a slow onJoin, a publish that fills
// the 1 KiB that may wait behind it, then the leave, which does not fit.

/** An onJoin that holds joins of `slow` until the test opens the gate: the connection's next frames wait behind it. */
export function slowJoins (): { entered: Promise<void>, release: () => void, onJoin: (ctx: { room: string }) => Promise<boolean> } {
  let entered!: () => void
  let release!: () => void
  const reached = new Promise<void>((resolve) => { entered = resolve })
  const gate = new Promise<void>((resolve) => { release = resolve })
  return {
    entered: reached,
    release,
    onJoin: async ({ room }) => {
      if (room === 'slow') {
        entered()
        await gate
      }
      return true
    }
  }
}

/**
 * Fill the 1 KiB that may wait behind the slow hook: a publish frame of about 1,000 bytes, so that the next
 * frame does not fit. Its data is over `maxMessageBytes` (64): once handled it is refused, small, rather than
 * come back as a large message that the server, with its buffers at 1 KiB, would take for a slow consumer.
 */
export function fillWait (room: Room<unknown> | undefined): void {
  if (room === undefined) throw new Error('no handle to publish through')
  room.publish('x'.repeat(950)).catch(() => {})
}

export const LIMITS = { maxBufferedBytes: 1024, maxMessageBytes: 64 }
