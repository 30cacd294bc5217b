import Type, { type Static } from 'typebox'

/** Running totals of this instance, from the plugin's counters. */
export const StatsTotals = Type.Object({
  /** Room messages published through this instance (members, `broadcast`, REST). */
  published: Type.Integer(),
  /** Room messages fanned out to this instance's members, one per member per message. */
  delivered: Type.Integer(),
  /** WebSocket messages received from clients. */
  framesReceived: Type.Integer(),
  /** WebSocket messages written to clients. */
  framesSent: Type.Integer()
})
export type StatsTotals = Static<typeof StatsTotals>

/** Per-second rates of the totals over the last `seconds`. */
export const StatsRates = Type.Object({
  seconds: Type.Number({ description: 'the span the rates are measured over: the last 10 s, less just after start' }),
  published: Type.Number(),
  delivered: Type.Number(),
  framesReceived: Type.Number(),
  framesSent: Type.Number()
})

/** The body of `GET {admin.path}/stats`. */
export const AdminStats = Type.Object({
  /** Open connections of this instance, those still authenticating included. */
  connections: Type.Integer(),
  /** Rooms with a member connected to this instance. */
  rooms: Type.Integer(),
  /** Memberships of this instance's connections (one per connection per room). */
  members: Type.Integer(),
  totals: StatsTotals,
  rates: StatsRates
})
export type AdminStats = Static<typeof AdminStats>

const KEYS = ['published', 'delivered', 'framesReceived', 'framesSent'] as const

interface Sample { at: number, totals: StatsTotals }

/**
 * Message rates from running totals: a sample each `stepMs`, the oldest kept
 * just old enough to cover `windowMs`. A rate is the change since the oldest
 * sample over the time since it, read at the moment of asking, so a publish
 * shows in the rates at once rather than at the next sample.
 */
export class Rates {
  private readonly read: () => StatsTotals
  private readonly windowMs: number
  private readonly samples: Sample[]
  private readonly timer: NodeJS.Timeout

  constructor (read: () => StatsTotals, windowMs = 10_000, stepMs = 1_000) {
    this.read = read
    this.windowMs = windowMs
    this.samples = [{ at: performance.now(), totals: read() }]
    this.timer = setInterval(() => { this.sample() }, stepMs).unref()
  }

  /** The totals now and their rates over the window. */
  current (): { totals: StatsTotals, rates: Static<typeof StatsRates> } {
    const now = performance.now()
    const totals = this.read()
    const oldest = this.samples[0] as Sample
    const seconds = (now - oldest.at) / 1000
    const rates = { seconds: round(seconds), published: 0, delivered: 0, framesReceived: 0, framesSent: 0 }
    if (seconds > 0) for (const key of KEYS) rates[key] = round((totals[key] - oldest.totals[key]) / seconds)
    return { totals, rates }
  }

  stop (): void {
    clearInterval(this.timer)
  }

  private sample (): void {
    const at = performance.now()
    this.samples.push({ at, totals: this.read() })
    while (this.samples.length > 1 && (this.samples[1] as Sample).at <= at - this.windowMs) this.samples.shift()
  }
}

function round (n: number): number {
  return Math.round(n * 1000) / 1000
}
