import t from 'tap'
import http from 'node:http'
import Fastify from 'fastify'
import rooms, { errorCodes, type AdminGuard, type AdminStats, type Member } from '../src/index.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'

const ADA = { id: 'u-ada', name: 'ada', role: 'admin' }
const BOB = { id: 'u-bob', name: 'bob', role: 'user' }
const sessions: Record<string, typeof ADA> = { 'session=ada': ADA, 'session=bob': BOB }
const tokens: Record<string, typeof ADA> = { 'tok-ada': ADA, 'tok-bob': BOB }

interface Reply { status: number, body: any, headers: Headers }

async function get (url: string, headers: Record<string, string> = {}): Promise<Reply> {
  const res = await fetch(url, { headers, redirect: 'manual' })
  const text = await res.text()
  const json = res.headers.get('content-type')?.startsWith('application/json') === true
  return { status: res.status, body: json ? JSON.parse(text) : text, headers: res.headers }
}

/** Every route of the admin view. */
function adminRoutes (url: string, path = '/rooms-admin'): string[] {
  return [`${url}${path}/`, `${url}${path}/admin.js`, `${url}${path}/style.css`, `${url}${path}/config.json`, `${url}${path}/stats`, `${url}${path}/client/index.js`]
}

/** The app's token check: the user a known token names. */
function verifyToken (token: string): { user: typeof ADA } {
  const user = tokens[token]
  if (user === undefined) throw new Error('unknown token')
  return { user }
}

const isAdmin: AdminGuard = (_request, _reply, user) => (user as typeof ADA | undefined)?.role === 'admin'

t.test('the admin view is off by default: every admin route is 404', async (t) => {
  const { url } = await startApp(t, {})
  for (const route of adminRoutes(url)) t.equal((await get(route)).status, 404, route)
  const off = await startApp(t, { admin: false })
  for (const route of adminRoutes(off.url)) t.equal((await get(route)).status, 404, route)
})

t.test('admin: true without auth: the page, its files and the stats are open; a path without the slash is redirected', async (t) => {
  const { url } = await startApp(t, { admin: true })
  for (const route of adminRoutes(url)) t.equal((await get(route)).status, 200, route)
  const page = await get(`${url}/rooms-admin/`)
  t.match(page.headers.get('content-type'), /text\/html/)
  t.match(page.body, /fastify-rooms admin/)
  t.same((await get(`${url}/rooms-admin/config.json`)).body, { path: '/ws', prefix: '/rooms' })
  const bare = await get(`${url}/rooms-admin`)
  t.equal(bare.status, 302)
  t.equal(bare.headers.get('location'), '/rooms-admin/')
  t.equal((await get(`${url}/rooms-admin/index.html`)).status, 404, 'the demo page is not served under the admin path')
  t.equal((await get(`${url}/rooms-admin/app.js`)).status, 404)
})

t.test('admin.path moves the view; config.json names the socket path and REST prefix of this registration', async (t) => {
  const { url } = await startApp(t, { admin: { path: '/ops/chat' }, path: '/live', prefix: '/api/rooms' })
  t.equal((await get(`${url}/rooms-admin/stats`)).status, 404)
  t.equal((await get(`${url}/ops/chat/stats`)).status, 200)
  t.same((await get(`${url}/ops/chat/config.json`)).body, { path: '/live', prefix: '/api/rooms' })
})

t.test('registered under a Fastify prefix, the admin view and the demo page name the prefixed socket path and REST prefix', async (t) => {
  // Fastify joins '/chat/' and '/ws' as '/chat/ws', and '/' and '/ws' as '/ws'.
  for (const [prefix, at] of [['/chat', '/chat'], ['/chat/', '/chat'], ['/', '']]) {
    const app = Fastify()
    await app.register(async (chat) => { await chat.register(rooms, { admin: true, demo: true }) }, { prefix })
    await app.listen({ port: 0, host: '127.0.0.1' })
    t.teardown(async () => await app.close())
    const url = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`
    const paths = { path: `${at}/ws`, prefix: `${at}/rooms` }
    t.same((await get(`${url}${at}/rooms-admin/config.json`)).body, paths, `prefix ${prefix}`)
    t.same((await get(`${url}${at}/config.json`)).body, paths)
    t.equal((await get(`${url}${paths.prefix}`)).status, 200, 'the REST prefix it names is served')
    for (const file of ['/', '/index.html', '/app.js', '/style.css']) t.equal((await get(`${url}${at}${file}`)).status, 200, `the demo's ${file}`)
    for (const file of ['/admin.html', '/admin.js']) t.equal((await get(`${url}${at}${file}`)).status, 404, `the admin view's ${file} is not served by the demo, outside its guard`)
    const socket = await TestSocket.open(`${url.replace('http', 'ws')}${paths.path}`)
    t.equal(socket.welcome.type, 'welcome', 'so is the socket path')
    await socket.close()
  }
})

t.test('without auth, the app\'s preHandler alone guards the view and gets no user', async (t) => {
  const users: Array<Member | undefined> = []
  const { url } = await startApp(t, {
    admin: {
      preHandler: async (request, reply, user) => {
        users.push(user)
        if (request.headers['x-admin-key'] !== 'k') await reply.code(401).send({ statusCode: 401, code: 'UNAUTHORIZED', error: 'Unauthorized', message: 'Admins only.' })
        return true
      }
    }
  })
  for (const route of adminRoutes(url)) {
    const refused = await get(route)
    t.equal(refused.status, 401, route)
    t.same(refused.body, { statusCode: 401, code: 'UNAUTHORIZED', error: 'Unauthorized', message: 'Admins only.' })
    t.equal((await get(route, { 'x-admin-key': 'k' })).status, 200, `${route} with the key`)
  }
  t.ok(users.every((user) => user === undefined))
})

t.test('with authenticate: 401 without credentials (publicRest does not open it), 403 for a non-admin, 200 for an admin', async (t) => {
  const seen: Member[] = []
  const { url } = await startApp(t, {
    authenticate: (request) => sessions[String(request.headers.cookie)],
    publicRest: true,
    admin: {
      preHandler: (request, reply, user) => {
        if (user !== undefined) seen.push(user)
        return isAdmin(request, reply, user)
      }
    }
  })
  for (const route of adminRoutes(url)) {
    const anonymous = await get(route)
    t.equal(anonymous.status, 401, route)
    t.match(anonymous.body, { statusCode: 401, code: 'UNAUTHORIZED', error: 'Unauthorized', message: /credentials/ })
    t.equal((await get(route, { cookie: 'session=nobody' })).status, 401, `${route} with an unknown cookie`)
    const bob = await get(route, { cookie: 'session=bob' })
    t.equal(bob.status, 403, `${route} as a user who is no admin`)
    t.same(bob.body, { statusCode: 403, code: 'FORBIDDEN', error: 'Forbidden', message: 'Only admins may open the fastify-rooms admin view.' })
    t.equal((await get(route, { cookie: 'session=ada' })).status, 200, `${route} as an admin`)
  }
  t.same(seen.slice(0, 2), [BOB, ADA], 'the guard gets the full user the credentials named')
  t.equal((await get(`${url}/rooms`)).status, 200, 'publicRest still opens the REST reads')
})

t.test('with verifyToken: a Bearer token is the credential; the guard may throw errorCodes.FORBIDDEN with its own sentence', async (t) => {
  const { url } = await startApp(t, {
    verifyToken,
    admin: {
      preHandler: (_request, _reply, user) => {
        if ((user as typeof ADA).role !== 'admin') throw new errorCodes.FORBIDDEN('Operators only.')
        return true
      }
    }
  })
  const anonymous = await get(`${url}/rooms-admin/stats`)
  t.equal(anonymous.status, 401)
  t.equal(anonymous.headers.get('www-authenticate'), 'Bearer')
  t.equal((await get(`${url}/rooms-admin/stats`, { authorization: 'Bearer nope' })).status, 401)
  t.same((await get(`${url}/rooms-admin/stats`, { authorization: 'Bearer tok-bob' })).body, { statusCode: 403, code: 'FORBIDDEN', error: 'Forbidden', message: 'Operators only.' })
  t.equal((await get(`${url}/rooms-admin/stats`, { authorization: 'Bearer tok-ada' })).status, 200)
})

t.test('with verifyToken alone: the page\'s own files are served without credentials (a browser cannot send a Bearer header to load a page); everything with data is guarded', async (t) => {
  const asked: Array<Member | undefined> = []
  const { url } = await startApp(t, {
    verifyToken,
    admin: {
      preHandler: (request, reply, user) => {
        asked.push(user)
        return isAdmin(request, reply, user)
      }
    }
  })
  const [page, script, style, config, stats, sdk] = adminRoutes(url) as [string, string, string, string, string, string]
  for (const route of [page, script, style, sdk]) t.equal((await get(route)).status, 200, `${route}: no credentials needed`)
  t.match((await get(page)).body, /id="token-form"/, 'the page asks for a token')
  t.same(asked, [], 'the admin guard is not asked for the page\'s files')
  for (const route of [config, stats]) {
    const anonymous = await get(route)
    t.equal(anonymous.status, 401, `${route} without a token`)
    t.equal(anonymous.headers.get('www-authenticate'), 'Bearer')
    t.equal((await get(route, { authorization: 'Bearer tok-bob' })).status, 403, `${route} with a user's token`)
    t.equal((await get(route, { authorization: 'Bearer tok-ada' })).status, 200, `${route} with an admin's token`)
  }
  t.equal((await get(`${url}/rooms`)).status, 401, 'REST stays guarded')
  // Sent as is (fetch would resolve the dots): the SDK's open route must not reach the guarded files.
  for (const path of ['/rooms-admin/client/../config.json', '/rooms-admin/client/%2e%2e/stats']) {
    const status = await new Promise<number | undefined>((resolve, reject) => http.get({ host: new URL(url).hostname, port: new URL(url).port, path }, (res) => { res.resume(); resolve(res.statusCode) }).on('error', reject))
    t.equal(status, 403, `${path}: refused`)
  }
})

t.test('with authenticate and verifyToken both: the page\'s files need credentials, as everything else', async (t) => {
  const { url } = await startApp(t, {
    authenticate: (request) => sessions[String(request.headers.cookie)],
    verifyToken: (token) => ({ user: tokens[token] as typeof ADA }),
    admin: { preHandler: isAdmin }
  })
  for (const route of adminRoutes(url)) {
    t.equal((await get(route)).status, 401, route)
    t.equal((await get(route, { cookie: 'session=ada' })).status, 200, `${route} with a session`)
  }
})

t.test('the guard fails closed: only true lets a request in; undefined, null, 0, \'\' and objects are 403, and a guard that returns nothing is named in the log once', async (t) => {
  const logs: string[] = []
  const answers: Record<string, unknown> = { true: true, undefined, null: null, zero: 0, empty: '', object: {}, false: false }
  const app = Fastify({ logger: { level: 'warn', stream: { write: (line: string) => { logs.push(line) } } } })
  // Not booleans, as a JavaScript app (or a cast) may return them.
  await app.register(rooms, { admin: { preHandler: (request) => answers[String(request.headers['x-answer'])] as boolean } })
  t.teardown(async () => await app.close())
  for (const answer of Object.keys(answers)) {
    for (const url of ['/rooms-admin/stats', '/rooms-admin/config.json']) {
      const res = await app.inject({ url, headers: { 'x-answer': answer } })
      if (answer === 'true') t.equal(res.statusCode, 200, `${url}: ${answer}`)
      else t.same(res.json(), { statusCode: 403, code: 'FORBIDDEN', error: 'Forbidden', message: 'Only admins may open the fastify-rooms admin view.' }, `${url}: ${answer}`)
    }
  }
  t.equal(logs.filter((line) => line.includes('admin.preHandler returned nothing')).length, 1, 'warned once, not per request')
})

t.test('a guard may refuse with any 4xx, Error or not, statusCode or status: every admin route answers that status in Fastify\'s shape; a 3xx thrown is a bug, a generic 500', async (t) => {
  const refusals: Record<string, unknown> = {
    plain: { statusCode: 401, message: 'Admin key needed.' },
    status: Object.assign(new Error('Admins only.'), { status: 403, headers: { 'www-authenticate': 'Basic realm="rooms-admin"' } }),
    coded: Object.assign(new Error('Slow down.'), { statusCode: 429, code: 'SLOW_DOWN' }),
    redirect: Object.assign(new Error('moved'), { statusCode: 302 })
  }
  const { url } = await startApp(t, {
    admin: {
      preHandler: async (request) => {
        const refusal = refusals[String(request.headers['x-refuse'])]
        if (refusal !== undefined) throw refusal
        return true
      }
    }
  })
  for (const route of adminRoutes(url)) {
    const plain = await get(route, { 'x-refuse': 'plain' })
    t.same({ status: plain.status, body: plain.body }, { status: 401, body: { statusCode: 401, code: 'UNAUTHORIZED', error: 'Unauthorized', message: 'Admin key needed.' } }, `${route}, a plain object`)
    const status = await get(route, { 'x-refuse': 'status' })
    t.match(status, { status: 403, body: { statusCode: 403, code: 'FORBIDDEN', error: 'Forbidden', message: 'Admins only.' } }, `${route}, an Error with status`)
    t.equal(status.headers.get('www-authenticate'), 'Basic realm="rooms-admin"', `${route}, with the error's headers`)
    t.match((await get(route, { 'x-refuse': 'coded' })), { status: 429, body: { statusCode: 429, code: 'SLOW_DOWN', message: 'Slow down.' } }, `${route}, an Error with its own code`)
    t.match((await get(route, { 'x-refuse': 'redirect' })), { status: 500, body: { statusCode: 500, code: 'INTERNAL' } }, `${route}, a 3xx`)
  }
})

t.test('a guard that fails unexpectedly is a generic 500; its error goes to the log only', async (t) => {
  const logs: string[] = []
  const app = Fastify({ logger: { level: 'error', stream: { write: (line: string) => { logs.push(line) } } } })
  await app.register(rooms, { admin: { preHandler: () => { throw new Error('db password wrong at 10.0.0.7') } } })
  t.teardown(async () => await app.close())
  const res = await app.inject({ url: '/rooms-admin/stats' })
  t.equal(res.statusCode, 500)
  t.same(res.json(), { statusCode: 500, code: 'INTERNAL', error: 'Internal Server Error', message: new errorCodes.INTERNAL().message })
  t.notMatch(res.body, /10\.0\.0\.7/)
  t.ok(logs.some((line) => line.includes('10.0.0.7')), 'the real error is logged')
})

t.test('bad admin options fail app.register with FST_ROOMS_INVALID_OPTION and a sentence', async (t) => {
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['auth without an admin guard', { authenticate: () => ADA, admin: true }, /admin needs a preHandler deciding who is an admin/],
    ['verifyToken without an admin guard', { verifyToken: () => ({ user: ADA }), admin: {} }, /admin needs a preHandler/],
    ['REST off', { rest: false, admin: true }, /admin needs the REST routes/],
    ['the room list off', { roomList: false, admin: true }, /admin needs the live room list/],
    ['a string', { admin: 'yes' }, /admin must be true, false or an object/],
    ['a path without a slash', { admin: { path: 'admin' } }, /admin/],
    ['a path with a trailing slash', { admin: { path: '/admin/' } }, /admin/],
    ['a preHandler that is no function', { admin: { preHandler: 'admin' } }, /admin.preHandler must be a function/]
  ]
  for (const [name, options, message] of cases) {
    const app = Fastify()
    t.teardown(async () => await app.close())
    const err = await app.register(rooms, options).ready().then(() => undefined, (e: unknown) => e)
    t.ok(err instanceof errorCodes.FST_ROOMS_INVALID_OPTION, name)
    t.match((err as Error).message, message, name)
  }
})

t.test('the stats are exact after real clients publish, and the rates follow at once', async (t) => {
  const { url, wsUrl } = await startApp(t, { admin: true })
  const before = (await get(`${url}/rooms-admin/stats`)).body as AdminStats
  t.match(before, { connections: 0, rooms: 0, members: 0, totals: { published: 0, delivered: 0, framesReceived: 0, framesSent: 0 }, rates: { published: 0, delivered: 0 } })
  const ada = await TestSocket.open(`${wsUrl}?name=ada`)
  const bob = await TestSocket.open(`${wsUrl}?name=bob`)
  t.teardown(async () => { await ada.close(); await bob.close() })
  await ada.join('lobby')
  await bob.join('lobby')
  for (const text of ['one', 'two', 'three']) {
    const ack = await ada.request({ type: 'publish', room: 'lobby', data: { text } })
    t.equal(ack.type, 'ack')
  }
  for (const text of ['one', 'two', 'three']) {
    await ada.next((f) => f.type === 'message' && (f as { data: { text: string } }).data.text === text, `ada's ${text}`)
    await bob.next((f) => f.type === 'message' && (f as { data: { text: string } }).data.text === text, `bob's ${text}`)
  }
  const stats = (await get(`${url}/rooms-admin/stats`)).body as AdminStats
  t.match(stats, { connections: 2, rooms: 1, members: 2 })
  // ada: join and three publishes; bob: join.
  t.match(stats.totals, { published: 3, delivered: 6, framesReceived: 5 })
  t.ok(stats.totals.framesSent >= 2 + 2 + 6, 'welcomes, joined replies and the messages were sent')
  t.ok(stats.rates.seconds > 0 && stats.rates.seconds <= 11)
  t.ok(stats.rates.published > 0, 'a publish shows in the rate at once')
  // Both the span and the rate are rounded to 3 decimals: over a span of a few ms that rounding alone
  // moves rate x span by up to 3 x 0.0005 / (true span) + 0.0005 x span, and the true span may be
  // 0.0005 s shorter than the one shown (77.919/s over 0.039 s was right, and failed a bound that used 0.039).
  const { seconds, published } = stats.rates
  t.ok(Math.abs(published * seconds - 3) <= 3 * 0.0005 / (seconds - 0.0005) + 0.0005 * seconds + 1e-9, `published per second over the span (${published}/s over ${seconds} s)`)
  t.ok(Math.abs(stats.rates.delivered - 2 * stats.rates.published) <= 0.002, 'two members: two deliveries per publish')
})

t.test('with metrics on, the stats read the same counters as the metrics', async (t) => {
  const { url, wsUrl, app } = await startApp(t, { admin: true, metrics: true })
  const ada = await TestSocket.open(`${wsUrl}?name=ada`)
  t.teardown(async () => await ada.close())
  await ada.join('lobby')
  await ada.request({ type: 'publish', room: 'lobby', data: 1 })
  await app.rooms.broadcast('lobby', 2)
  await ada.next((f) => f.type === 'message' && (f as { data: unknown }).data === 2, 'the broadcast')
  const stats = (await get(`${url}/rooms-admin/stats`)).body as AdminStats
  t.equal(stats.totals.published, 2, 'member and server publishes')
  const text = (await get(`${url}/metrics`)).body as string
  t.match(text, /^fastify_rooms_messages_published_total 2$/m)
  t.match(text, /^fastify_rooms_messages_delivered_total 2$/m)
  t.equal(stats.totals.delivered, 2)
})
