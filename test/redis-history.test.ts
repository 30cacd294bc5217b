import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import WebSocket from 'ws'
import { redisAdapter, type RoomsOptions } from '../src/index.js'
import { startApp, type Started } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { eventually, skipRedis, startRedis } from './helpers/redis.js'

const named = { authenticate: (r: { headers: Record<string, unknown> }) => ({ id: String(r.headers['x-user']), name: String(r.headers['x-user']) }) }
const as = (user: string): WebSocket.ClientOptions => ({ headers: { 'x-user': user } })

t.test('redis history, bounds and errors', { skip: skipRedis }, async (t) => {
  const redis = await startRedis(t)
  const inspect = new Redis(redis.url)
  // Its reconnect attempts while a test has Redis down are expected: not unhandled errors.
  inspect.on('error', () => {})
  t.teardown(() => inspect.disconnect())
  let prefixes = 0

  /** One instance with its own key prefix; `logged` gets its error lines. */
  async function node (t: Test, options: RoomsOptions = {}): Promise<Started & { prefix: string, logged: Array<Record<string, any>> }> {
    const prefix = `h${++prefixes}:`
    const logged: Array<Record<string, any>> = []
    const started = await startApp(t, { ...named, ...options, adapter: redisAdapter({ url: redis.url, keyPrefix: prefix }) }, undefined, {
      logger: { level: 'error', stream: { write: (line: string) => { logged.push(JSON.parse(line)) } } }
    })
    return { ...started, prefix, logged }
  }

  const keysOf = async (pattern: string): Promise<string[]> => (await inspect.keys(pattern)).sort()

  t.test('history after an offset past the last one is an empty page, never an error', async (t) => {
    const { app, url } = await node(t)
    await app.rooms.broadcast('far', 1)
    for (const after of ['1', '2', '1000', String(Number.MAX_SAFE_INTEGER), '1' + '0'.repeat(21)]) {
      const res = await fetch(`${url}/rooms/far/messages?after=${after}`)
      t.equal(res.status, 200, `after=${after}`)
      t.same((await res.json()).messages, [], `after=${after}: no messages`)
    }
    for (const after of [1, 5, 2 ** 53, 1e21, Infinity]) {
      t.same((await app.rooms.history('far', after))?.messages, [], `app.rooms.history after ${after}`)
    }
    t.same((await app.rooms.history('far', 0.5))?.messages.map((m) => m.offset), [1], 'a fractional after counts from its whole part')
  })

  t.test('history after 0 returns the retained messages once the stream was trimmed', async (t) => {
    const { app, url } = await node(t, { historySize: 3 })
    for (let i = 1; i <= 5; i++) await app.rooms.broadcast('trim', i)
    const page = await app.rooms.history('trim', 0)
    t.same(page?.messages.map((m) => m.offset), [3, 4, 5], 'the first retained offset is 3')
    t.equal(page?.offset, 5)
    t.same((await (await fetch(`${url}/rooms/trim/messages?after=0&limit=2`)).json()).messages.map((m: { data: number }) => m.data), [3, 4])
    t.same((await app.rooms.history('trim', 3))?.messages.map((m) => m.offset), [4, 5])
  })

  t.test('historySize 0: broadcasts to a room with no members leave no keys behind', async (t) => {
    const { app, prefix } = await node(t, { historySize: 0 })
    for (let i = 0; i < 3; i++) await app.rooms.broadcast('nobody', i)
    t.same(await keysOf(`${prefix}r:*`), [], 'no key of the room')
    t.equal(await app.rooms.history('nobody'), null, 'no history')
  })

  t.test('a room\'s keys expire historyTtlMs after its last publish', async (t) => {
    const ttl = 300
    const { app, wsUrl, prefix } = await node(t, { historyTtlMs: ttl })
    const ada = await TestSocket.open(wsUrl, as('ada'))
    await ada.join('ttl')
    await app.rooms.broadcast('ttl', 1)
    await ada.close()
    await eventually(async () => await app.rooms.get('ttl'), (room) => room === null, 'ada is gone')
    await app.rooms.broadcast('quiet', 1)
    // The instances' own keys (leases, the reaper's note, the resume secret) live while they run; every key of a room expires.
    const roomKeys = async (): Promise<string[]> => (await keysOf(`${prefix}*`)).filter((k) => k !== `${prefix}nodes` && k !== `${prefix}reaper` && k !== `${prefix}secret` && !k.startsWith(`${prefix}n:`))
    const keys = await roomKeys()
    t.ok(keys.length > 0, `keys while the history lives: ${keys.join(', ')}`)
    for (const key of keys) {
      const pttl = await inspect.pttl(key)
      t.ok(pttl > 0 && pttl <= ttl, `${key} expires within ${ttl} ms (${pttl})`)
    }
    // Redis expires keys on its own, with no event to await.
    await eventually(roomKeys, (left) => left.length === 0, 'every key expired', 5_000)
    t.equal(await app.rooms.history('ttl'), null)
  })

  t.test('maxHistoryRooms: the least recently published room loses its history first', async (t) => {
    const { app, prefix } = await node(t, { maxHistoryRooms: 2 })
    await app.rooms.broadcast('lru-a', 1)
    await app.rooms.broadcast('lru-b', 1)
    await app.rooms.broadcast('lru-a', 2)
    await app.rooms.broadcast('lru-c', 1)
    t.equal(await app.rooms.history('lru-b'), null, 'b was published least recently: gone')
    t.same((await app.rooms.history('lru-a'))?.messages.map((m) => m.offset), [1, 2])
    t.same((await app.rooms.history('lru-c'))?.messages.map((m) => m.offset), [1])
    t.same(await keysOf(`${prefix}r:lru-b:*`), [], 'nothing of b is left')
  })

  t.test('maxHistoryBytes bounds the retained frames across rooms, least recently published first', async (t) => {
    const { app } = await node(t, { maxHistoryBytes: 1000, historySize: 100 })
    const payload = 'x'.repeat(100)
    for (let i = 0; i < 4; i++) await app.rooms.broadcast('bytes-old', payload)
    for (let i = 0; i < 4; i++) await app.rooms.broadcast('bytes-new', payload)
    const bytes = async (room: string): Promise<number> => (await app.rooms.history(room))?.messages.reduce((n, m) => n + Buffer.byteLength(m.frame), 0) ?? 0
    t.ok(await bytes('bytes-old') + await bytes('bytes-new') <= 1000, 'within the budget')
    t.equal(await app.rooms.history('bytes-old'), null, 'the older room went first')
    t.same((await app.rooms.history('bytes-new'))?.messages.map((m) => m.offset), [1, 2, 3, 4], 'the newer room kept everything')
    for (let i = 0; i < 6; i++) await app.rooms.broadcast('bytes-new', payload)
    const page = await app.rooms.history('bytes-new')
    t.ok(await bytes('bytes-new') <= 1000, 'one room alone is trimmed to the budget from its oldest message')
    const offsets = page?.messages.map((m) => m.offset) ?? []
    t.same(offsets, Array.from({ length: offsets.length }, (_, i) => 10 - offsets.length + 1 + i), `the newest messages stay: ${offsets.join(',')}`)
    t.ok(offsets.length >= 5, 'as many as fit')
  })

  t.test('a message larger than the whole history budget is delivered but not retained', async (t) => {
    const { app, wsUrl, url } = await node(t, { maxHistoryBytes: 1000, maxMessageBytes: 4000 })
    const ada = await TestSocket.open(wsUrl, as('ada'))
    t.teardown(() => ada.close())
    await ada.join('big')
    t.match(await ada.request({ type: 'publish', room: 'big', data: 'x'.repeat(2000) }), { type: 'ack', offset: 1 })
    t.match(await ada.next((f) => f.type === 'message'), { offset: 1 })
    t.match(await ada.request({ type: 'publish', room: 'big', data: 'small' }), { type: 'ack', offset: 2 })
    t.equal(await app.rooms.broadcast('big', 'x'.repeat(2000)), 3)
    const history = await (await fetch(`${url}/rooms/big/messages`, { headers: { 'x-user': 'ada' } })).json() as { messages: Array<{ offset: number }> }
    t.same(history.messages.map((m) => m.offset), [2], 'only the message that fits is kept')
  })

  t.test('an error from Redis reaches the client as INTERNAL with a generic message; the log has the real one', async (t) => {
    const { app, wsUrl, url, prefix, logged } = await node(t, { restPublish: async () => {} })
    const ada = await TestSocket.open(wsUrl, as('ada'))
    t.teardown(() => ada.close())
    await ada.join('broken')
    // A key of the wrong type: every publish script fails inside Redis with WRONGTYPE.
    await inspect.del(`${prefix}r:broken:seq`)
    await inspect.hset(`${prefix}r:broken:seq`, 'not', 'a counter')
    const reply = await ada.request({ type: 'publish', room: 'broken', data: 1 })
    t.match(reply, { type: 'error', code: 'INTERNAL' })
    t.notMatch(reply.message, /WRONGTYPE|ERR|script|redis|lua/i, `no Redis text reaches the client: ${reply.message}`)
    t.equal(ada.ws.readyState, WebSocket.OPEN)
    const res = await fetch(`${url}/rooms/broken/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ data: 1 }) })
    t.equal(res.status, 500)
    const body = await res.json()
    t.match(body, { statusCode: 500, code: 'INTERNAL' })
    t.notMatch(body.message, /WRONGTYPE|ERR|script|redis|lua/i, `nor through REST: ${body.message}`)
    await t.rejects(app.rooms.broadcast('broken', 1), { code: 'INTERNAL', message: /logged/ })
    const errors = logged.filter((l) => l.level === 50 && /WRONGTYPE/.test(JSON.stringify(l.err)))
    t.ok(errors.length > 0, 'the Redis error is logged at error level')
    // The call's packed publishes are users' messages: the log gives their size, not their bytes.
    t.notOk(errors.some((l) => /"type":"Buffer"|"data":\[/.test(JSON.stringify(l.err))), 'no call bytes in the log')
    t.ok(errors.some((l) => /<\d+ bytes>/.test(JSON.stringify(l.err))), 'the packed publishes appear as their size')
  })
})
