import { randomBytes, randomUUID } from 'node:crypto'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { Compile } from 'typebox/compile'
import { Member } from './protocol.js'
import { InvalidNameError, OriginNotAllowedError, ShuttingDownError, TooManyConnectionsError, UnauthorizedError } from './errors.js'
import type { ResolvedOptions } from './options.js'

const memberValidator = Compile(Member)
/** 1-32 characters, none of them control or format characters. */
const printableName = /^[^\p{C}]{1,32}$/u

export interface UpgradeState {
  /** Set once `app.close()` starts. */
  closing: boolean
  /** Open connections of this registration. */
  connections: () => number
}

/**
 * Build the `preValidation` hook of the WebSocket route: everything that can
 * refuse a connection does so here, with an HTTP status, before the upgrade.
 * @returns the hook, and a lookup of the identity it settled for a request
 */
export function upgradeGuard (options: ResolvedOptions, state: UpgradeState): {
  hook: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  userOf: (request: FastifyRequest) => Member
} {
  const users = new WeakMap<FastifyRequest, Member>()
  const allowed = options.allowedOrigins === undefined ? undefined : new Set(options.allowedOrigins)

  async function hook (request: FastifyRequest): Promise<void> {
    if (state.closing) throw new ShuttingDownError()
    const origin = request.headers.origin
    if (allowed !== undefined && (origin === undefined || !allowed.has(origin))) {
      throw new OriginNotAllowedError(origin ?? '(none)')
    }
    if (state.connections() >= options.maxConnections) throw new TooManyConnectionsError(options.maxConnections)
    users.set(request, options.authenticate === undefined ? anonymous(request) : await authenticated(request))
  }

  async function authenticated (request: FastifyRequest): Promise<Member> {
    let user: unknown
    try {
      user = await (options.authenticate as NonNullable<ResolvedOptions['authenticate']>)(request)
    } catch (err) {
      request.log.info({ err }, 'fastify-rooms: authenticate refused an upgrade')
      throw new UnauthorizedError()
    }
    if (user === undefined || user === null) throw new UnauthorizedError()
    if (!memberValidator.Check(user)) {
      throw new Error('fastify-rooms: authenticate must return an object with a non-empty string id and a string name.')
    }
    return user
  }

  return { hook, userOf: (request) => users.get(request) as Member }
}

function anonymous (request: FastifyRequest): Member {
  const name = (request.query as Record<string, unknown> | undefined)?.name
  if (name === undefined || name === '') return { id: randomUUID(), name: `guest-${randomBytes(2).toString('hex')}` }
  if (typeof name !== 'string' || !printableName.test(name) || name.trim() === '') throw new InvalidNameError()
  return { id: randomUUID(), name }
}
