import t from 'tap'
import { memoryAdapter } from '../src/index.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { eachAdapter } from './helpers/deployment.js'

async function get (url: string): Promise<{ status: number, body: any }> {
  const res = await fetch(url)
  return { status: res.status, body: await res.json() }
}

eachAdapter(t, 'GET /rooms/:room/messages pages through history with after and limit', async (t, deploy) => {
  const d = await deploy()
  const a = await TestSocket.open(`${d.node(0).wsUrl}?name=ada`)
  const { url } = d.node(1)
  t.teardown(() => a.close())
  const { epoch } = await a.join('r')
  for (let i = 1; i <= 5; i++) await a.request({ type: 'publish', room: 'r', data: { n: i } })
  await d.app.rooms.broadcast('r', 'from the server')

  const all = await get(`${url}/rooms/r/messages`)
  t.equal(all.status, 200)
  t.equal(all.body.epoch, epoch)
  t.same(all.body.messages.map((m: { offset: number }) => m.offset), [1, 2, 3, 4, 5, 6])
  t.match(all.body.messages[0], { room: 'r', data: { n: 1 }, offset: 1, ts: Number, from: { id: a.welcome.user.id, name: 'ada' } })
  t.notOk('type' in all.body.messages[0], 'REST shows the message without the frame type')
  t.notOk('from' in all.body.messages[5], 'server messages have no from')
  t.same((await get(`${url}/rooms/r/messages?after=2&limit=2`)).body.messages.map((m: { offset: number }) => m.offset), [3, 4])
  t.same((await get(`${url}/rooms/r/messages?after=6`)).body, { messages: [], epoch })
  // Past any offset there can be, as far as digits go (a number that large would read as Infinity): still an empty page.
  t.same((await get(`${url}/rooms/r/messages?after=${'9'.repeat(400)}`)).body, { messages: [], epoch })
})

eachAdapter(t, 'REST history: 404 for a room with neither members nor history, 400 for bad input', async (t, deploy) => {
  const { url } = (await deploy()).node(1)
  t.match(await get(`${url}/rooms/never/messages`), { status: 404, body: { statusCode: 404, code: 'ROOM_NOT_FOUND' } })
  t.match(await get(`${url}/rooms/bad%20name/messages`), { status: 400, body: { code: 'INVALID_ROOM' } })
  for (const q of ['after=-1', 'after=x', 'limit=0', 'limit=1001', 'after=1.5', 'limit=1e2', 'after=0x1']) {
    t.match(await get(`${url}/rooms/r/messages?${q}`), { status: 400, body: { code: 'FST_ERR_VALIDATION' } }, q)
  }
})

eachAdapter(t, 'history outlives the last member; the room itself does not', async (t, deploy) => {
  const d = await deploy()
  const a = await TestSocket.open(d.node(0).wsUrl)
  const { url } = d.node(1)
  t.teardown(() => a.close())
  const { epoch } = await a.join('r')
  await a.request({ type: 'publish', room: 'r', data: 'kept' })
  await a.request({ type: 'leave', room: 'r' })
  t.equal((await get(`${url}/rooms/r`)).status, 404, 'no members: no room')
  t.same((await get(`${url}/rooms/r/messages`)).body.messages.map((m: { data: string }) => m.data), ['kept'])
  t.match(await a.join('r', { since: { offset: 0, epoch } }), { recovered: true, offset: 1, epoch }, 'the same history continues')
  t.equal((await a.next((f) => f.type === 'message')).data, 'kept')
})

eachAdapter(t, 'historySize keeps the last N messages', async (t, deploy) => {
  const d = await deploy({ historySize: 3 })
  const { url } = d.node(1)
  for (let i = 1; i <= 7; i++) await d.app.rooms.broadcast('r', i)
  t.same((await get(`${url}/rooms/r/messages`)).body.messages.map((m: { offset: number }) => m.offset), [5, 6, 7])
  t.same((await get(`${url}/rooms/r/messages?after=1`)).body.messages.map((m: { offset: number }) => m.offset), [5, 6, 7], 'the first offset above after + 1 tells the caller of the gap')
})

eachAdapter(t, 'historySize 0 keeps nothing: any gap is unrecoverable', async (t, deploy) => {
  const d = await deploy({ historySize: 0 })
  const a = await TestSocket.open(d.node(0).wsUrl)
  const b = await TestSocket.open(d.node(1).wsUrl)
  t.teardown(() => Promise.all([a.close(), b.close()]))
  const { epoch } = await a.join('r')
  await b.join('r')
  await a.request({ type: 'leave', room: 'r' })
  await d.node(1).app.rooms.broadcast('r', 1)
  t.match(await a.join('r', { since: { offset: 0, epoch } }), { recovered: false, offset: 1 })
})

// Memory only: the expiry is driven through the memory adapter's clock seam, without waiting for real time.
t.test('historyTtlMs drops a room\'s history that long after its last publish; then a new epoch begins', async (t) => {
  let now = 1_000_000
  const { wsUrl, url, app } = await startApp(t, { historyTtlMs: 60_000, adapter: memoryAdapter({ now: () => now }) })
  await app.rooms.broadcast('r', 'old')
  now += 59_999
  t.equal((await get(`${url}/rooms/r/messages`)).body.messages.length, 1, 'kept until the TTL')
  await app.rooms.broadcast('r', 'refreshes the TTL')
  now += 59_999
  t.equal((await get(`${url}/rooms/r/messages`)).body.messages.length, 2)
  const epoch = (await get(`${url}/rooms/r/messages`)).body.epoch
  now += 1
  t.equal((await get(`${url}/rooms/r/messages`)).status, 404, 'expired with no members: forgotten')
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  const rejoined = await a.join('r', { since: { offset: 2, epoch } })
  t.match(rejoined, { recovered: false, offset: 0 })
  t.not(rejoined.epoch, epoch)
})

// The sweep runs every 30 s here (half the TTL): the test's clock passes the TTL without it.
t.test('a publish after historyTtlMs, before the sweep, keeps none of the expired messages', async (t) => {
  let now = 1_000_000
  const { wsUrl, app } = await startApp(t, { historyTtlMs: 60_000, adapter: memoryAdapter({ now: () => now }) })
  await app.rooms.broadcast('empty', 'old')
  const { epoch } = await app.rooms.history('empty') as { epoch: string }
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  const joined = await a.join('kept')
  await app.rooms.broadcast('kept', 'old')
  now += 60_000
  await app.rooms.broadcast('empty', 'new')
  await app.rooms.broadcast('kept', 'new')
  const empty = await app.rooms.history('empty')
  t.same(empty?.messages.map((m) => [m.offset, JSON.parse(m.frame).data]), [[1, 'new']], 'no members: forgotten, as the sweep would have, and begun again')
  t.not(empty?.epoch, epoch, 'in a new epoch')
  const kept = await app.rooms.history('kept')
  t.same(kept?.messages.map((m) => [m.offset, JSON.parse(m.frame).data]), [[2, 'new']], 'with members: the offsets go on, the old message is gone')
  t.equal(kept?.epoch, joined.epoch)
})

eachAdapter(t, 'maxHistoryRooms: past the cap, the least recently published room loses its history first', async (t, deploy) => {
  const d = await deploy({ maxHistoryRooms: 2 })
  const { app } = d
  const { url } = d.node(1)
  const a = await TestSocket.open(d.node(0).wsUrl)
  t.teardown(() => a.close())
  const { epoch } = await a.join('one')
  await app.rooms.broadcast('one', 1)
  await app.rooms.broadcast('two', 2)
  await app.rooms.broadcast('one', 'one is fresher now')
  await app.rooms.broadcast('three', 3)
  t.equal((await get(`${url}/rooms/two/messages`)).status, 404, '"two" was the least recently published')
  t.equal((await get(`${url}/rooms/one/messages`)).body.messages.length, 2)
  t.equal((await get(`${url}/rooms/three/messages`)).body.messages.length, 1)
  await app.rooms.broadcast('four', 4)
  const one = await get(`${url}/rooms/one/messages`)
  t.same(one.body, { messages: [], epoch }, 'a room with members keeps its epoch and offsets, but no history')
  t.equal((await app.rooms.get('one'))?.offset, 2)
  // On a cluster the budget holds per partition (test/cluster.test.ts).
}, ['memory', 'redis'])

eachAdapter(t, 'a message too large to keep leaves a hole in history: pages and recovery around it stay exact', async (t, deploy) => {
  // The budget holds a room's bookkeeping (about 1 KiB on the memory adapter) and the small messages, not the large one.
  const d = await deploy({ maxHistoryBytes: 4000, maxMessageBytes: 8000, historySize: 100 })
  const { url } = d.node(1)
  const a = await TestSocket.open(d.node(0).wsUrl)
  t.teardown(() => a.close())
  const { epoch } = await a.join('r')
  for (const data of [1, 2, 'x'.repeat(5000), 4, 5]) await d.app.rooms.broadcast('r', data)
  await a.next((f) => f.type === 'message' && f.offset === 5)
  const offsets = async (query: string): Promise<number[]> => (await get(`${url}/rooms/r/messages?${query}`)).body.messages.map((m: { offset: number }) => m.offset)
  t.same(await offsets(''), [1, 2, 4, 5], 'offset 3 was delivered, not kept')
  t.same(await offsets('after=3'), [4, 5], 'the page starts after the asked offset, not a count of kept messages further')
  t.same(await offsets('after=2'), [4, 5])
  t.same(await offsets('after=1&limit=2'), [2, 4])
  t.same(await offsets('after=4'), [5])

  const b = await TestSocket.open(d.node(1).wsUrl)
  t.teardown(() => b.close())
  t.match(await b.join('r', { since: { offset: 3, epoch } }), { recovered: true, offset: 5 }, 'everything after 3 is kept')
  await b.sync()
  t.same(b.take('message').map((m) => m.offset), [4, 5])
  await b.request({ type: 'leave', room: 'r' })
  t.match(await b.join('r', { since: { offset: 2, epoch } }), { recovered: false, offset: 5 }, 'offset 3 cannot be replayed')
  await b.sync()
  t.same(b.take('message'), [], 'no partial replay')
}, ['memory', 'redis'])
