import t from 'tap'
import WebSocket from 'ws'
import { connect, type LeftInfo, type Room, type RoomMessage, type RoomsClient, type RoomsClientError } from '../src/client/index.js'
import { eachAdapter } from './helpers/deployment.js'
import { startApp } from './helpers/server.js'
import { nextEvent } from './helpers/client.js'

const authenticate = (r: { headers: Record<string, unknown>, query: unknown }): { id: string, name: string } => {
  const name = String((r.query as { name?: string }).name)
  return { id: name, name }
}

/** The ws client with the upgrade's user in the URL (the test's `authenticate` reads it). */
async function client (url: string, user: string): Promise<RoomsClient<string>> {
  return await connect<string>(url, { WebSocket, name: user, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
}

function nextJoined (client: RoomsClient<string>): Promise<Room<string>> {
  return nextEvent((h) => client.on('joined', h), undefined, { client, what: 'a joined event' })
}

function nextMessage (room: Room<string>): Promise<RoomMessage<string>> {
  return nextEvent((h) => room.on('message', h), undefined, { room, what: `a message in ${room.name}` })
}

eachAdapter(t, 'a room the server put the client in: a joined event with a handle that receives, publishes, is rejoined after a reconnect and ends on a server leave', async (t, deploy) => {
  const { node, app } = await deploy({ authenticate, onJoin: ({ room }) => room !== 'closed' })
  const ada = await client(node(1).wsUrl, 'ada')
  t.teardown(() => ada.close())
  await app.rooms.broadcast('lobby', 'before')

  const put = nextJoined(ada)
  t.equal(await app.rooms.join(ada.connectionId, 'lobby'), true)
  const room = await put
  t.equal(room.name, 'lobby')
  t.equal(room.status, 'joined')
  t.equal(ada.room('lobby'), room, 'the client knows the handle')
  t.match(room, { count: 1, offset: 1 })
  t.same(room.members.map((m) => m.id), ['ada'])
  const delivered: unknown[] = []
  room.on('message', (m) => delivered.push(m.data))

  const live = nextMessage(room)
  await app.rooms.broadcast('lobby', 'live')
  t.match(await live, { room: 'lobby', data: 'live', offset: 2 })
  t.equal(await room.publish('mine'), 3, 'the handle publishes as a member')

  t.equal(await ada.join('lobby'), room, 'join() returns the same handle')

  const rejoined = nextEvent((h) => room.on('joined', h), undefined, { room, what: 'the rejoin' })
  ada.reconnect()
  t.same(await rejoined, { recovered: true }, 'rejoined with since after the reconnect')
  const afterReconnect = nextMessage(room)
  await app.rooms.broadcast('lobby', 'after')
  t.match(await afterReconnect, { data: 'after', offset: 4 })
  t.same(delivered, ['live', 'mine', 'after'], 'each once, in order, none from before the join')
  t.same((await app.rooms.get('lobby'))?.members.map((m) => m.id), ['ada'])

  const left = nextEvent<LeftInfo>((h) => room.on('left', h), undefined, { what: `room ${room.name} to be left` })
  t.equal(await app.rooms.leave(ada.connectionId, 'lobby'), true)
  t.match(await left, { cause: 'server' })
  t.equal(ada.room('lobby'), undefined)
  await t.rejects(room.publish('gone'), { code: 'NOT_IN_ROOM' })
})

eachAdapter(t, 'a room the server put the client in that onJoin refuses: the rejoin after a reconnect is refused, the handle ends, the client says why', async (t, deploy) => {
  const { node, app } = await deploy({ authenticate, onJoin: ({ room }) => room !== 'staff' })
  const ada = await client(node(0).wsUrl, 'ada')
  t.teardown(() => ada.close())
  const put = nextJoined(ada)
  await app.rooms.join(ada.connectionId, 'staff')
  const room = await put
  const left = nextEvent<LeftInfo>((h) => room.on('left', h), undefined, { what: `room ${room.name} to be left` })
  const error = nextEvent<RoomsClientError>((h) => ada.on('error', h), undefined, { client: ada, what: "the client's error event" })
  ada.reconnect()
  t.match(await left, { cause: 'refused', error: { code: 'FORBIDDEN' } })
  t.match(await error, { code: 'FORBIDDEN', room: 'staff' })
  t.equal(ada.room('staff'), undefined)
})

t.test('an unsolicited joined for a room the client already has keeps its handle and tells nothing', async (t) => {
  const { app, wsUrl } = await startApp(t, { authenticate })
  const ada = await client(wsUrl, 'ada')
  t.teardown(() => ada.close())
  const room = await ada.join('r')
  const told: Array<Room<string>> = []
  ada.on('joined', (r) => told.push(r))
  // A member already: the server sends nothing, so write the frame itself, as another node's join racing this one could.
  for (const socket of app.websocketServer.clients) socket.send(JSON.stringify({ type: 'joined', room: 'r', count: 1, members: [], membersNext: null, offset: 0, epoch: 'other' }))
  await ada.ping()
  t.same(told, [])
  t.equal(ada.room('r'), room)
  t.equal(room.epoch !== 'other', true, 'the handle is untouched')
})
