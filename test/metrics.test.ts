import t from 'tap'
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import Fastify from 'fastify'
import { Registry } from 'prom-client'
import type WebSocket from 'ws'
import rooms, { errorCodes, ERROR_CODES, MemoryAdapter, redisAdapter, type RoomsOptions } from '../src/index.js'
import { serverSocketsClosed, startApp, type Started } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { skipRedis, startRedis } from './helpers/redis.js'

type Samples = Map<string, number>

/** The samples of a text-format scrape, keyed by name and labels as printed: `name{label="value"}`. */
function parse (text: string): Samples {
  const samples: Samples = new Map()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const space = line.lastIndexOf(' ')
    samples.set(line.slice(0, space), Number(line.slice(space + 1)))
  }
  return samples
}

async function scrape (url: string, init: RequestInit = {}, path = '/metrics'): Promise<Samples> {
  const response = await fetch(url + path, init)
  if (response.status !== 200) throw new Error(`scrape answered ${response.status}: ${await response.text()}`)
  if (!/^text\/plain; version=0\.0\.4/.test(response.headers.get('content-type') ?? '')) throw new Error(`content-type ${response.headers.get('content-type')}`)
  return parse(await response.text())
}

const named = { authenticate: (r: { headers: Record<string, unknown> }) => ({ id: String(r.headers['x-user']), name: String(r.headers['x-user']) }) }
const as = (user: string): WebSocket.ClientOptions => ({ headers: { 'x-user': user } })

/** Counts what a client sent and received, in WebSocket messages and bytes, as the server should. */
class Traffic {
  frames = { in: 0, out: 0 }
  bytes = { in: 0, out: 0 }
  watch (socket: TestSocket): TestSocket {
    // Sent by the client = received by the server.
    const send = socket.ws.send.bind(socket.ws)
    socket.ws.send = ((data: string, ...rest: never[]) => {
      this.frames.in++
      this.bytes.in += Buffer.byteLength(data)
      return send(data, ...rest)
    }) as typeof socket.ws.send
    socket.ws.on('message', (raw: Buffer) => {
      this.frames.out++
      this.bytes.out += raw.length
    })
    return socket
  }
}

t.test('off by default: no route, and metrics: false is off too', async (t) => {
  for (const options of [{}, { metrics: false }] satisfies RoomsOptions[]) {
    const { url } = await startApp(t, options)
    t.equal((await fetch(`${url}/metrics`)).status, 404)
  }
})

t.test('off costs nothing: prom-client is not even loaded; on, it is', async (t) => {
  // A fresh process, since this one loaded prom-client for its own tests.
  const probe = `
    import { createRequire } from 'node:module'
    import Fastify from 'fastify'
    import rooms from './src/index.ts'
    const app = Fastify()
    await app.register(rooms, { metrics: process.argv[1] === 'on' })
    await app.ready()
    console.log(Object.keys(createRequire(import.meta.url).cache).some((k) => k.includes('/prom-client/')))
    await app.close()`
  const root = fileURLToPath(new URL('..', import.meta.url))
  const loaded = async (metrics: string): Promise<string> => (await promisify(execFile)(process.execPath, ['--import=tsx', '--input-type=module', '-e', probe, metrics], { cwd: root })).stdout.trim()
  t.same(await Promise.all([loaded('off'), loaded('on')]), ['false', 'true'])
})

t.test('every metric moves when its event happens; per-room series only for the allow-list', async (t) => {
  const { url, wsUrl, app } = await startApp(t, { ...named, metrics: { rooms: ['watched'] } })
  const before = await scrape(url)
  for (const name of ['connections', 'rooms', 'members', 'frames_received_total', 'received_bytes_total', 'frames_sent_total', 'sent_bytes_total', 'messages_published_total', 'messages_delivered_total', 'slow_consumers_total', 'heartbeat_timeouts_total']) {
    t.equal(before.get(`fastify_rooms_${name}`), 0, `${name} starts at 0`)
  }
  for (const code of ERROR_CODES) t.equal(before.get(`fastify_rooms_errors_total{code="${code}"}`), 0, `errors_total{code="${code}"} exists from the start`)
  t.equal(before.get('fastify_rooms_room_members{room="watched"}'), 0)
  t.notOk([...before.keys()].some((k) => k.includes('redis')), 'no Redis series with the memory adapter')

  const traffic = new Traffic()
  const ada = traffic.watch(await TestSocket.open(wsUrl, as('ada')))
  const bob = traffic.watch(await TestSocket.open(wsUrl, as('bob')))
  t.teardown(async () => { await ada.close(); await bob.close() })
  // Counted from here: the clients count from here (after their welcome).
  const base = await scrape(url)
  t.equal(base.get('fastify_rooms_connections'), 2, 'a connection opened')
  t.equal(base.get('fastify_rooms_frames_sent_total'), 2, 'the welcomes')

  await ada.join('watched')
  await bob.join('watched')
  await bob.join('other')
  let now = await scrape(url)
  t.equal(now.get('fastify_rooms_rooms'), 2)
  t.equal(now.get('fastify_rooms_members'), 3)
  t.equal(now.get('fastify_rooms_room_members{room="watched"}'), 1 + 1)

  t.match(await ada.request({ type: 'publish', room: 'watched', data: 'hello' }), { type: 'ack', offset: 1 })
  await bob.next((f) => f.type === 'message' && f.data === 'hello')
  t.match(await bob.request({ type: 'publish', room: 'other', data: 'unwatched' }), { type: 'ack', offset: 1 })
  await app.rooms.broadcast('watched', 'from the server')
  await ada.next((f) => f.type === 'message' && f.data === 'from the server')
  await bob.next((f) => f.type === 'message' && f.data === 'from the server')
  ada.send('not json')
  t.match(await ada.next((f) => f.type === 'error'), { code: 'INVALID_FRAME' })
  t.match(await ada.request({ type: 'publish', room: 'other', data: 'x' }), { type: 'error', code: 'NOT_IN_ROOM' })
  await ada.sync()
  await bob.sync()

  now = await scrape(url)
  t.equal(now.get('fastify_rooms_messages_published_total'), 3, 'two publishes by members and one by the server')
  t.equal(now.get('fastify_rooms_messages_delivered_total'), 2 + 1 + 2, 'fanned out to every member of the room')
  t.equal(now.get('fastify_rooms_room_messages_published_total{room="watched"}'), 2)
  t.equal(now.get('fastify_rooms_room_messages_delivered_total{room="watched"}'), 4)
  t.equal(now.get('fastify_rooms_errors_total{code="INVALID_FRAME"}'), 1)
  t.equal(now.get('fastify_rooms_errors_total{code="NOT_IN_ROOM"}'), 1)
  t.equal(now.get('fastify_rooms_errors_total{code="RATE_LIMITED"}'), 0)
  const delta = (name: string): number => now.get(name)! - base.get(name)!
  t.equal(delta('fastify_rooms_frames_received_total'), traffic.frames.in, `every message a client sent (${traffic.frames.in})`)
  t.equal(delta('fastify_rooms_received_bytes_total'), traffic.bytes.in)
  t.equal(delta('fastify_rooms_frames_sent_total'), traffic.frames.out, `every message a client got (${traffic.frames.out})`)
  t.equal(delta('fastify_rooms_sent_bytes_total'), traffic.bytes.out)
  t.notOk([...now.keys()].some((k) => k.includes('room="other"')), 'a room outside the allow-list gets no room label')
  t.same([...now.keys()].filter((k) => k.includes('room=')).sort(), [
    'fastify_rooms_room_members{room="watched"}',
    'fastify_rooms_room_messages_delivered_total{room="watched"}',
    'fastify_rooms_room_messages_published_total{room="watched"}'
  ])

  await ada.close()
  await bob.close()
  await serverSocketsClosed(app, 'the server to see both connections go')
  now = await scrape(url)
  t.equal(now.get('fastify_rooms_connections'), 0)
  t.equal(now.get('fastify_rooms_rooms'), 0)
  t.equal(now.get('fastify_rooms_members'), 0)
})

t.test('a slow consumer cut counts', async (t) => {
  const { url, wsUrl, app } = await startApp(t, { maxBufferedBytes: 64 * 1024, closeTimeoutMs: 5_000, historySize: 0, metrics: true })
  const slow = await TestSocket.open(wsUrl)
  await slow.join('r')
  slow.stopReading()
  const serverSide = [...app.websocketServer.clients][0]!
  // Broadcast until the server gives up on the reader: its socket starts closing (1013).
  await new Promise<void>((resolve) => {
    serverSide.on('close', () => resolve())
    void app.rooms.broadcast('r', 'x'.repeat(4000)).then(function more (): void {
      if (serverSide.readyState === serverSide.OPEN) void app.rooms.broadcast('r', 'x'.repeat(4000)).then(more)
      else resolve()
    })
  })
  t.equal((await scrape(url)).get('fastify_rooms_slow_consumers_total'), 1)
  slow.resumeReading()
  t.equal((await slow.closed).code, 1013)
  t.equal((await scrape(url)).get('fastify_rooms_slow_consumers_total'), 1, 'once per connection')
})

t.test('a heartbeat drop counts', async (t) => {
  const { url, wsUrl } = await startApp(t, { heartbeatMs: 50, metrics: true })
  // autoPong: false makes the client keep its socket open but never answer a ping.
  const silent = await TestSocket.open(wsUrl, { autoPong: false })
  t.equal((await silent.closed).code, 1006)
  t.equal((await scrape(url)).get('fastify_rooms_heartbeat_timeouts_total'), 1)
})

t.test('with authentication configured, the route asks for the credentials REST asks for', async (t) => {
  const { url } = await startApp(t, { authenticate: (r) => r.headers.cookie === 'session=ada' ? { id: 'ada', name: 'Ada' } : null, metrics: true })
  const refused = await fetch(`${url}/metrics`)
  t.equal(refused.status, 401)
  t.match(await refused.json(), { statusCode: 401, code: 'UNAUTHORIZED', error: 'Unauthorized', message: /credentials/ })
  t.equal((await fetch(`${url}/metrics`, { headers: { cookie: 'session=nobody' } })).status, 401)
  t.equal((await scrape(url, { headers: { cookie: 'session=ada' } })).get('fastify_rooms_connections'), 0)
})

t.test('a preHandler guards the route instead, at its own path: e.g. a scrape token', async (t) => {
  const { url } = await startApp(t, {
    authenticate: (r) => r.headers.cookie === 'session=ada' ? { id: 'ada', name: 'Ada' } : null,
    metrics: {
      path: '/internal/metrics',
      preHandler: async (request, reply) => {
        if (request.headers.authorization !== 'Bearer scrape-secret') await reply.code(403).send({ statusCode: 403, code: 'FORBIDDEN', error: 'Forbidden', message: 'Scrapers only.' })
      }
    }
  })
  t.equal((await fetch(`${url}/metrics`)).status, 404, 'not at the default path')
  t.equal((await fetch(`${url}/internal/metrics`)).status, 403)
  t.equal((await fetch(`${url}/internal/metrics`, { headers: { cookie: 'session=ada' } })).status, 403, 'a user\'s credentials do not open it: the preHandler alone decides')
  const samples = await scrape(url, { headers: { authorization: 'Bearer scrape-secret' } }, '/internal/metrics')
  t.equal(samples.get('fastify_rooms_connections'), 0)
})

t.test('into the app\'s own registry, with no route of ours; taken out again when the app closes', async (t) => {
  const register = new Registry()
  const app = Fastify()
  await app.register(rooms, { metrics: { register, path: false } })
  await app.ready()
  t.equal((await app.inject('/metrics')).statusCode, 404)
  t.match(await register.metrics(), /^fastify_rooms_connections 0$/m)
  // A second registration into the same registry would mix two apps' numbers.
  const other = Fastify()
  await t.rejects(async () => { await other.register(rooms, { metrics: { register } }) }, { code: 'FST_ROOMS_INVALID_OPTION', message: /another fastify-rooms registration/ })
  await other.close()
  await app.close()
  t.equal(register.getSingleMetric('fastify_rooms_connections'), undefined)
  const again = Fastify()
  await again.register(rooms, { metrics: { register, path: false } })
  await again.ready()
  t.match(await register.metrics(), /^fastify_rooms_connections 0$/m, 'a new app registers into it again')
  await again.close()
})

t.test('a preHandler written as a plain function: a scrape it lets through is answered, one it throws at is refused', async (t) => {
  const { url } = await startApp(t, {
    metrics: {
      preHandler: (request) => {
        if (request.headers.authorization !== 'Bearer scrape-secret') throw new errorCodes.FORBIDDEN('Scrapers only.')
      }
    }
  })
  t.match(await (await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(10_000) })).json(), { statusCode: 403, code: 'FORBIDDEN', message: 'Scrapers only.' })
  // It hung before: Fastify waited for the done callback a plain function never calls.
  const samples = await scrape(url, { headers: { authorization: 'Bearer scrape-secret' }, signal: AbortSignal.timeout(10_000) })
  t.equal(samples.get('fastify_rooms_connections'), 0)
})

t.test('a preHandler written with a done callback (as @fastify/auth\'s), or one that reads the instance as this, works as Fastify runs it', async (t) => {
  const seen: boolean[] = []
  const callbacks = await startApp(t, {
    metrics: {
      preHandler: function (this: unknown, request: { headers: Record<string, unknown> }, _reply: unknown, done: (err?: Error) => void) {
        done(request.headers.authorization === 'Bearer scrape-secret' ? undefined : new errorCodes.FORBIDDEN('Scrapers only.'))
      } as never
    }
  })
  t.equal((await fetch(`${callbacks.url}/metrics`, { signal: AbortSignal.timeout(10_000) })).status, 403)
  t.equal((await scrape(callbacks.url, { headers: { authorization: 'Bearer scrape-secret' }, signal: AbortSignal.timeout(10_000) })).get('fastify_rooms_connections'), 0)
  // An async guard with a done parameter: Fastify would refuse it as a hook at registration; it is awaited, and its done(err) refuses.
  const asyncDone = await startApp(t, {
    metrics: {
      preHandler: async function (request: { headers: Record<string, unknown> }, _reply: unknown, done: (err?: Error) => void) {
        if (request.headers.authorization !== 'Bearer scrape-secret') done(new errorCodes.FORBIDDEN('Scrapers only.'))
      } as never
    }
  })
  t.equal((await fetch(`${asyncDone.url}/metrics`, { signal: AbortSignal.timeout(10_000) })).status, 403)
  t.equal((await scrape(asyncDone.url, { headers: { authorization: 'Bearer scrape-secret' }, signal: AbortSignal.timeout(10_000) })).get('fastify_rooms_connections'), 0)
  // A predicate shaped like the admin guard, (request, reply, user): it gets done where it expects a user, and its false refuses.
  const predicate = await startApp(t, {
    metrics: {
      preHandler: async function (request: { headers: Record<string, unknown> }, _reply: unknown, user: { role?: string } | undefined) {
        return request.headers.authorization === 'Bearer scrape-secret' || user?.role === 'admin'
      } as never
    }
  })
  t.match(await (await fetch(`${predicate.url}/metrics`, { signal: AbortSignal.timeout(10_000) })).json(), { statusCode: 403, code: 'FORBIDDEN' })
  t.equal((await scrape(predicate.url, { headers: { authorization: 'Bearer scrape-secret' }, signal: AbortSignal.timeout(10_000) })).get('fastify_rooms_connections'), 0)
  const withThis = await startApp(t, {
    metrics: {
      preHandler: async function (this: { hasDecorator: (name: string) => boolean }) { seen.push(this.hasDecorator('rooms')) } as never
    }
  })
  t.equal((await scrape(withThis.url, { signal: AbortSignal.timeout(10_000) })).get('fastify_rooms_connections'), 0)
  t.same(seen, [true], 'this is the Fastify instance')
})

t.test('a registration that fails after its metrics were made frees the app\'s registry when the app closes', async (t) => {
  class StoreDown extends MemoryAdapter {
    override async start (): Promise<void> { throw new Error('the store is down') }
  }
  const register = new Registry()
  const failed = Fastify()
  await t.rejects(async () => { await failed.register(rooms, { metrics: { register, path: false }, adapter: new StoreDown() }).ready() }, /the store is down/)
  await failed.close()
  t.equal(register.getSingleMetric('fastify_rooms_connections'), undefined, 'nothing of the failed registration is left')
  const again = Fastify()
  t.teardown(async () => await again.close())
  await again.register(rooms, { metrics: { register, path: false } })
  await again.ready()
  t.match(await register.metrics(), /^fastify_rooms_connections 0$/m, 'a retry registers into it')
})

t.test('a wrong metrics option fails the registration with a sentence naming it', async (t) => {
  const cases: Array<[unknown, RegExp]> = [
    ['yes', /metrics must be true, false or an object/],
    [{ path: 'metrics' }, /metrics\/path/],
    [{ rooms: ['bad room!'] }, /metrics\/rooms\/0/],
    [{ rooms: 'watched' }, /metrics\/rooms/],
    [{ register: {} }, /metrics\.register must be a prom-client Registry/],
    [{ preHandler: 'guard' }, /metrics\.preHandler must be a function/]
  ]
  for (const [metrics, message] of cases) {
    const app = Fastify()
    await t.rejects(async () => { await app.register(rooms, { metrics } as never) }, { code: 'FST_ROOMS_INVALID_OPTION', message }, JSON.stringify(metrics))
    await app.close()
  }
  t.type(new errorCodes.FST_ROOMS_INVALID_OPTION('x'), TypeError)
})

t.test('Redis: round trips observed, link state down and up, cross-node fan-out counted where it happens', { skip: skipRedis }, async (t) => {
  const redis = await startRedis(t)
  const lines: Array<Record<string, any>> = []
  const waiters: Array<{ match: (line: Record<string, any>) => boolean, resolve: () => void }> = []
  const stream = {
    write: (text: string): void => {
      const line = JSON.parse(text) as Record<string, any>
      lines.push(line)
      for (const waiter of [...waiters]) {
        if (waiter.match(line)) {
          waiters.splice(waiters.indexOf(waiter), 1)
          waiter.resolve()
        }
      }
    }
  }
  const logged = async (match: (line: Record<string, any>) => boolean): Promise<void> => await new Promise((resolve) => waiters.push({ match, resolve }))
  const nodes: Started[] = []
  for (let i = 0; i < 2; i++) {
    nodes.push(await startApp(t, { ...named, metrics: { rooms: ['watched'] }, adapter: redisAdapter({ url: redis.url, leaseMs: 60_000 }) }, undefined, i === 0 ? { logger: { level: 'warn', stream } } : {}))
  }
  const [a, b] = nodes as [Started, Started]
  let samples = await scrape(a.url)
  t.equal(samples.get('fastify_rooms_redis_link_up{link="command"}'), 1)
  t.equal(samples.get('fastify_rooms_redis_link_up{link="subscriber"}'), 1)
  t.equal(samples.get('fastify_rooms_redis_disconnects_total{link="command"}'), 0)
  t.ok(samples.get('fastify_rooms_redis_round_trip_seconds_count{link="command"}')! > 0, 'starting up took round trips')
  const trips = samples.get('fastify_rooms_redis_round_trip_seconds_count{link="command"}')!

  const ada = await TestSocket.open(a.wsUrl, as('ada'))
  const bob = await TestSocket.open(b.wsUrl, as('bob'))
  t.teardown(async () => { await ada.close(); await bob.close() })
  await ada.join('watched')
  await bob.join('watched')
  await ada.request({ type: 'publish', room: 'watched', data: 'across' })
  await bob.next((f) => f.type === 'message' && f.data === 'across')
  await ada.next((f) => f.type === 'message' && f.data === 'across')
  samples = await scrape(a.url)
  t.ok(samples.get('fastify_rooms_redis_round_trip_seconds_count{link="command"}')! >= trips + 2, 'the join and the publish were observed')
  t.ok(samples.get('fastify_rooms_redis_round_trip_seconds_bucket{le="+Inf",link="command"}')! >= trips + 2)
  t.equal(samples.get('fastify_rooms_messages_published_total'), 1)
  t.equal(samples.get('fastify_rooms_room_messages_delivered_total{room="watched"}'), 1, 'node a fanned out to its one member')
  const atB = await scrape(b.url)
  t.equal(atB.get('fastify_rooms_messages_published_total'), 0, 'published through node a only')
  t.equal(atB.get('fastify_rooms_room_messages_delivered_total{room="watched"}'), 1, 'node b fanned out to its one member')
  t.equal(atB.get('fastify_rooms_members'), 1, 'node b counts its own members, not the cluster\'s')

  const lost = logged((l) => /lost the link to Redis/.test(l.msg))
  await redis.kill()
  await lost
  samples = await scrape(a.url)
  const up = ['command', 'subscriber'].map((link) => samples.get(`fastify_rooms_redis_link_up{link="${link}"}`))
  t.ok(up.includes(0), `a link shows down (${up.join(', ')})`)
  const breaks = ['command', 'subscriber'].map((link) => samples.get(`fastify_rooms_redis_disconnects_total{link="${link}"}`)!)
  t.ok(breaks[0]! + breaks[1]! >= 1, 'the break is counted')

  const back = logged((l) => /link to Redis is back/.test(l.msg))
  await redis.restart()
  await back
  samples = await scrape(a.url)
  t.equal(samples.get('fastify_rooms_redis_link_up{link="command"}'), 1)
  t.equal(samples.get('fastify_rooms_redis_link_up{link="subscriber"}'), 1)
  t.equal(samples.get('fastify_rooms_redis_disconnects_total{link="command"}'), 1, 'one break of the command connection')
  t.equal(samples.get('fastify_rooms_redis_disconnects_total{link="subscriber"}'), 1)
  t.match(lines.filter((l) => /link to Redis/.test(l.msg)), [
    { level: 40, nodeId: /^[0-9a-f]+$/, msg: /lost the link to Redis/ },
    { level: 40, nodeId: /^[0-9a-f]+$/, msg: /link to Redis is back/ }
  ], 'link changes go out at warn')
})
