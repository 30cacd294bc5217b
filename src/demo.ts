import Fastify from 'fastify'
import rooms, { redisAdapter } from './index.js'

/**
 * `npm start`: a small app with the plugin and its demo chat page. PORT and
 * HOST choose where it listens (3000 and 127.0.0.1 by default).
 */
const port = Number(process.env.PORT ?? 3000)
const host = process.env.HOST ?? '127.0.0.1'

// Room names may be 128 characters; Fastify's router allows 100 per path parameter by default.
const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'warn' }, routerOptions: { maxParamLength: 256 } })
// REDIS_URL switches to the Redis adapter: run two instances on two ports and they share everything.
const redisUrl = process.env.REDIS_URL
// RESUME_SECRET (16+ characters) keeps guests' ids across a restart of the in-memory demo.
const resumeSecret = process.env.RESUME_SECRET === undefined || process.env.RESUME_SECRET === '' ? undefined : process.env.RESUME_SECRET
await app.register(rooms, { demo: true, resumeSecret, adapter: redisUrl === undefined || redisUrl === '' ? undefined : redisAdapter({ url: redisUrl }) })
await app.listen({ port, host })
const shown = host.includes(':') ? `[${host}]` : host
console.log(`fastify-rooms demo: open http://${shown}:${(app.server.address() as { port: number }).port}/ (${redisUrl === undefined || redisUrl === '' ? 'in-memory rooms' : 'rooms shared through Redis'}; Ctrl+C to stop)`)

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    app.close().then(() => process.exit(0), () => process.exit(1))
  })
}
