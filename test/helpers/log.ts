import { waitUntil } from './waiters.js'
import { WAIT_MS } from './until.js'

export interface LogSink {
  /** Every line the app logged, parsed, in order. */
  lines: Array<Record<string, any>>
  /** The same lines as written. */
  raw: string[]
  /** A pino destination: `{ logger: { stream } }`. */
  stream: { write: (text: string) => void }
  /**
   * Resolve once `done()` holds, checked as each line is written (the
   * logger's write is the event: nothing polls); fails after `ms` naming
   * `what`, with the last lines logged.
   */
  logged: (done: () => boolean, what: string, ms?: number) => Promise<void>
  /** The first line that matches, once it is logged. */
  line: (match: (line: Record<string, any>) => boolean, what: string, ms?: number) => Promise<Record<string, any>>
}

/** A destination for an app's log lines that tests can wait on. */
export function logSink (): LogSink {
  const lines: Array<Record<string, any>> = []
  const raw: string[] = []
  const waiters = new Set<() => void>()
  const stream = {
    write: (text: string): void => {
      // pino writes one line a call; split anyway, in case a destination ever gets several.
      for (const line of text.split('\n')) {
        if (line === '') continue
        raw.push(line)
        lines.push(JSON.parse(line))
      }
      for (const wake of [...waiters]) wake()
    }
  }
  const logged = async (done: () => boolean, what: string, ms = WAIT_MS): Promise<void> => {
    await waitUntil(waiters, done, ms, () => `timed out after ${ms} ms waiting until ${what}; last lines: ${raw.slice(-5).join(' ').slice(0, 800)}`)
  }
  const line = async (match: (line: Record<string, any>) => boolean, what: string, ms = WAIT_MS): Promise<Record<string, any>> => {
    await logged(() => lines.some(match), what, ms)
    return lines.find(match) as Record<string, any>
  }
  return { lines, raw, stream, logged, line }
}
