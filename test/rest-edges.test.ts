import t from 'tap'
import Type from 'typebox'
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify'
import rooms, { MemoryAdapter, type EncodedPublish } from '../src/index.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import type WebSocket from 'ws'

/** Credentials as a request header: `x-user` names the user. */
const byHeader = async (request: FastifyRequest): Promise<{ id: string, name: string } | null> => request.headers['x-user'] === undefined ? null : { id: String(request.headers['x-user']), name: 'Ada' }
/** The app's own 404 handler, told apart from the plugin's answers by its body. */
const mine = async (_request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> => await reply.code(404).send({ mine: true })

t.test('onPublish output passes the same limits as client data: maxMessageBytes and dataSchema', async (t) => {
  const { wsUrl } = await startApp(t, {
    maxMessageBytes: 100,
    dataSchema: Type.Object({ text: Type.String() }),
    onPublish: ({ data }) => {
      const { text } = data as { text: string }
      if (text === 'grow') return { data: { text: 'x'.repeat(5_000) } }
      if (text === 'break') return { data: { text: 42 } }
      return { data: { text: text.toUpperCase() } }
    }
  })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  await a.join('r')
  t.match(await a.request({ type: 'publish', room: 'r', data: { text: 'grow' } }), { type: 'error', code: 'PAYLOAD_TOO_LARGE', room: 'r' })
  t.match(await a.request({ type: 'publish', room: 'r', data: { text: 'break' } }), { type: 'error', code: 'INVALID_DATA', room: 'r', message: /\/data\/text/ })
  t.match(await a.request({ type: 'publish', room: 'r', data: { text: 'ok' } }), { type: 'ack', offset: 1 }, 'refused publishes took no offset')
  await a.sync()
  t.same(a.take('message').map((m) => m.data), [{ text: 'OK' }], 'only the valid one went out')
})

t.test('REST: any invalid room name is 400 INVALID_ROOM, however long', async (t) => {
  const { url } = await startApp(t, { restPublish: async () => {} })
  for (const length of [129, 256, 257, 300, 5_000]) {
    for (const [method, path] of [['GET', ''], ['GET', '/messages'], ['POST', '/messages']] as const) {
      const response = await fetch(`${url}/rooms/${'a'.repeat(length)}${path}`, method === 'POST' ? { method, headers: { 'content-type': 'application/json' }, body: '{"data":1}' } : {})
      t.equal(response.status, 400, `${method} ${length} characters${path}`)
      t.match(await response.json(), { statusCode: 400, code: 'INVALID_ROOM', error: 'Bad Request', message: /is invalid/ })
    }
  }
  t.match(await (await fetch(`${url}/rooms/${'%C3%A9'.repeat(200)}`)).json(), { code: 'INVALID_ROOM' })
  const other = await fetch(`${url}/rooms/${'a'.repeat(300)}/elsewhere`)
  t.equal(other.status, 404, 'a path that is no route of ours stays a 404')
})

t.test('REST: a valid name longer than the router\'s maxParamLength says how to fix it', async (t) => {
  const { url } = await startApp(t, {}, undefined, { routerOptions: { maxParamLength: 100 } })
  const response = await fetch(`${url}/rooms/${'b'.repeat(120)}`)
  t.equal(response.status, 414)
  t.match(await response.json(), { statusCode: 414, code: 'ROOM_NAME_TOO_LONG', message: /maxParamLength/ })
})

t.test('REST: past maxParamLength, a path no route serves stays a 404 (POST /rooms/:room has no route)', async (t) => {
  const { url } = await startApp(t, { restPublish: async () => {} }, undefined, { routerOptions: { maxParamLength: 100 } })
  const post = { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"data":1}' }
  t.equal((await fetch(`${url}/rooms/${'b'.repeat(120)}/messages`, post)).status, 414, 'the route exists: the name is too long for it')
  const response = await fetch(`${url}/rooms/${'b'.repeat(120)}`, post)
  t.equal(response.status, 404)
  t.match(await response.json(), { statusCode: 404, code: 'NOT_FOUND', error: 'Not Found' })
})

t.test('REST: a GET path under the prefix that no route serves is a 404 in the contract\'s shape, with a code; other methods and paths keep the app\'s 404', async (t) => {
  const { url } = await startApp(t, { restPublish: async () => {} }, (app) => {
    app.setNotFoundHandler(mine)
  })
  const cases: Array<[string, string]> = [
    ['GET', '/rooms/a/b/c'], ['GET', '/rooms/a/elsewhere'], ['GET', `/rooms/${'a'.repeat(150)}/elsewhere`],
    ['POST', '/rooms/a'], ['POST', '/rooms/a/b/messages'], ['GET', '/rooms/a/b?x=1']
  ]
  for (const [method, path] of cases) {
    const response = await fetch(`${url}${path}`, { method })
    t.equal(response.status, 404, `${method} ${path}`)
    const route = path.split('?')[0]!
    t.same(await response.json(), { statusCode: 404, code: 'NOT_FOUND', error: 'Not Found', message: `No route serves ${method} ${route}.` }, `${method} ${path}: Fastify's shape`)
  }
  const long = await (await fetch(`${url}/rooms/a/${'b'.repeat(1_000)}`)).json()
  t.match(long, { code: 'NOT_FOUND', message: `No route serves GET /rooms/a/${'b'.repeat(191)}....` }, 'a long path is cut short in the message')
  for (const [method, path] of [['PUT', '/rooms/a'], ['DELETE', '/rooms'], ['GET', '/roomsx'], ['GET', '/elsewhere/rooms/a/b']]) {
    t.same(await (await fetch(`${url}${path}`, { method })).json(), { mine: true }, `${method} ${path}: the app's own 404`)
  }
})

t.test('REST: an app\'s own 404 handler at the REST prefix, or at the prefix the REST routes share, still boots and keeps its paths', async (t) => {
  // Its own routes under /rooms, with its own 404 handler there.
  const sameprefix = await startApp(t, {}, async (app) => {
    await app.register(async (child) => { child.setNotFoundHandler(mine) }, { prefix: '/rooms' })
  })
  t.same(await (await fetch(`${sameprefix.url}/rooms`)).json(), { rooms: [], next: null }, 'booted, with the listing')
  t.equal((await fetch(`${sameprefix.url}/rooms/a/b`)).status, 404)
  // The REST routes at the prefix of the app's own context (`prefix: '/'` inside /api), which has its own 404 handler.
  const app = Fastify({ logger: false })
  await app.register(async (api) => {
    api.setNotFoundHandler(mine)
    await api.register(rooms, { prefix: '/' })
  }, { prefix: '/api' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => await app.close())
  const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}/api`
  t.same(await (await fetch(`${base}/`)).json(), { rooms: [], next: null })
  t.same(await (await fetch(`${base}/x/y`)).json(), { mine: true }, 'an unserved path there is the app\'s')
})

t.test('REST at the root prefix, with authentication: the app\'s unserved paths get its own 404, not the REST routes\' 401', async (t) => {
  const { url } = await startApp(t, { prefix: '/', restPublish: async () => {}, authenticate: byHeader }, (app) => {
    app.setNotFoundHandler(mine)
  })
  for (const path of ['/x/y', '/assets/app.js', '/a/b/c']) {
    const response = await fetch(`${url}${path}`)
    t.equal(response.status, 404, path)
    t.same(await response.json(), { mine: true }, `${path}: the app's 404`)
  }
  for (const [body, type] of [['{"data":1}', 'application/json'], ['{', 'application/json'], ['<a/>', 'application/xml'], [`{"data":"${'x'.repeat(2_000_000)}"}`, 'application/json']]) {
    const response = await fetch(`${url}/api/upload`, { method: 'POST', headers: { 'content-type': type }, body })
    t.same([response.status, await response.json()], [404, { mine: true }], `a POST of ${type} (${body.length} bytes) to the app's path: its 404, its body unread`)
  }
  t.equal((await fetch(`${url}/`)).status, 401, 'the listing still needs credentials')
  t.equal((await fetch(`${url}/lobby`)).status, 401, 'so does a room')
  t.equal((await fetch(`${url}/lobby/messages`)).status, 401, 'and its history')
})

t.test('REST errors are answered by the plugin: an app\'s own error handler never sees them', async (t) => {
  const seen: string[] = []
  const { url } = await startApp(t, { authenticate: byHeader }, (app) => {
    app.setErrorHandler(async (error: { code?: string }, _request, reply) => {
      seen.push(String(error.code))
      return await reply.code(500).send({ reshaped: true })
    })
  })
  const user = { headers: { 'x-user': 'ada' } }
  const cases: Array<[string, RequestInit, number, string]> = [
    ['/rooms/a/b/c', user, 404, 'NOT_FOUND'],
    ['/rooms/a%20b', user, 400, 'INVALID_ROOM'],
    ['/rooms?limit=0', user, 400, 'FST_ERR_VALIDATION'],
    ['/rooms/nobody', user, 404, 'ROOM_NOT_FOUND'],
    ['/rooms', {}, 401, 'UNAUTHORIZED']
  ]
  for (const [path, init, status, code] of cases) {
    const response = await fetch(`${url}${path}`, init)
    t.equal(response.status, status, path)
    t.match(await response.json(), { statusCode: status, code }, `${path}: ${code} in Fastify's shape`)
  }
  t.same(seen, [], 'the app\'s error handler was not called')
})

t.test('refused upgrades and the metrics route are answered by the plugin too: an app\'s own error handler never sees them', async (t) => {
  const seen: string[] = []
  const { url, wsUrl } = await startApp(t, {
    maxConnections: 1,
    metrics: true,
    authenticate: async (request) => {
      // The app's bug (a malformed user): logged by the plugin, a generic 500 to the client.
      if (request.headers['x-user'] === 'broken') return { id: 42 } as unknown as { id: string, name: string }
      return await byHeader(request)
    }
  }, (app) => {
    app.setErrorHandler(async (error: { code?: string }, _request, reply) => {
      seen.push(String(error.code))
      return await reply.code(500).send({ reshaped: true })
    })
    // The app's own load shedding: its errors stay the app's to answer, on the plugin's socket path too.
    app.addHook('onRequest', async (request) => {
      if (request.headers['x-busy'] !== undefined) throw Object.assign(new Error('busy'), { statusCode: 503, code: 'APP_BUSY' })
    })
  })
  const ada = { headers: { 'x-user': 'ada' } }
  const refusals: Array<[string, WebSocket.ClientOptions, number, string]> = [
    ['no credentials', {}, 401, 'UNAUTHORIZED'],
    ['another site', { headers: { ...ada.headers, origin: 'https://elsewhere.example' } }, 403, 'ORIGIN_NOT_ALLOWED'],
    ['a malformed user', { headers: { 'x-user': 'broken' } }, 500, 'INTERNAL']
  ]
  for (const [what, options, status, code] of refusals) {
    const refused = await TestSocket.refused(wsUrl, options)
    t.equal(refused.status, status, `upgrade with ${what}`)
    t.match(refused.body, { statusCode: status, code }, `upgrade with ${what}: ${code} in Fastify's shape`)
    // What a page does to learn why its upgrade was refused: the same answer to a plain GET.
    const plain = await fetch(`${url}/ws`, options as RequestInit)
    t.equal(plain.status, status, `plain GET with ${what}`)
    t.match(await plain.json(), { statusCode: status, code }, `plain GET with ${what}: ${code} in Fastify's shape`)
  }
  const one = await TestSocket.open(wsUrl, ada)
  t.teardown(() => one.close())
  const full = await TestSocket.refused(wsUrl, ada)
  t.equal(full.status, 503, 'upgrade past maxConnections')
  t.match(full.body, { statusCode: 503, code: 'TOO_MANY_CONNECTIONS' }, 'past maxConnections: TOO_MANY_CONNECTIONS in Fastify\'s shape')
  const metrics = await fetch(`${url}/metrics`)
  t.equal(metrics.status, 401, 'the metrics route without credentials')
  t.match(await metrics.json(), { statusCode: 401, code: 'UNAUTHORIZED' }, 'the metrics route: UNAUTHORIZED in Fastify\'s shape')
  for (const path of ['/metrics', '/rooms']) {
    const broken = await fetch(`${url}${path}`, { headers: { 'x-user': 'broken' } })
    t.equal(broken.status, 500, `${path} with a malformed user`)
    t.match(await broken.json(), { statusCode: 500, code: 'INTERNAL', message: /has been logged/ }, `${path}: the generic INTERNAL, not the app's bug`)
  }
  t.same(seen, [], 'the app\'s error handler was not called')
  const busy = await TestSocket.refused(wsUrl, { headers: { ...ada.headers, 'x-busy': '1' } })
  t.same(busy, { status: 500, body: { reshaped: true } }, 'an error of the app\'s own hook is the app\'s handler\'s to answer')
  t.same(seen, ['APP_BUSY'])
})

t.test('REST: with authentication, a path no route serves is 401 without credentials and 404 with them', async (t) => {
  const { url } = await startApp(t, { authenticate: byHeader })
  const anonymous = await fetch(`${url}/rooms/a/b/c`)
  t.equal(anonymous.status, 401, 'nothing but 401 without credentials')
  t.match(await anonymous.json(), { code: 'UNAUTHORIZED' })
  const known = await fetch(`${url}/rooms/a/b/c`, { headers: { 'x-user': 'ada' } })
  t.equal(known.status, 404)
  t.match(await known.json(), { statusCode: 404, code: 'NOT_FOUND' })
  // As plugin.md says: Fastify's router answers a path it cannot decode before any hook, and names no room.
  const undecodable = await fetch(`${url}/rooms/%`)
  t.equal(undecodable.status, 400)
  t.match(await undecodable.json(), { statusCode: 400, code: 'FST_ERR_BAD_URL' })
})

/** A user-written adapter (through the public interface) whose store fails with internal detail in its error. */
class LeakyStore extends MemoryAdapter {
  override async room (...args: Parameters<MemoryAdapter['room']>): ReturnType<MemoryAdapter['room']> {
    if (args[0] === 'broken') throw new Error('ERR wrong number of arguments (secret: redis://user:pass@host)')
    return await super.room(...args)
  }

  override async publish (room: string, message: EncodedPublish): Promise<number | undefined> {
    if (room === 'broken') throw new Error('ERR secret')
    return await super.publish(room, message)
  }
}

t.test('REST: an adapter failure is a generic 500 INTERNAL; its text goes to the log only', async (t) => {
  const logged: Array<Record<string, any>> = []
  const { url } = await startApp(t, { adapter: new LeakyStore(), restPublish: () => {} }, undefined, {
    logger: { level: 'error', stream: { write: (line: string) => { logged.push(JSON.parse(line)) } } }
  })
  for (const [method, path] of [['GET', '/rooms/broken'], ['POST', '/rooms/broken/messages']] as const) {
    const response = await fetch(`${url}${path}`, method === 'POST' ? { method, headers: { 'content-type': 'application/json' }, body: '{"data":1}' } : {})
    t.equal(response.status, 500)
    const body = await response.text()
    t.same(JSON.parse(body), { statusCode: 500, code: 'INTERNAL', error: 'Internal Server Error', message: 'The server failed to handle this request; it has been logged. Try again later.' })
    t.notMatch(body, /secret/)
  }
  t.ok(logged.some((l) => /secret/.test(l.err?.message)), 'the real error is logged')
})

t.test('REST publish: a body over maxFrameBytes is 413 PAYLOAD_TOO_LARGE, as on the socket', async (t) => {
  const { url } = await startApp(t, { restPublish: async () => {}, maxMessageBytes: 1000, maxFrameBytes: 2000 })
  const response = await fetch(`${url}/rooms/r/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ data: 'x'.repeat(5000) }) })
  t.equal(response.status, 413)
  t.match(await response.json(), { statusCode: 413, code: 'PAYLOAD_TOO_LARGE', error: 'Payload Too Large' })
})

t.test('app.rooms.history checks the room name like every other call', async (t) => {
  const { app } = await startApp(t)
  await t.rejects(app.rooms.history('bad name!'), { code: 'INVALID_ROOM' })
  t.equal(await app.rooms.history('fine'), null)
})
