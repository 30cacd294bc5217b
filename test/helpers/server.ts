import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import rooms, { type RoomsOptions } from '../../src/index.js'

export interface Started {
  app: FastifyInstance
  /** http://127.0.0.1:PORT */
  url: string
  /** ws://127.0.0.1:PORT + path */
  wsUrl: string
}

interface Teardown { teardown: (fn: () => unknown) => void }

/** Build an app with the plugin, listen on a free port, and close it at teardown. */
export async function startApp (t: Teardown, options: RoomsOptions = {}, setup?: (app: FastifyInstance) => unknown, serverOptions: FastifyServerOptions = {}): Promise<Started> {
  const app = Fastify({ logger: false, routerOptions: { maxParamLength: 256 }, ...serverOptions })
  if (setup !== undefined) await setup(app)
  await app.register(rooms, options)
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => await app.close())
  const { port } = app.server.address() as { port: number }
  const url = `http://127.0.0.1:${port}`
  return { app, url, wsUrl: `ws://127.0.0.1:${port}${options.path ?? '/ws'}` }
}
