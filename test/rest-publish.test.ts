import t from 'tap'
import Type from 'typebox'
import { errorCodes } from '../src/index.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'

/** An app logger at `error` that keeps each line, parsed, in order. */
function logLines (): { lines: Array<Record<string, any>>, logger: { level: string, stream: { write: (line: string) => void } } } {
  const lines: Array<Record<string, any>> = []
  return { lines, logger: { level: 'error', stream: { write: (line: string) => { lines.push(JSON.parse(line)) } } } }
}

async function post (url: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number, body: any }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body), signal: AbortSignal.timeout(10_000) })
  return { status: res.status, body: await res.json() }
}

t.test('POST /rooms/:room/messages is off unless the app turns it on', async (t) => {
  const { url } = await startApp(t)
  t.equal((await post(`${url}/rooms/r/messages`, { data: 1 })).status, 404)
})

t.test('with a guard: 201 and a server message; the guard refuses with its own 401', async (t) => {
  const { url, wsUrl } = await startApp(t, {
    dataSchema: Type.Object({ text: Type.String() }),
    maxMessageBytes: 100,
    restPublish: async (request, reply) => {
      if (request.headers.authorization !== 'Bearer ops-token') {
        await reply.code(401).send({ statusCode: 401, code: 'UNAUTHORIZED', error: 'Unauthorized', message: 'Publishing needs the ops token.' })
      }
    }
  })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  await a.join('ops')
  const auth = { authorization: 'Bearer ops-token' }

  t.same(await post(`${url}/rooms/ops/messages`, { data: { text: 'deploying' } }), {
    status: 401, body: { statusCode: 401, code: 'UNAUTHORIZED', error: 'Unauthorized', message: 'Publishing needs the ops token.' }
  })
  t.same(await post(`${url}/rooms/ops/messages`, { data: { text: 'deploying' } }, auth), { status: 201, body: { offset: 1 } })
  const message = await a.next((f) => f.type === 'message')
  t.match(message, { room: 'ops', data: { text: 'deploying' }, offset: 1 })
  t.notOk('from' in message, 'a server publish')

  t.match(await post(`${url}/rooms/ops/messages`, { data: { text: 5 } }, auth), { status: 400, body: { code: 'INVALID_DATA', message: /\/data\/text/ } })
  t.match(await post(`${url}/rooms/ops/messages`, { data: { text: 'x'.repeat(200) } }, auth), { status: 413, body: { statusCode: 413, code: 'PAYLOAD_TOO_LARGE' } })
  t.match(await post(`${url}/rooms/ops/messages`, { nodata: 1 }, auth), { status: 400, body: { code: 'FST_ERR_VALIDATION' } })
  t.match(await post(`${url}/rooms/bad%20room/messages`, { data: { text: 'x' } }, auth), { status: 400, body: { code: 'INVALID_ROOM' } })
  t.equal((await app(url)).offset, 1, 'none of the refused publishes took an offset')
})

async function app (url: string): Promise<{ offset: number }> {
  return await (await fetch(`${url}/rooms/ops`)).json() as { offset: number }
}

t.test('guards written every way Fastify allows let a publish through once, and refuse by error, done(err) or false', async (t) => {
  type Req = { headers: Record<string, unknown> }
  const allowed = (request: Req): boolean => request.headers.authorization === 'Bearer ops-token'
  const refuse = (request: Req): Error | undefined => allowed(request) ? undefined : new errorCodes.FORBIDDEN('Publishing needs the ops token.')
  const guards = {
    callback: function (request: Req, _reply: unknown, done: (err?: Error) => void) { done(refuse(request)) },
    // Fastify refuses an async hook with three parameters at registration; the plugin takes it all the same.
    asyncWithDone: async function (request: Req, _reply: unknown, done: (err?: Error) => void) { const err = refuse(request); if (err !== undefined) done(err) },
    plain: function (request: Req) { const err = refuse(request); if (err !== undefined) throw err },
    // Calls done and returns a promise: Fastify's own runner would go on twice, and store the publish twice.
    doneThenPromise: function (request: Req, _reply: unknown, done: (err?: Error) => void) { return Promise.resolve().then(() => done(refuse(request))) },
    // Predicates: false refuses. One shaped like the admin guard gets done where it expects a user.
    predicate: function (request: Req) { return allowed(request) },
    asyncPredicate: async function (request: Req, _reply: unknown, user: { role?: string } | undefined) { return allowed(request) && user?.role !== 'guest' },
    // Declares done, and refuses by returning false (Fastify would wait for done for ever).
    donePredicate: function (request: Req, _reply: unknown, done: () => void) { if (!allowed(request)) return false; done() }
  }
  for (const [name, guard] of Object.entries(guards)) {
    const { url } = await startApp(t, { restPublish: guard as never })
    const refused = await post(`${url}/rooms/r/messages`, { data: 1 })
    t.match(refused, { status: 403, body: { code: 'FORBIDDEN' } }, `${name}: refused`)
    if (!name.toLowerCase().includes('predicate')) t.equal(refused.body.message, 'Publishing needs the ops token.', `${name}: with the guard's error`)
    t.same(await post(`${url}/rooms/r/messages`, { data: 1 }, { authorization: 'Bearer ops-token' }), { status: 201, body: { offset: 1 } }, `${name}: let through`)
    const stored = await (await fetch(`${url}/rooms/r/messages`)).json() as { messages: unknown[] }
    t.equal(stored.messages.length, 1, `${name}: stored once`)
  }
})

t.test('a guard that replies refuses, also when the reply is still in an async onSend hook as the guard returns', async (t) => {
  type Req = { headers: Record<string, unknown> }
  type Rep = { code: (n: number) => { send: (body: unknown) => unknown } }
  const unauthorized = { statusCode: 401, code: 'UNAUTHORIZED', error: 'Unauthorized', message: 'Publishing needs the ops token.' }
  const allowed = (request: Req): boolean => request.headers.authorization === 'Bearer ops-token'
  const guards = {
    // Neither returns nor awaits the reply: it is not sent yet when the guard returns.
    plain: function (request: Req, reply: Rep) { if (!allowed(request)) reply.code(401).send(unauthorized) },
    async: async function (request: Req, reply: Rep) { if (!allowed(request)) void reply.code(401).send(unauthorized) }
  }
  for (const [name, guard] of Object.entries(guards)) {
    const { url } = await startApp(t, { restPublish: guard as never }, (app) => {
      app.addHook('onSend', async (_request, _reply, payload) => { await new Promise((resolve) => setImmediate(resolve)); return payload })
    })
    t.same(await post(`${url}/rooms/r/messages`, { data: 'sneaked' }), { status: 401, body: unauthorized }, `${name}: its answer`)
    t.equal((await fetch(`${url}/rooms/r/messages`)).status, 404, `${name}: nothing stored`)
    t.same(await post(`${url}/rooms/r/messages`, { data: 1 }, { authorization: 'Bearer ops-token' }), { status: 201, body: { offset: 1 } }, `${name}: let through`)
  }
})

t.test('a guard refusing with an error of a 4xx status and no code: that status, the code named after it', async (t) => {
  const { url } = await startApp(t, {
    restPublish: function (_request: unknown, _reply: unknown, done: (err?: Error) => void) { done(Object.assign(new Error('Publishing needs the ops token.'), { statusCode: 401 })) } as never
  })
  t.same(await post(`${url}/rooms/r/messages`, { data: 1 }), { status: 401, body: { statusCode: 401, code: 'UNAUTHORIZED', error: 'Unauthorized', message: 'Publishing needs the ops token.' } })
  const tooMany = await startApp(t, { restPublish: async () => { throw Object.assign(new Error('Slow down.'), { statusCode: '429' }) } })
  t.strictSame(await post(`${tooMany.url}/rooms/r/messages`, { data: 1 }), { status: 429, body: { statusCode: 429, code: 'TOO_MANY_REQUESTS', error: 'Too Many Requests', message: 'Slow down.' } }, 'a statusCode given as a string')
  // As http-errors makes them: `status`, and no message of its own here.
  const httpErrors = await startApp(t, { restPublish: async () => { throw { status: 403 } } }) // eslint-disable-line no-throw-literal
  t.same(await post(`${httpErrors.url}/rooms/r/messages`, { data: 1 }), { status: 403, body: { statusCode: 403, code: 'FORBIDDEN', error: 'Forbidden', message: 'Forbidden' } }, 'status, no message')
})

t.test('a guard\'s reply in its own shape is sent as it is; a reply that fails (a bad payload) is a 500, not a request left hanging', async (t) => {
  const own = await startApp(t, { restPublish: async (_request, reply) => { await reply.code(401).send({ error: 'no' }) } })
  t.same(await post(`${own.url}/rooms/r/messages`, { data: 1 }), { status: 401, body: { error: 'no' } })
  const { lines, logger } = logLines()
  const broken = await startApp(t, {
    // An object as text/plain: Fastify's send throws (FST_ERR_REP_INVALID_PAYLOAD_TYPE), so nothing was answered.
    restPublish: ((_request: unknown, reply: { code: (n: number) => { type: (t: string) => { send: (body: unknown) => void } } }) => { reply.code(401).type('text/plain').send({ error: 'no' }) }) as never
  }, undefined, { logger })
  t.match(await post(`${broken.url}/rooms/r/messages`, { data: 1 }), { status: 500, body: { code: 'INTERNAL' } })
  t.equal((await fetch(`${broken.url}/rooms/r/messages`)).status, 404, 'nothing stored')
  t.match(lines, [{ level: 50, err: { code: 'FST_ERR_REP_INVALID_PAYLOAD_TYPE' } }], 'the real error is in the log')
})

t.test('the first word of a guard wins: done() then false lets on (logged); done(err) then false refuses once', async (t) => {
  const { lines, logger } = logLines()
  const on = await startApp(t, { restPublish: function (_request: unknown, _reply: unknown, done: () => void) { done(); return false } as never }, undefined, { logger })
  t.equal((await post(`${on.url}/rooms/r/messages`, { data: 1 })).status, 201)
  t.match(lines, [{ level: 50, msg: 'fastify-rooms: a route guard refused after it had let the request on' }], 'logged, with no hint about declaring done')
  lines.length = 0
  const refused = await startApp(t, {
    restPublish: function (_request: unknown, _reply: unknown, done: (err: Error) => void) { done(new errorCodes.FORBIDDEN('No.')); return false } as never
  }, undefined, { logger })
  t.match(await post(`${refused.url}/rooms/r/messages`, { data: 1 }), { status: 403, body: { message: 'No.' } })
  t.same(lines, [], 'nothing logged')
  // Replied, then false: the reply is the answer, and false adds nothing worth a log line.
  const replied = await startApp(t, { restPublish: async (_request, reply) => { await reply.code(401).send({ error: 'no' }); return false } }, undefined, { logger })
  t.same(await post(`${replied.url}/rooms/r/messages`, { data: 1 }), { status: 401, body: { error: 'no' } })
  t.same(lines, [], 'nothing logged')
})

t.test('a guard whose done is not a declared parameter is taken at its return; a later refusal is logged as an error', async (t) => {
  const { lines, logger } = logLines()
  let refused = (): void => {}
  const logged = new Promise<void>((resolve) => { refused = resolve })
  const { url } = await startApp(t, {
    restPublish: function (...args: unknown[]) {
      setImmediate(() => { (args[2] as (err: Error) => void)(new Error('too late')); refused() })
    } as never
  }, undefined, { logger })
  t.equal((await post(`${url}/rooms/r/messages`, { data: 1 })).status, 201, 'let on at its return, as a guard without done')
  await logged
  t.match(lines, [{ level: 50, msg: /a route guard refused after it had let the request on; declare done/, err: { message: 'too late' } }])
})
