/** Why the client asks for a token. */
export type TokenCause =
  /** The first connection of `connect()`. */
  | 'connect'
  /** A reconnect after the connection dropped (or `reconnect()`). */
  | 'reconnect'
  /** A refresh in place, ahead of `expiresAt`; the connection stays. */
  | 'refresh'
  /** The server closed with 4001 (refused, expired): the one retry with a fresh token. Skip any cached token. */
  | 'unauthorized'

/**
 * Returns the token the client authenticates with, in band (never in the
 * URL). Throw (or reject) when there is none.
 */
export type GetToken = (request: { cause: TokenCause }) => string | Promise<string>

/** The longest margin kept before `expiresAt` for the refresh, ms. */
const MAX_REFRESH_MARGIN_MS = 30_000
/** The margin as a share of the token's remaining lifetime. */
const REFRESH_MARGIN_SHARE = 0.1

/**
 * Ask the app for a token and check that it is one.
 * @throws what `getToken` threw, or a TypeError for something not a non-empty string
 */
export async function fetchToken (getToken: GetToken, cause: TokenCause): Promise<string> {
  const token: unknown = await getToken({ cause })
  if (typeof token !== 'string' || token === '') {
    throw new TypeError(`getToken must return a non-empty string, got ${token === '' ? 'an empty string' : typeof token}`)
  }
  return token
}

/**
 * How long to wait before refreshing a token that expires at `expiresAt`:
 * its lifetime less a margin of 10% of it, at most 30 s.
 * @returns undefined when, by this clock, it has expired already: the clocks
 *   disagree, and refreshing at once would repeat without end; the server's
 *   4001 at expiry is handled as any other
 */
export function refreshDelay (expiresAt: number, now: number): number | undefined {
  const lifetime = expiresAt - now
  if (!(lifetime > 0)) return undefined
  return lifetime - Math.min(lifetime * REFRESH_MARGIN_SHARE, MAX_REFRESH_MARGIN_MS)
}

/** A sentence for what a failed `getToken` threw. */
export function tokenFailure (err: unknown): string {
  const message = err instanceof Error ? err.message : String(err)
  return `getToken failed: ${message === '' ? 'it threw without a message' : message}`
}
