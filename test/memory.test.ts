import t from 'tap'
import v8 from 'node:v8'
import { runInNewContext } from 'node:vm'
import { memoryAdapter, MemoryAdapter } from '../src/index.js'
import { TestSocket } from './helpers/socket.js'
import { serverClosed, serverSocketOf, startApp } from './helpers/server.js'
import { until } from './helpers/until.js'

// tap runs this file through node without --expose-gc: turn it on for a new context.
v8.setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

/** Users by the x-user header; each upgrade gets its own object, watched through a WeakRef. */
function users (): { authenticate: (request: { headers: Record<string, unknown> }) => { id: string, name: string }, refs: Array<WeakRef<object>> } {
  const refs: Array<WeakRef<object>> = []
  return {
    refs,
    authenticate (request) {
      const name = String(request.headers['x-user'])
      const user = { id: `u-${name}`, name }
      refs.push(new WeakRef(user))
      return user
    }
  }
}

const as = (name: string): { headers: Record<string, string> } => ({ headers: { 'x-user': name } })

t.test('three tabs of one user are one member until the last one leaves, whichever order they go in', async (t) => {
  const { authenticate } = users()
  const { app, wsUrl } = await startApp(t, { authenticate })
  const watcher = await TestSocket.open(wsUrl, as('watcher'))
  const tabs = await Promise.all([1, 2, 3].map(async () => await TestSocket.open(wsUrl, as('ada'))))
  t.teardown(async () => { await watcher.close(); for (const tab of tabs) await tab.close() })
  await watcher.join('r')
  for (const tab of tabs) await tab.join('r')
  t.same(await watcher.next((f) => f.type === 'presence'), { type: 'presence', room: 'r', joins: [{ id: 'u-ada', name: 'ada' }], leaves: [], count: 2 })
  t.equal((await app.rooms.get('r'))?.count, 2)

  // From three connections to one (the adapter goes back to holding one id), then none.
  await (tabs[1] as TestSocket).request({ type: 'leave', room: 'r' })
  // Closed once the server has handled the close (its socket's close event ran).
  const tab0Closed = serverClosed(serverSocketOf(app, tabs[0] as TestSocket), 'the server to see the first tab close')
  await (tabs[0] as TestSocket).close()
  await tab0Closed
  t.equal((await app.rooms.get('r'))?.count, 2, 'still a member with one tab left')
  // A barrier: cy joins after the close was handled; a wrong leave of ada would come to the watcher first.
  const cy = await TestSocket.open(wsUrl, as('cy'))
  t.teardown(() => cy.close())
  await cy.join('r')
  t.same(await watcher.next((f) => f.type === 'presence', 'cy joining'), { type: 'presence', room: 'r', joins: [{ id: 'u-cy', name: 'cy' }], leaves: [], count: 3 }, 'closing a tab with another left in the room is not a leave')
  await cy.request({ type: 'leave', room: 'r' })
  t.same(await watcher.next((f) => f.type === 'presence', 'cy leaving'), { type: 'presence', room: 'r', joins: [], leaves: [{ id: 'u-cy', name: 'cy' }], count: 2 })
  // The same connection joining again is not a second connection of the user.
  await (tabs[2] as TestSocket).join('r')
  await (tabs[2] as TestSocket).request({ type: 'leave', room: 'r' })
  t.same(await watcher.next((f) => f.type === 'presence'), { type: 'presence', room: 'r', joins: [], leaves: [{ id: 'u-ada', name: 'ada' }], count: 1 })
  t.same((await app.rooms.get('r'))?.members, [{ id: 'u-watcher', name: 'watcher' }])

  // Back in with two tabs: the second leaving is no leave, the first is.
  await (tabs[1] as TestSocket).join('r')
  await (tabs[2] as TestSocket).join('r')
  t.match(await watcher.next((f) => f.type === 'presence'), { joins: [{ id: 'u-ada' }], count: 2 })
  await (tabs[1] as TestSocket).request({ type: 'leave', room: 'r' })
  await (tabs[2] as TestSocket).request({ type: 'leave', room: 'r' })
  t.same(await watcher.next((f) => f.type === 'presence'), { type: 'presence', room: 'r', joins: [], leaves: [{ id: 'u-ada', name: 'ada' }], count: 1 })
  t.same(watcher.pending('presence'), [], 'no presence between the two')
})

t.test('a connection in several rooms: each leave and join keeps its memberships and its room limit right', async (t) => {
  const { app, wsUrl } = await startApp(t, { maxRoomsPerConnection: 3 })
  const member = await TestSocket.open(wsUrl)
  t.teardown(async () => await member.close())
  const publish = async (room: string): Promise<unknown> => await member.request({ type: 'publish', room, data: room })
  for (const room of ['a', 'b', 'c']) await member.join(room)
  t.match(await member.request({ type: 'join', room: 'd' }), { type: 'error', code: 'TOO_MANY_ROOMS', room: 'd' })

  // Its first room goes: the others stay, and it has room for one more.
  await member.request({ type: 'leave', room: 'a' })
  t.match(await publish('a'), { type: 'error', code: 'NOT_IN_ROOM', room: 'a' })
  t.match(await publish('b'), { type: 'ack', room: 'b' })
  t.match(await publish('c'), { type: 'ack', room: 'c' })
  t.match(await member.join('d'), { type: 'joined', room: 'd', count: 1 })
  t.match(await member.request({ type: 'join', room: 'a' }), { type: 'error', code: 'TOO_MANY_ROOMS', room: 'a' })

  // Every room but one goes, then it joins again.
  for (const room of ['b', 'c']) await member.request({ type: 'leave', room })
  t.match(await publish('d'), { type: 'ack', room: 'd' })
  t.match(await member.request({ type: 'leave', room: 'b' }), { type: 'error', code: 'NOT_IN_ROOM', room: 'b' })
  for (const room of ['a', 'b']) await member.join(room)
  t.match(await member.request({ type: 'members', room: 'a' }), { type: 'members', room: 'a', members: [{ id: member.welcome.user.id }] })
  t.same((await app.rooms.list()).rooms.map((r) => r.name), ['a', 'b', 'd'])

  // The server takes it out of one of them.
  t.equal(await app.rooms.removeFromRoom(member.welcome.connectionId, 'd'), true)
  t.match(await member.next((f) => f.type === 'left'), { type: 'left', room: 'd' })
  t.match(await publish('d'), { type: 'error', code: 'NOT_IN_ROOM', room: 'd' })
  t.match(await publish('a'), { type: 'ack', room: 'a' })
  t.same((await app.rooms.list()).rooms.map((r) => r.name), ['a', 'b'])
})

t.test('a closed connection leaves nothing behind: rooms, adapter state, its user and its socket are all let go', async (t) => {
  const { authenticate, refs } = users()
  const adapter = memoryAdapter() as MemoryAdapter
  // A short grace, so that the dropped connection's lingering is tested too; no history, so no room stays for it.
  const { app, wsUrl } = await startApp(t, { authenticate, adapter, historySize: 0, presenceGraceMs: 50 })
  const sockets: Array<WeakRef<object>> = []
  const open = async (name: string): Promise<TestSocket> => {
    const before = new Set(app.websocketServer.clients)
    const s = await TestSocket.open(wsUrl, as(name))
    for (const client of app.websocketServer.clients) if (!before.has(client)) sockets.push(new WeakRef(client))
    return s
  }
  const one = await open('one')
  const many = await open('many')
  const tab1 = await open('tabs')
  const tab2 = await open('tabs')
  await one.join('r')
  for (const room of ['r', 's', 'longer-room-name-0123456789']) await many.join(room)
  await tab1.join('r')
  await tab2.join('r')
  await one.request({ type: 'publish', room: 'r', data: 'user JSON encoded once' })
  t.equal(sockets.length, 4)
  t.equal((await app.rooms.get('r'))?.count, 3)

  await one.close()
  // A drop, not a goodbye: it lingers in its rooms for the grace time, then goes.
  many.ws.terminate()
  await tab1.close()
  await tab2.close()
  // Polled: no event says an object was collected (a FinalizationRegistry callback, too, comes only after a gc() that found it unreachable).
  await until(() => {
    gc()
    return sockets.every((ref) => ref.deref() === undefined) && refs.every((ref) => ref.deref() === undefined)
  }, 'every socket and user is collected')
  t.pass('every server-side socket (and so its Connection) and every user object collected')
  t.same(await app.rooms.list(), { rooms: [], next: null })
  t.same(adapter.stats(), { rooms: 0, roomsWithHistory: 0, retainedMessages: 0, retainedBytes: 0 })
  t.equal(app.rooms.connections, 0)
})
