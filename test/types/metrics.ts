// Type tests of the metrics option, run by `tsc -p test/types` in `npm test`.
import Fastify from 'fastify'
import { Registry } from 'prom-client'
import rooms, { type MetricsGuard, type MetricsOptions } from '../../src/index.js'

const app = Fastify()

await app.register(rooms, { metrics: true })
await app.register(rooms, { metrics: false })
await app.register(rooms, { metrics: { path: '/internal/metrics', rooms: ['lobby'], register: new Registry() } })
await app.register(rooms, { metrics: { path: false, register: new Registry() } })
const guard: MetricsGuard = async (request, reply) => {
  if (request.headers.authorization !== 'Bearer secret') await reply.code(401).send()
}
const options: MetricsOptions = { preHandler: guard }
await app.register(rooms, { metrics: options })

// @ts-expect-error metrics is a boolean or an object, not a path
await app.register(rooms, { metrics: '/metrics' })
// @ts-expect-error path is a string or false
await app.register(rooms, { metrics: { path: true } })
// @ts-expect-error rooms is a list of names
await app.register(rooms, { metrics: { rooms: 'lobby' } })
// @ts-expect-error register is a prom-client Registry
await app.register(rooms, { metrics: { register: {} } })
// @ts-expect-error an unknown key is a typo
await app.register(rooms, { metrics: { room: ['lobby'] } })
