/**
 * Wait until `done()` holds. Whoever changes what it reads calls every
 * function in `waiters`, so nothing polls; the timer only bounds the wait,
 * and its error says what was missing (`missing()` at that moment).
 */
export async function waitUntil (waiters: Set<() => void>, done: () => boolean, ms: number, missing: () => string): Promise<void> {
  if (done()) return
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      waiters.delete(check)
      reject(new Error(missing()))
    }, ms)
    const check = (): void => {
      if (!done()) return
      clearTimeout(timer)
      waiters.delete(check)
      resolve()
    }
    waiters.add(check)
  })
}
