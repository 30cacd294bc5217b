import t from 'tap'
import Fastify from 'fastify'
import rooms, { errorCodes, memoryAdapter, redisAdapter } from '../src/index.js'

t.test('invalid options fail registration with FST_ROOMS_INVALID_OPTION and a sentence naming the option', async (t) => {
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ path: 'ws' }, /options\/path/],
    [{ heartbeatMs: 1 }, /options\/heartbeatMs/],
    [{ maxMessageBytes: 'big' }, /options\/maxMessageBytes/],
    [{ maxMessageBytes: 100, maxFrameBytes: 100 }, /maxFrameBytes must be larger/],
    [{ onJoin: 'yes' }, /onJoin must be a function/],
    [{ demo: 'chat' }, /options\/demo/],
    [{ dataSchema: 5 }, /dataSchema/],
    [{ publicUserFields: ['id'] }, /publicUserFields must include "id" and "name"/],
    // Node would run these timers after 1 ms: a heartbeat every millisecond, an auth check refused at once.
    [{ heartbeatMs: 2 ** 31 }, /options\/heartbeatMs/],
    [{ closeTimeoutMs: 2 ** 31 }, /options\/closeTimeoutMs/],
    [{ authTimeoutMs: 2 ** 31 }, /options\/authTimeoutMs/],
    [{ maxBufferedBytez: 1 << 20 }, /"maxBufferedBytez" is not an option of fastify-rooms/],
    [{ bogus: 1, other: 2 }, /"bogus", "other" are not options of fastify-rooms/],
    [{ adapter: memoryAdapter }, /adapter must be an adapter object.*called, not the function itself/],
    [{ adapter: {} }, /adapter must be an adapter object/],
    // An entry no browser's Origin header can equal would refuse every page without a word.
    [{ allowedOrigins: ['https://app.example.com/'] }, /allowedOrigins: "https:\/\/app.example.com\/" is not an origin as browsers send it: write it as "https:\/\/app.example.com"/],
    [{ allowedOrigins: ['https://app.example.com', 'app.example.com'] }, /allowedOrigins: "app.example.com" is not an origin/],
    [{ allowedOrigins: ['*'] }, /allowedOrigins: "\*" is not an origin/],
    [{ allowedOrigins: ['HTTPS://App.Example.com:443'] }, /write it as "https:\/\/app.example.com"/]
  ]
  for (const [options, message] of cases) {
    const app = Fastify()
    const err = await app.register(rooms, options as never).ready().then(() => undefined, (err: unknown) => err)
    t.match(err, { name: 'FastifyError', code: 'FST_ROOMS_INVALID_OPTION', statusCode: 500, message }, JSON.stringify(options))
    t.ok(err instanceof errorCodes.FST_ROOMS_INVALID_OPTION, 'an instance of the exported class')
    t.ok(err instanceof TypeError, 'still a TypeError, as before it had a code')
    t.match((err as Error).message, /^fastify-rooms: invalid options: /)
    await app.close().catch(() => {})
  }
})

t.test('Fastify\'s own register options pass; the largest timer Node runs as asked is accepted', async (t) => {
  const app = Fastify()
  t.teardown(async () => await app.close())
  await app.register(rooms, { logLevel: 'warn', heartbeatMs: 2 ** 31 - 1, allowedOrigins: ['https://app.example.com', 'http://localhost:3000', 'null'] } as never)
  await app.ready()
  t.ok(app.hasDecorator('rooms'))
})

t.test('redisAdapter checks its durations and replica count when it is made', async (t) => {
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ leaseMs: 0 }, /leaseMs must be a whole number from 30/],
    [{ leaseMs: 2 ** 31 }, /leaseMs/],
    [{ commandTimeoutMs: 0 }, /commandTimeoutMs must be a whole number from 1/],
    [{ commandTimeoutMs: 1.5 }, /commandTimeoutMs/],
    [{ commandTimeoutMs: Number.NaN }, /commandTimeoutMs/],
    [{ waitReplicas: -1 }, /waitReplicas must be a whole number from 0/]
  ]
  for (const [options, message] of cases) {
    t.throws(() => redisAdapter({ url: 'redis://127.0.0.1:1', ...options }), { name: 'TypeError', message }, JSON.stringify(options))
  }
})

t.test('registration mistakes have codes of their own', async (t) => {
  const twice = Fastify()
  await twice.register(rooms)
  await t.rejects(async () => { await twice.register(rooms, { path: '/other', prefix: '/other' }) }, { code: 'FST_ROOMS_ALREADY_REGISTERED' })
  await twice.close().catch(() => {})

  const siblings = Fastify()
  siblings.register(async (child) => { await child.register(rooms) })
  siblings.register(async (child) => { await child.register(rooms, { path: '/two', prefix: '/two' }) })
  await t.rejects(async () => { await siblings.ready() }, { code: 'FST_ROOMS_WEBSOCKET_NOT_AT_ROOT' })
  await siblings.close().catch(() => {})
})

t.test('every error class is made once, in one table, under its own code', async (t) => {
  for (const [key, Err] of Object.entries(errorCodes)) {
    const err = new Err('x', 1) as Error & { code: string, statusCode: number }
    t.equal(err.code, key, `${key}: the table key is the code`)
    t.ok(err instanceof Err, `${key}: instanceof its class`)
    t.ok(err.statusCode >= 400 && err.statusCode < 600, `${key}: an HTTP status`)
  }
  t.equal(new Set(Object.values(errorCodes)).size, Object.keys(errorCodes).length, 'no class appears twice')
})
