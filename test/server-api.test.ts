import t from 'tap'
import Type from 'typebox'
import { RoomsError } from '../src/index.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'

t.test('app.rooms.broadcast publishes as the server: no from, next offset, delivered to members', async (t) => {
  const { wsUrl, app } = await startApp(t)
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  await a.join('news')
  await a.request({ type: 'publish', room: 'news', data: 'first' })
  const offset = await app.rooms.broadcast('news', { headline: 'hello' })
  t.equal(offset, 2)
  const message = await a.next((f) => f.type === 'message' && f.offset === 2)
  t.match(message, { type: 'message', room: 'news', data: { headline: 'hello' }, offset: 2 })
  t.notOk('from' in message, 'server messages have no from')
})

t.test('broadcast from any route, to a room with or without members', async (t) => {
  const { wsUrl, url } = await startApp(t, {}, (app) => {
    app.post('/announce/:room', async (request) => ({ offset: await app.rooms.broadcast((request.params as { room: string }).room, request.body) }))
  })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  await a.join('ops')
  const res = await fetch(`${url}/announce/ops`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"level":"info"}' })
  t.same(await res.json(), { offset: 1 })
  t.same((await a.next((f) => f.type === 'message')).data, { level: 'info' })
  const empty = await fetch(`${url}/announce/empty-room`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })
  t.same(await empty.json(), { offset: 1 }, 'a room without members still numbers its messages (they go to history)')
})

t.test('broadcast checks the room name and the dataSchema', async (t) => {
  const { app } = await startApp(t, { dataSchema: Type.Object({ text: Type.String() }) })
  await t.rejects(app.rooms.broadcast('bad room', { text: 'x' }), { code: 'INVALID_ROOM' })
  await t.rejects(app.rooms.broadcast('ok', { text: 1 } as never), { code: 'INVALID_DATA', message: /\/data\/text/ })
  t.ok(await app.rooms.broadcast('ok', { text: 'fine' }).catch((err: RoomsError) => err) === 1)
})

t.test('app.rooms.send pushes a direct frame to one connection', async (t) => {
  const { wsUrl, app } = await startApp(t)
  const a = await TestSocket.open(wsUrl)
  const b = await TestSocket.open(wsUrl)
  t.teardown(() => Promise.all([a.close(), b.close()]))
  t.equal(await app.rooms.send(a.welcome.connectionId, { note: 'just you' }), true)
  t.same(await a.next((f) => f.type === 'direct'), { type: 'direct', data: { note: 'just you' } })
  await b.sync()
  t.equal(b.pending('direct').length, 0)
  t.equal(await app.rooms.send('no-such-connection', 1), false)
})

t.test('app.rooms.list, get and connections', async (t) => {
  const { wsUrl, app } = await startApp(t)
  const a = await TestSocket.open(`${wsUrl}?name=ada`)
  t.teardown(() => a.close())
  t.equal(app.rooms.connections, 1)
  await a.join('b-room')
  await a.join('a-room')
  t.same(await app.rooms.list(), { rooms: [{ name: 'a-room', count: 1 }, { name: 'b-room', count: 1 }], next: null })
  t.same(await app.rooms.list({ limit: 1 }), { rooms: [{ name: 'a-room', count: 1 }], next: 'a-room' })
  t.match(await app.rooms.get('a-room'), { name: 'a-room', count: 1, members: [{ name: 'ada' }], offset: 0 })
  t.equal(await app.rooms.get('nobody'), null)
  await t.rejects(app.rooms.get('bad name'), { code: 'INVALID_ROOM' }, 'a bad name is a mistake, not an empty room')
})
