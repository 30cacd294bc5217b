// Type tests of the admin option, run by `tsc -p test/types` in `npm test`.
import Fastify from 'fastify'
import rooms, { type AdminGuard, type AdminOptions, type AdminStats } from '../../src/index.js'

const app = Fastify()

await app.register(rooms, { admin: true })
await app.register(rooms, { admin: false })
await app.register(rooms, { admin: { path: '/ops/rooms' } })
// A plain Fastify preHandler fits; the user is the third argument.
await app.register(rooms, { admin: { preHandler: async (request, reply) => { if (request.headers['x-key'] !== 'k') await reply.code(401).send() } } })
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
