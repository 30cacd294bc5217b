/**
 * Wait, turn by turn of the event loop, until a condition holds; fail after
 * `ms`. For states Node settles a turn or two after the event that caused them
 * (a closed handle leaving the active list), where there is no event to await.
 */
export async function until (condition: () => boolean, what: string, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 1))
  }
}

/** How long a guarded wait may take before the test fails (a guard, not a synchronisation). */
export const WAIT_MS = 10_000

/**
 * Settle as `promise` does, but fail after `ms` naming `what`, and at once
 * when one of `abort` settles first (a socket's `closed`, a room's `left`):
 * the awaited thing can no longer happen, so the wait must not hang until
 * tap's file timeout.
 */
export async function guard<T> (promise: Promise<T>, what: string, options: { ms?: number, abort?: Array<Promise<unknown>> } = {}): Promise<T> {
  const { ms = WAIT_MS, abort = [] } = options
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)
  })
  const aborted = abort.map(async (p) => await p.then((value) => {
    throw new Error(`ended (${JSON.stringify(value)?.slice(0, 200)}) while waiting for ${what}`)
  }))
  try {
    return await Promise.race([promise, timeout, ...aborted])
  } finally {
    clearTimeout(timer)
  }
}
