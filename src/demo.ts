import Fastify from 'fastify'
import rooms from './index.js'

/**
 * `npm start`: a small app with the plugin and its demo chat page. PORT and
 * HOST choose where it listens (3000 and 127.0.0.1 by default).
 */
const port = Number(process.env.PORT ?? 3000)
const host = process.env.HOST ?? '127.0.0.1'

// Room names may be 128 characters; Fastify's router allows 100 per path parameter by default.
const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'warn' }, routerOptions: { maxParamLength: 256 } })
await app.register(rooms, { demo: true })
await app.listen({ port, host })
const shown = host.includes(':') ? `[${host}]` : host
console.log(`fastify-rooms demo: open http://${shown}:${(app.server.address() as { port: number }).port}/ (in-memory rooms; Ctrl+C to stop)`)

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    app.close().then(() => process.exit(0), () => process.exit(1))
  })
}
