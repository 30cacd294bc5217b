import type { FastifyRequest } from 'fastify'
import { Compile } from 'typebox/compile'
import { Member } from './protocol.js'
import { unauthorized } from './errors.js'
import type { ResolvedOptions } from './options.js'
import { LONE_SURROGATE } from './json-span.js'

const memberValidator = Compile(Member)

/** Who a connection or a REST request is, and until when its credentials hold. */
export interface Identity {
  user: Member
  /** Epoch ms; absent when the credentials do not expire. */
  expiresAt?: number | undefined
  /** Anonymous users only: the resume token `welcome` hands out. */
  resume?: string | undefined
}

/**
 * The credentials the app configured, checked the same way for an upgrade, an
 * in-band `auth` frame and a REST request, so REST is never more open than the
 * socket. Refusals throw `UNAUTHORIZED`; a hook that returns something
 * malformed throws a plain Error (an app bug, a server error).
 */
export class Credentials {
  private readonly options: ResolvedOptions

  constructor (options: ResolvedOptions) {
    this.options = options
  }

  /** True when the app configured any authentication. */
  get required (): boolean {
    return this.options.authenticate !== undefined || this.options.verifyToken !== undefined
  }

  /** True when a connection may authenticate in band with a token. */
  get tokens (): boolean {
    return this.options.verifyToken !== undefined
  }

  /**
   * The identity a request's cookie or headers prove: `authenticate` first,
   * then an `Authorization: Bearer` token for `verifyToken`. Null when it
   * carries neither.
   */
  async identify (request: FastifyRequest): Promise<Identity | null> {
    const { authenticate } = this.options
    if (authenticate !== undefined) {
      let user: unknown
      const unanswered = unauthorized('unanswered')
      try {
        user = await this.bounded(authenticate(request), unanswered)
      } catch (err) {
        if (err === unanswered) throw err
        request.log.info({ err }, 'fastify-rooms: authenticate refused a request')
        throw unauthorized('badToken')
      }
      if (user !== undefined && user !== null) return { user: checkUser(user, 'authenticate must return') }
    }
    const token = bearer(request)
    if (token === undefined || !this.tokens) return null
    return await this.verify(token, request)
  }

  /** Check a token with `verifyToken`; an expired one is refused like a bad one. */
  async verify (token: string, request: FastifyRequest): Promise<Identity> {
    const verifyToken = this.options.verifyToken as NonNullable<ResolvedOptions['verifyToken']>
    let result: unknown
    const unanswered = unauthorized('unanswered')
    try {
      result = await this.bounded(verifyToken(token, request), unanswered)
    } catch (err) {
      if (err === unanswered) throw err
      // The thrown error is the app's and may quote the token: it is not logged.
      throw unauthorized('badToken')
    }
    if (result === null || typeof result !== 'object') throw new Error('fastify-rooms: verifyToken must resolve with { user, expiresAt? } or throw.')
    const { user, expiresAt } = result as { user?: unknown, expiresAt?: unknown }
    if (expiresAt !== undefined && (typeof expiresAt !== 'number' || !Number.isFinite(expiresAt))) {
      throw new Error('fastify-rooms: verifyToken must resolve with expiresAt as epoch milliseconds (a finite number), or without it.')
    }
    const identity: Identity = { user: checkUser(user, 'verifyToken must resolve with a user that is') }
    if (expiresAt !== undefined) {
      if (expiresAt <= Date.now()) throw unauthorized('expired')
      identity.expiresAt = Math.ceil(expiresAt)
    }
    return identity
  }

  /**
   * An app's check, bounded by `authTimeoutMs` like every call: one that never
   * answers must not hold a refresh, a REST request or an upgrade (and its
   * place under `maxConnections`) for ever. Past it, rejects with `late`.
   */
  private async bounded<T> (check: T | Promise<T>, late: Error): Promise<T> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(late), this.options.authTimeoutMs)
    })
    try {
      return await Promise.race([check, timeout])
    } finally {
      clearTimeout(timer)
    }
  }
}

/** The token of an `Authorization: Bearer <token>` header. */
function bearer (request: FastifyRequest): string | undefined {
  const header = request.headers.authorization
  if (header === undefined || header.length < 8 || header.slice(0, 7).toLowerCase() !== 'bearer ') return undefined
  const token = header.slice(7).trim()
  return token === '' ? undefined : token
}

function checkUser (user: unknown, what: string): Member {
  if (!memberValidator.Check(user)) throw new Error(`fastify-rooms: ${what} an object with a non-empty string id and a string name.`)
  // Redis stores an id as UTF-8, where a lone surrogate becomes U+FFFD: two users would share one record, and
  // member pages would sort and page differently on each adapter.
  if (LONE_SURROGATE.test(user.id)) throw new Error(`fastify-rooms: ${what} an object whose id is well-formed text (no lone surrogate).`)
  // Every frame that carries the user is JSON: a BigInt, a cycle or a throwing
  // toJSON must fail here, as the app's error, not later in a frame's encoding.
  try {
    JSON.stringify(user)
  } catch (err) {
    throw new Error(`fastify-rooms: ${what} an object JSON.stringify can encode (${(err as Error).message}).`)
  }
  return user
}

/**
 * What other clients see of a user (`joined.members`, `presence`,
 * `message.from`, REST): only the `publicUserFields`. The same object is
 * returned when nothing is hidden, so its encoding is shared.
 */
export function publicView (user: Member, fields: ReadonlySet<string>): Member {
  let hidden = false
  for (const key in user) {
    if (!fields.has(key)) {
      hidden = true
      break
    }
  }
  if (!hidden) return user
  const view: Record<string, unknown> = {}
  for (const field of fields) if (Object.hasOwn(user, field)) view[field] = (user as Record<string, unknown>)[field]
  return view as Member
}
