import t from 'tap'
import { RoomsError } from '../src/index.js'
import { eachAdapter } from './helpers/deployment.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'

const authenticate = (r: { headers: Record<string, unknown> }): { id: string, name: string } => ({ id: String(r.headers['x-user']), name: String(r.headers['x-user']) })
const as = (user: string): { headers: Record<string, string> } => ({ headers: { 'x-user': user } })

const joinOf = (user: string, room: string) => (f: Record<string, any>): boolean =>
  f.type === 'presence' && f.room === room && f.joins.some((m: { id: string }) => m.id === user)
const leaveOf = (user: string, room: string) => (f: Record<string, any>): boolean =>
  f.type === 'presence' && f.room === room && f.leaves.some((m: { id: string }) => m.id === user)

eachAdapter(t, 'app.rooms.join puts a connection into a room on whichever node holds it: an unsolicited joined, presence, no onJoin', async (t, deploy) => {
  const asked: string[] = []
  const { node, app, kind } = await deploy({ authenticate, onJoin: ({ room }) => { asked.push(room); return room !== 'staff' } })
  const ada = await TestSocket.open(node(1).wsUrl, as('ada'))
  const bob = await TestSocket.open(node(0).wsUrl, as('bob'))
  t.teardown(() => Promise.all([ada.close(), bob.close()]))
  await bob.join('lobby')
  t.same(asked, ['lobby'])
  await app.rooms.broadcast('staff', 'before')
  t.equal(await app.rooms.join(ada.welcome.connectionId, 'staff'), true, 'the server decides: onJoin would refuse')
  t.equal(await app.rooms.join(ada.welcome.connectionId, 'lobby'), true)
  const joined = await ada.next((f) => f.type === 'joined' && f.room === 'lobby', 'joined lobby')
  t.notOk('id' in joined, 'unsolicited: no id')
  t.match(joined, { room: 'lobby', count: 2, offset: 0 })
  t.same(joined.members.map((m: { id: string }) => m.id), ['ada', 'bob'])
  t.match(await ada.next((f) => f.type === 'joined' && f.room === 'staff', 'joined staff'), { count: 1, offset: 1 }, 'no replay: it asked for none')
  await bob.next(joinOf('ada', 'lobby'), 'ada joining')
  t.same(asked, ['lobby'], 'onJoin was not asked')
  await bob.request({ type: 'publish', room: 'lobby', data: 'hi' })
  t.match(await ada.next((f) => f.type === 'message'), { room: 'lobby', data: 'hi', offset: 1 })
  t.match(await ada.request({ type: 'publish', room: 'staff', data: 'member now' }), { type: 'ack', offset: 2 })
  t.equal(await app.rooms.join(ada.welcome.connectionId, 'lobby'), true, 'a member already')
  await ada.sync()
  if (kind === 'memory') t.equal(ada.pending('joined').length, 0, 'no second joined for a member')
  t.equal(await app.rooms.join('no-such-node-1', 'lobby'), false)
  t.equal(await app.rooms.join('plain', 'lobby'), false)
})

t.test('app.rooms.join on this node: limits apply and reject with their code; nothing reaches the connection', async (t) => {
  const { wsUrl, app } = await startApp(t, { authenticate, maxRoomsPerConnection: 1, maxMembersPerRoom: 1 })
  const ada = await TestSocket.open(wsUrl, as('ada'))
  const bob = await TestSocket.open(wsUrl, as('bob'))
  t.teardown(() => Promise.all([ada.close(), bob.close()]))
  await ada.join('a')
  await t.rejects(app.rooms.join(ada.welcome.connectionId, 'b'), { name: 'RoomsError', code: 'TOO_MANY_ROOMS', room: 'b' })
  await t.rejects(app.rooms.join(bob.welcome.connectionId, 'a'), { code: 'ROOM_FULL' })
  t.equal(await app.rooms.join(bob.welcome.connectionId, 'b'), true)
  await bob.next((f) => f.type === 'joined' && f.room === 'b')
  await ada.sync()
  await bob.sync()
  t.same([...ada.pending(), ...bob.pending()], [], 'no error frame, no joined for a refused server join')
  t.match(await app.rooms.get('a'), { count: 1, members: [{ id: 'ada' }] })
})

eachAdapter(t, 'app.rooms.leave takes a connection out of a room as a leave would: a left without reason', async (t, deploy) => {
  const { node, app, kind } = await deploy({ authenticate })
  const ada = await TestSocket.open(node(1).wsUrl, as('ada'))
  const bob = await TestSocket.open(node(0).wsUrl, as('bob'))
  t.teardown(() => Promise.all([ada.close(), bob.close()]))
  await ada.join('lobby')
  await bob.join('lobby')
  t.equal(await app.rooms.leave(ada.welcome.connectionId, 'lobby'), true)
  t.same(await ada.next((f) => f.type === 'left'), { type: 'left', room: 'lobby' })
  await bob.next(leaveOf('ada', 'lobby'), 'ada leaving')
  t.match(await ada.request({ type: 'publish', room: 'lobby', data: 'x' }), { type: 'error', code: 'NOT_IN_ROOM' })
  t.equal(await app.rooms.leave(ada.welcome.connectionId, 'lobby'), kind !== 'memory', 'not in it: false here, only delivered on another node')
  t.equal(await app.rooms.leave(bob.welcome.connectionId, 'nowhere'), false)
})

eachAdapter(t, 'app.rooms.sendToUser sends a direct frame to every connection of the user on every node', async (t, deploy) => {
  const { node, app, kind } = await deploy({ authenticate })
  const here = await TestSocket.open(node(0).wsUrl, as('ada'))
  const there = await TestSocket.open(node(1).wsUrl, as('ada'))
  const bob = await TestSocket.open(node(0).wsUrl, as('bob'))
  t.teardown(() => Promise.all([here.close(), there.close(), bob.close()]))
  t.equal(await app.rooms.sendToUser('ada', { note: 'hello' }), kind !== 'memory' ? 1 : 2, 'how many this node reached')
  for (const s of [here, there]) t.same(await s.next((f) => f.type === 'direct'), { type: 'direct', data: { note: 'hello' } })
  await bob.sync()
  t.same(bob.pending('direct'), [], 'nobody else')
  t.equal(await app.rooms.sendToUser('nobody', 1), 0)
})

t.test('bad arguments throw the right codes at once', async (t) => {
  const { app } = await startApp(t, { authenticate })
  await t.rejects(app.rooms.join('', 'r'), { code: 'FST_ROOMS_INVALID_ARGUMENT', message: /connectionId must be a non-empty string/ })
  await t.rejects(app.rooms.join('x', 'bad room'), { code: 'INVALID_ROOM' })
  await t.rejects(app.rooms.join('x', 42 as never), RoomsError)
  await t.rejects(app.rooms.leave(7 as never, 'r'), { code: 'FST_ROOMS_INVALID_ARGUMENT' })
  await t.rejects(app.rooms.leave('x', 'r'.repeat(129)), { code: 'INVALID_ROOM' })
  await t.rejects(app.rooms.sendToUser('', 'x'), { code: 'FST_ROOMS_INVALID_ARGUMENT', message: /userId/ })
  await t.rejects(app.rooms.sendToUser('ada', undefined), { code: 'INVALID_DATA' })
  await t.rejects(app.rooms.sendToUser('ada', 10n), { code: 'INVALID_DATA' })
})

// A wrong page size once answered a page that looked complete: `list({ limit: 0 })`
// gave no rooms and `next: null` while rooms existed; `get` with `membersLimit: 0`
// gave no members and `membersNext: null`; `send(id, undefined)` pushed a frame
// with no data.
t.test('the reading calls and send check their arguments too, before anything is read or sent', async (t) => {
  const { app, wsUrl } = await startApp(t, { authenticate })
  const ada = await TestSocket.open(wsUrl, as('ada'))
  t.teardown(() => ada.close())
  await ada.join('r')
  const invalid = (message: RegExp): { code: string, message: RegExp } => ({ code: 'FST_ROOMS_INVALID_ARGUMENT', message })
  for (const limit of [0, -1, Number.NaN, 1.5, 1001, '10']) {
    await t.rejects(app.rooms.list({ limit: limit as number }), invalid(/query\/limit/), `list, limit ${String(limit)}`)
  }
  await t.rejects(app.rooms.list(null as never), invalid(/query must be an object/))
  await t.rejects(app.rooms.list({ prefix: 'p'.repeat(129) }), invalid(/query\/prefix/))
  await t.rejects(app.rooms.list({ after: 5 as never }), invalid(/query\/after/))
  t.same((await app.rooms.list({ limit: 1000 })).rooms, [{ name: 'r', count: 1 }], 'a good query still answers')
  await t.rejects(app.rooms.get('bad room'), { code: 'INVALID_ROOM' }, 'as every other call: not null, which means "nobody is in it"')
  for (const membersLimit of [0, -5, Number.NaN, 1.5, 1001]) {
    await t.rejects(app.rooms.get('r', { membersLimit }), invalid(/query\/membersLimit/), `get, membersLimit ${membersLimit}`)
  }
  await t.rejects(app.rooms.get('r', { membersAfter: '' }), invalid(/query\/membersAfter/))
  t.match(await app.rooms.get('r', { membersLimit: 1000 }), { count: 1, members: [{ id: 'ada' }], membersNext: null })
  await t.rejects(app.rooms.history('r', -1), invalid(/history\/after/))
  await t.rejects(app.rooms.history('r', Number.NaN), invalid(/history\/after/))
  await t.rejects(app.rooms.history('r', '3' as never), invalid(/history\/after/))
  await t.rejects(app.rooms.history('r', 0, -1), invalid(/history\/limit/))
  await t.rejects(app.rooms.history('r', 0, 2.5), invalid(/history\/limit/))
  await t.rejects(app.rooms.send('', 'x'), invalid(/connectionId must be a non-empty string/))
  await t.rejects(app.rooms.send(7 as never, 'x'), invalid(/connectionId/))
  const cycle: Record<string, unknown> = {}
  cycle.self = cycle
  for (const data of [undefined, 10n, cycle]) {
    await t.rejects(app.rooms.send(ada.welcome.connectionId, data), { code: 'INVALID_DATA', message: /must be a JSON value/ })
  }
  t.equal(await app.rooms.send(ada.welcome.connectionId, 'fine'), true)
  t.same(await ada.next((f) => f.type === 'direct'), { type: 'direct', data: 'fine' }, 'the first direct frame is the good one')
})

eachAdapter(t, 'member ids longer than 256 characters page like any other, on the socket and over REST', async (t, deploy) => {
  const { node, app } = await deploy({ authenticate })
  const long = 'a'.repeat(300)
  const first = await TestSocket.open(node(0).wsUrl, as(long))
  const bob = await TestSocket.open(node(1).wsUrl, as('bob'))
  t.teardown(() => Promise.all([first.close(), bob.close()]))
  await first.join('r')
  await bob.join('r')
  const page = await bob.request({ type: 'members', room: 'r', limit: 1 })
  t.match(page, { members: [{ id: long }], next: long })
  t.match(await bob.request({ type: 'members', room: 'r', after: page.next, limit: 1 }), { type: 'members', members: [{ id: 'bob' }], next: null }, 'its id is a cursor the next request may carry')
  const rest = await app.inject({ url: '/rooms/r?membersLimit=1' })
  t.equal(rest.statusCode, 200, rest.body)
  t.equal(rest.json().membersNext, long)
  const next = await app.inject({ url: `/rooms/r?membersLimit=1&membersAfter=${long}` })
  t.equal(next.statusCode, 200, next.body)
  t.match(next.json(), { members: [{ id: 'bob' }], membersNext: null })
})
