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
