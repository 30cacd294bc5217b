import { createHmac, createSecretKey, randomBytes, timingSafeEqual, type KeyObject } from 'node:crypto'
import type { Member } from './protocol.js'

/** How long a resume token names its user: long enough for a laptop that slept overnight. */
const LIFETIME_MS = 24 * 60 * 60_000

/** Bytes of HMAC-SHA256 a token carries: 128 bits cannot be guessed. */
const MAC_BYTES = 16

/**
 * Resume tokens of anonymous users. `welcome` hands one out; the client sends
 * it back as the subprotocol `fastify-rooms.resume.<token>` of its next connection (not in the URL), which then
 * keeps the same user id, so a reconnect is not a new person in its rooms.
 * A token is `id.name.expiry.mac`, each part base64url, signed with a secret
 * every node of the deployment shares (see `Adapter.secret`).
 */
export class ResumeTokens {
  /** A KeyObject, made once: createHmac with a Buffer key checks and copies it on every call. */
  private readonly secret: KeyObject

  constructor (secret: string | undefined) {
    this.secret = createSecretKey(secret === undefined ? randomBytes(32) : Buffer.from(secret))
  }

  /** A token naming `user` for the next day. */
  sign (user: Member, now = Date.now()): string {
    const body = `${encode(user.id)}.${encode(user.name)}.${(now + LIFETIME_MS).toString(36)}`
    return `${body}.${this.mac(body).toString('base64url')}`
  }

  /** The user a token names, or undefined when it is malformed, forged or expired. */
  verify (token: string, now = Date.now()): { id: string, name: string } | undefined {
    const parts = token.split('.')
    if (parts.length !== 4) return undefined
    const [id, name, expiry, mac] = parts as [string, string, string, string]
    const given = Buffer.from(mac, 'base64url')
    if (given.length !== MAC_BYTES || !timingSafeEqual(given, this.mac(`${id}.${name}.${expiry}`))) return undefined
    if (parseInt(expiry, 36) <= now) return undefined
    return { id: Buffer.from(id, 'base64url').toString(), name: Buffer.from(name, 'base64url').toString() }
  }

  private mac (body: string): Buffer {
    return createHmac('sha256', this.secret).update(body).digest().subarray(0, MAC_BYTES)
  }
}

function encode (text: string): string {
  return Buffer.from(text).toString('base64url')
}
