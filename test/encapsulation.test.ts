import t from 'tap'
import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import rooms from '../src/index.js'
import { TestSocket } from './helpers/socket.js'

t.test('two registrations in encapsulated contexts: separate paths, prefixes, rooms and decorators', async (t) => {
  const app = Fastify()
  await app.register(websocket)
  let support: import('../src/index.js').RoomsApi | undefined
  let sales: import('../src/index.js').RoomsApi | undefined
  await app.register(async (child) => {
    await child.register(rooms, { path: '/support/ws', prefix: '/support/rooms' })
    support = child.rooms
  })
  await app.register(async (child) => {
    await child.register(rooms, { path: '/sales/ws', prefix: '/sales/rooms' })
    sales = child.rooms
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const base = `127.0.0.1:${(app.server.address() as { port: number }).port}`
  t.notOk(app.hasDecorator('rooms'), 'the parent is not decorated')

  const a = await TestSocket.open(`ws://${base}/support/ws`)
  const b = await TestSocket.open(`ws://${base}/sales/ws`)
  t.teardown(() => Promise.all([a.close(), b.close()]))
  await a.join('same-name')
  await b.join('same-name')
  await a.request({ type: 'publish', room: 'same-name', data: 'support only' })
  await b.sync()
  t.equal(b.pending('message').length, 0, 'a room of one registration is not the room of the other')
  t.same(await (await fetch(`http://${base}/support/rooms`)).json(), { rooms: [{ name: 'same-name', count: 1 }], next: null })
  t.equal((await (await fetch(`http://${base}/sales/rooms/same-name`)).json()).offset, 0)
  t.equal(await support!.get('same-name').then((r) => r?.offset), 1)
  t.equal(await sales!.get('same-name').then((r) => r?.offset), 0)
})

t.test('a second registration in the same context fails with a clear message', async (t) => {
  const app = Fastify()
  await app.register(rooms)
  await t.rejects(async () => { await app.register(rooms, { path: '/other', prefix: '/other' }) }, /already registered in this context/)
  await app.close().catch(() => {})
})

t.test('sibling registrations without a root @fastify/websocket fail with a clear message', async (t) => {
  const app = Fastify()
  app.register(async (child) => { await child.register(rooms) })
  app.register(async (child) => { await child.register(rooms, { path: '/two', prefix: '/two' }) })
  await t.rejects(async () => { await app.ready() }, /register @fastify\/websocket once at the root/)
  await app.close().catch(() => {})
})
