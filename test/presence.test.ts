import t from 'tap'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'

const users = new Map([['tok-ada', { id: 'u-ada', name: 'ada' }], ['tok-bob', { id: 'u-bob', name: 'bob' }]])
const options = {
  authenticate: (request: { headers: Record<string, unknown> }) => users.get(String(request.headers['x-token']))
}
const as = (token: string) => ({ headers: { 'x-token': token } })

t.test('presence join and leave across two users, with counts', async (t) => {
  const { wsUrl } = await startApp(t, options)
  const ada = await TestSocket.open(wsUrl, as('tok-ada'))
  const bob = await TestSocket.open(wsUrl, as('tok-bob'))
  t.teardown(() => Promise.all([ada.close(), bob.close()]))
  await ada.join('r')
  const joined = await bob.join('r')
  t.same(joined.members, [{ id: 'u-ada', name: 'ada' }, { id: 'u-bob', name: 'bob' }])
  t.same(await ada.next((f) => f.type === 'presence'), { type: 'presence', room: 'r', event: 'join', member: { id: 'u-bob', name: 'bob' }, count: 2 })
  await bob.sync()
  t.equal(bob.pending('presence').length, 0, 'the joiner is not told of its own join')
  await bob.request({ type: 'leave', room: 'r' })
  t.same(await ada.next((f) => f.type === 'presence'), { type: 'presence', room: 'r', event: 'leave', member: { id: 'u-bob', name: 'bob' }, count: 1 })
})

t.test('two tabs of one user are one member: join on the first, leave on the last', async (t) => {
  const { wsUrl, app } = await startApp(t, options)
  const ada = await TestSocket.open(wsUrl, as('tok-ada'))
  const bob1 = await TestSocket.open(wsUrl, as('tok-bob'))
  const bob2 = await TestSocket.open(wsUrl, as('tok-bob'))
  t.teardown(() => Promise.all([ada.close(), bob1.close(), bob2.close()]))
  await ada.join('r')
  await bob1.join('r')
  t.match(await ada.next((f) => f.type === 'presence'), { event: 'join', member: { id: 'u-bob' }, count: 2 })
  const second = await bob2.join('r')
  t.equal(second.members.length, 2, 'the second tab sees two members, not three')
  await ada.sync()
  await bob1.sync()
  t.equal(ada.pending('presence').length, 0, 'no presence for the second tab')
  t.equal(bob1.pending('presence').length, 0, 'the first tab is not told of the second')
  t.equal((await app.rooms.get('r'))?.count, 2)

  await bob1.close()
  await bob2.request({ type: 'publish', room: 'r', data: 'still here' })
  await ada.next((f) => f.type === 'message')
  t.equal(ada.pending('presence').length, 0, 'closing one tab is not a leave')

  await bob2.close()
  t.same(await ada.next((f) => f.type === 'presence'), { type: 'presence', room: 'r', event: 'leave', member: { id: 'u-bob', name: 'bob' }, count: 1 })
  t.same((await app.rooms.get('r'))?.members, [{ id: 'u-ada', name: 'ada' }])
})

t.test('a connection that dies leaves every room it was in', async (t) => {
  const { wsUrl, app } = await startApp(t, options)
  const ada = await TestSocket.open(wsUrl, as('tok-ada'))
  const bob = await TestSocket.open(wsUrl, as('tok-bob'))
  t.teardown(() => ada.close())
  await ada.join('a')
  await ada.join('b')
  await bob.join('a')
  await bob.join('b')
  await ada.next((f) => f.type === 'presence' && f.room === 'a')
  await ada.next((f) => f.type === 'presence' && f.room === 'b')
  bob.ws.terminate()
  const leaves = [await ada.next((f) => f.type === 'presence'), await ada.next((f) => f.type === 'presence')]
  t.same(leaves.map((f) => [f.room, f.event, f.member.id, f.count]).sort(), [['a', 'leave', 'u-bob', 1], ['b', 'leave', 'u-bob', 1]])
  t.equal((await app.rooms.get('a'))?.count, 1)
})

t.test('presence reaches only members of that room', async (t) => {
  const { wsUrl } = await startApp(t, options)
  const ada = await TestSocket.open(wsUrl, as('tok-ada'))
  const bob = await TestSocket.open(wsUrl, as('tok-bob'))
  t.teardown(() => Promise.all([ada.close(), bob.close()]))
  await ada.join('one')
  await bob.join('two')
  await ada.sync()
  t.equal(ada.pending('presence').length, 0)
})

t.test('presenceEvents: false sends no presence frames, but joined and REST still list members', async (t) => {
  const { wsUrl, url } = await startApp(t, { ...options, presenceEvents: false })
  const ada = await TestSocket.open(wsUrl, as('tok-ada'))
  const bob = await TestSocket.open(wsUrl, as('tok-bob'))
  t.teardown(() => Promise.all([ada.close(), bob.close()]))
  await ada.join('big')
  t.same((await bob.join('big')).members.map((m: { id: string }) => m.id), ['u-ada', 'u-bob'])
  await bob.close()
  await ada.request({ type: 'publish', room: 'big', data: 'after bob left' })
  await ada.sync()
  t.equal(ada.pending('presence').length, 0, 'no join or leave frames')
  t.same((await (await fetch(`${url}/rooms/big`, as('tok-ada'))).json()).members.map((m: { id: string }) => m.id), ['u-ada'])
})
