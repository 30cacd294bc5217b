import t from 'tap'
import { eachAdapter } from './helpers/deployment.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'

const authenticate = (r: { headers: Record<string, unknown> }): { id: string, name: string } => ({ id: String(r.headers['x-user']), name: String(r.headers['x-user']) })
const as = (user: string): { headers: Record<string, string> } => ({ headers: { 'x-user': user } })

eachAdapter(t, 'a history frame answers a member with the stored message frames after an offset, as REST does, from any node', async (t, deploy) => {
  const { node, app } = await deploy({ authenticate })
  const ada = await TestSocket.open(node(0).wsUrl, as('ada'))
  const bob = await TestSocket.open(node(1).wsUrl, as('bob'))
  t.teardown(() => Promise.all([ada.close(), bob.close()]))
  await ada.join('r')
  for (const n of [1, 2, 3]) await ada.request({ type: 'publish', room: 'r', data: n })
  await ada.request({ type: 'publish', room: 'r', data: 'typing', ephemeral: true })
  await app.rooms.broadcast('r', 4)
  await app.rooms.broadcast('r', 5)
  const joined = await bob.join('r')

  const page = await bob.request({ type: 'history', room: 'r', after: 1, limit: 2 })
  t.same(Object.keys(page).sort(), ['epoch', 'id', 'messages', 'offset', 'room', 'type'])
  t.match(page, { type: 'history', room: 'r', epoch: joined.epoch, offset: 5 })
  t.same(page.messages.map((m: { offset: number }) => m.offset), [2, 3])
  t.match(page.messages[0], { type: 'message', room: 'r', data: 2, offset: 2, from: { id: 'ada', name: 'ada' } })
  t.type(page.messages[0].ts, 'number')

  const all = await bob.request({ type: 'history', room: 'r' })
  t.same(all.messages.map((m: { data: unknown }) => m.data), [1, 2, 3, 4, 5], 'by default from the oldest retained, no ephemeral message')
  t.notOk('from' in all.messages[3], 'a server publish has no from')
  const rest = await (await fetch(`${node(1).url}/rooms/r/messages`, as('bob'))).json() as { messages: unknown[], epoch: string }
  t.same(all.messages.map(({ type, ...m }: Record<string, unknown>) => m), rest.messages, 'the same messages as REST')
  t.equal(all.epoch, rest.epoch)

  t.match(await bob.request({ type: 'history', room: 'r', after: 5 }), { type: 'history', messages: [], offset: 5 }, 'after the last offset: an empty page')
  t.match(await bob.request({ type: 'history', room: 'r', after: 99, limit: 1000 }), { messages: [] })
  bob.send({ type: 'history', room: 'r', limit: 1 })
  t.match(await bob.next((f) => f.type === 'history'), { room: 'r', messages: [{ offset: 1 }] }, 'answered without an id too')
})

t.test('a history frame needs membership and valid fields; each refusal is a clear error and the connection stays open', async (t) => {
  const asked: string[] = []
  const { app, wsUrl } = await startApp(t, { authenticate, onJoin: ({ room }) => { asked.push(room); return room !== 'staff' } })
  const ada = await TestSocket.open(wsUrl, as('ada'))
  const eve = await TestSocket.open(wsUrl, as('eve'))
  t.teardown(() => Promise.all([ada.close(), eve.close()]))
  await ada.join('r')
  await app.rooms.broadcast('r', 'secret')
  await app.rooms.broadcast('staff', 'staff only')

  t.match(await eve.request({ type: 'history', room: 'r' }), { type: 'error', code: 'NOT_IN_ROOM', room: 'r', message: 'You are not in room "r": join it first.' })
  t.match(await eve.join('staff'), { type: 'error', code: 'FORBIDDEN' })
  t.match(await eve.request({ type: 'history', room: 'staff' }), { code: 'NOT_IN_ROOM', room: 'staff' }, 'refused by onJoin: no history either')
  await ada.request({ type: 'leave', room: 'r' })
  t.match(await ada.request({ type: 'history', room: 'r' }), { code: 'NOT_IN_ROOM' }, 'not after leaving')
  t.match(await ada.request({ type: 'history', room: 'bad room!' }), { code: 'INVALID_ROOM', message: /Room name "bad room!" is invalid/ })
  t.match(await ada.request({ type: 'history' }), { code: 'INVALID_FRAME', message: 'Invalid "history" frame: the frame is missing "room".' })
  for (const bad of [{ limit: 0 }, { limit: 1001 }, { limit: 1.5 }, { limit: '10' }, { after: -1 }, { after: 'x' }]) {
    const error = await ada.request({ type: 'history', room: 'r', ...bad })
    t.match(error, { type: 'error', code: 'INVALID_FRAME', message: /^Invalid "history" frame: \/(limit|after) / }, JSON.stringify(bad))
  }
  t.match(await ada.request({ type: 'histories', room: 'r' }), { code: 'UNKNOWN_TYPE', message: /use auth, join, leave, publish, members, history, rooms or ping/ })
  t.equal((await ada.join('r')).type, 'joined', 'the connection is still open and usable')
  t.match(await ada.request({ type: 'history', room: 'r' }), { messages: [{ data: 'secret' }] })
  t.same(asked, ['r', 'staff', 'r'], 'history asks onJoin nothing: the join did')
})
