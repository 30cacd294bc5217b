// Type tests of the admin option, run by `tsc -p test/types` in `npm test`.
import Fastify from 'fastify'
import rooms, { type AdminGuard, type AdminOptions, type AdminStats } from '../../src/index.js'

const app = Fastify()

await app.register(rooms, { admin: true })
await app.register(rooms, { admin: false })
await app.register(rooms, { admin: { path: '/ops/rooms' } })
// Called like a Fastify preHandler, with the user as the third argument: it says true to let an admin in, and may reply or throw to refuse.
await app.register(rooms, { admin: { preHandler: async (request, reply) => { if (request.headers['x-key'] !== 'k') { await reply.code(401).send(); return false } return true } } })
// @ts-expect-error a guard that returns nothing would refuse everyone: it says true or false
await app.register(rooms, { admin: { preHandler: async (request, reply) => { if (request.headers['x-key'] !== 'k') await reply.code(401).send() } } })
// @ts-expect-error undefined, for a user without the flag, is no verdict: compare with === true
await app.register(rooms, { admin: { preHandler: (_request, _reply, user) => (user as { isAdmin?: boolean } | undefined)?.isAdmin } })
const guard: AdminGuard = (_request, _reply, user) => user?.id === 'root'
const options: AdminOptions = { preHandler: guard }
await app.register(rooms, { authenticate: () => ({ id: 'u', name: 'u' }), admin: options })
const stats = {} as AdminStats
const perSecond: number = stats.rates.published
void perSecond

// @ts-expect-error admin is a boolean or an object, not a path
await app.register(rooms, { admin: '/admin' })
// @ts-expect-error path is a string
await app.register(rooms, { admin: { path: true } })
// @ts-expect-error an unknown key is a typo
await app.register(rooms, { admin: { prehandler: guard } })
