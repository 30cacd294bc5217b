import t from 'tap'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { eachAdapter } from './helpers/deployment.js'

async function get (url: string): Promise<{ status: number, body: any }> {
  const res = await fetch(url)
  return { status: res.status, body: await res.json() }
}

eachAdapter(t, 'GET /rooms lists rooms with members, sorted by name, paged with after/limit', async (t, deploy) => {
  const d = await deploy()
  const a = await TestSocket.open(d.node(0).wsUrl)
  const b = await TestSocket.open(d.node(1).wsUrl)
  // Asked of the instance that a, who joined most rooms, is not on.
  const { url } = d.node(1)
  t.teardown(() => Promise.all([a.close(), b.close()]))
  for (const room of ['delta', 'alpha', 'chat:b', 'chat:a', 'charlie']) await a.join(room)
  await b.join('alpha')

  t.same(await get(`${url}/rooms`), {
    status: 200,
    body: { rooms: [{ name: 'alpha', count: 2 }, { name: 'charlie', count: 1 }, { name: 'chat:a', count: 1 }, { name: 'chat:b', count: 1 }, { name: 'delta', count: 1 }], next: null }
  })
  const page1 = await get(`${url}/rooms?limit=2`)
  t.same(page1.body, { rooms: [{ name: 'alpha', count: 2 }, { name: 'charlie', count: 1 }], next: 'charlie' })
  const page2 = await get(`${url}/rooms?limit=2&after=${page1.body.next as string}`)
  t.same(page2.body, { rooms: [{ name: 'chat:a', count: 1 }, { name: 'chat:b', count: 1 }], next: 'chat:b' })
  const page3 = await get(`${url}/rooms?limit=2&after=chat:b`)
  t.same(page3.body, { rooms: [{ name: 'delta', count: 1 }], next: null }, 'the last page says next: null')
  t.same((await get(`${url}/rooms?prefix=chat:`)).body, { rooms: [{ name: 'chat:a', count: 1 }, { name: 'chat:b', count: 1 }], next: null })
  t.same((await get(`${url}/rooms?prefix=chat:&limit=1`)).body, { rooms: [{ name: 'chat:a', count: 1 }], next: 'chat:a' })
  t.same((await get(`${url}/rooms?prefix=chat:&limit=1&after=chat:a`)).body, { rooms: [{ name: 'chat:b', count: 1 }], next: null })
  t.same((await get(`${url}/rooms?after=bravo`)).body.rooms.map((r: { name: string }) => r.name), ['charlie', 'chat:a', 'chat:b', 'delta'], 'after need not be a room')
  t.same((await get(`${url}/rooms?prefix=zzz`)).body, { rooms: [], next: null })

  await a.request({ type: 'leave', room: 'delta' })
  t.notOk((await get(`${url}/rooms`)).body.rooms.some((r: { name: string }) => r.name === 'delta'), 'a room without members is not listed')
})

eachAdapter(t, 'GET /rooms rejects bad paging with 400 in Fastify\'s error shape', async (t, deploy) => {
  const { url } = (await deploy()).node(1)
  for (const q of ['limit=0', 'limit=1001', 'limit=abc', `prefix=${'x'.repeat(129)}`, 'limit=1.5', 'limit=1e2', 'limit=0x10', 'limit=2&limit=3']) {
    const res = await get(`${url}/rooms?${q}`)
    t.equal(res.status, 400, q)
    t.match(res.body, { statusCode: 400, code: 'FST_ERR_VALIDATION', error: 'Bad Request', message: String })
  }
})

eachAdapter(t, 'GET /rooms/:room: details, 404 ROOM_NOT_FOUND, 400 INVALID_ROOM', async (t, deploy) => {
  const d = await deploy()
  const a = await TestSocket.open(`${d.node(0).wsUrl}?name=ada`)
  const { url } = d.node(1)
  t.teardown(() => a.close())
  const joined = await a.join('lobby')
  await a.request({ type: 'publish', room: 'lobby', data: 'x' })
  t.same(await get(`${url}/rooms/lobby`), {
    status: 200,
    body: { name: 'lobby', count: 1, members: [{ id: a.welcome.user.id, name: 'ada' }], membersNext: null, offset: 1, epoch: joined.epoch }
  })
  t.same(await get(`${url}/rooms/nobody-here`), {
    status: 404,
    body: { statusCode: 404, code: 'ROOM_NOT_FOUND', error: 'Not Found', message: 'Room "nobody-here" has no members.' }
  })
  const bad = await get(`${url}/rooms/${encodeURIComponent('bad name!')}`)
  t.equal(bad.status, 400)
  t.match(bad.body, { statusCode: 400, code: 'INVALID_ROOM', error: 'Bad Request', message: /invalid/ })
  t.equal((await get(`${url}/rooms/${'x'.repeat(129)}`)).status, 400, 'too long')
})

t.test('extra member fields from authenticate that publicUserFields shows are listed as is', async (t) => {
  const { wsUrl, url } = await startApp(t, { authenticate: () => ({ id: 'u1', name: 'ada', avatar: '/a.png', role: 'admin' }), publicUserFields: ['id', 'name', 'avatar', 'role'] })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  await a.join('r')
  t.same((await get(`${url}/rooms/r`)).body.members, [{ id: 'u1', name: 'ada', avatar: '/a.png', role: 'admin' }])
})

// Memory only: which routes an instance registers is its own configuration; no adapter is involved.
t.test('prefix moves the REST API; rest: false turns it off', async (t) => {
  const moved = await startApp(t, { prefix: '/api/chat-rooms' })
  t.equal((await fetch(`${moved.url}/api/chat-rooms`)).status, 200)
  t.equal((await fetch(`${moved.url}/rooms`)).status, 404)
  const off = await startApp(t, { rest: false })
  t.equal((await fetch(`${off.url}/rooms`)).status, 404)
})

// Memory only: the router's parameter length and its warning belong to each instance.
t.test('long room names: 128 characters work over REST when the router allows them; a warning says how otherwise', async (t) => {
  const { wsUrl, url } = await startApp(t)
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  const long = 'x'.repeat(128)
  await a.join(long)
  t.equal((await get(`${url}/rooms/${long}`)).body.name, long)

  const warnings: string[] = []
  await startApp(t, {}, undefined, { routerOptions: { maxParamLength: 100 }, logger: { level: 'warn', stream: { write: (line: string) => { warnings.push(JSON.parse(line).msg) } } } })
  t.match(warnings, [/maxParamLength: 256/])
})
