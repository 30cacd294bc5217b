import t, { type Test } from 'tap'
import WebSocket from 'ws'
import { connect, RoomsClient, RoomsClientError, type ClientOptions, type ConnectionState, type Room, type RoomMessage } from '../src/client/index.js'
import type { RoomsOptions } from '../src/index.js'
import { startApp } from './helpers/server.js'
import { dropConnection, nextEvent } from './helpers/client.js'

const names = (members: Array<{ name: string }>): string[] => members.map((m) => m.name).sort()

t.test('connect, welcome, join with members, publish resolving with the offset, messages and presence', async (t) => {
  const { wsUrl } = await startApp(t)
  const ada = await connect(wsUrl, { WebSocket, name: 'ada' })
  const bob = await RoomsClient.connect(wsUrl, { WebSocket, name: 'bob' })
  t.teardown(() => { ada.close(); bob.close() })
  t.equal(ada.state, 'open')
  t.equal(ada.user?.name, 'ada')
  t.type(ada.connectionId, 'string')

  const adaRoom = await ada.join('lobby')
  t.same(adaRoom.members.map((m) => m.name), ['ada'])
  t.equal(adaRoom.count, 1)
  t.equal(adaRoom.membersComplete, true)
  const presence = nextEvent((h) => adaRoom.on('presence', h), undefined, { client: ada, room: adaRoom, what: "ada's presence event for bob's join" })
  const bobRoom = await bob.join('lobby')
  t.same(names(bobRoom.members), ['ada', 'bob'])
  t.same(await presence, { room: 'lobby', joins: [bob.user], leaves: [], count: 2 })
  t.same(names(adaRoom.members), ['ada', 'bob'], 'members follow presence')
  t.equal(adaRoom.count, 2)

  const got = nextEvent<RoomMessage>((h) => bobRoom.on('message', h), undefined, { client: bob, room: bobRoom, what: "bob's message event" })
  const offset = await adaRoom.publish({ text: 'hi' })
  t.equal(offset, 1)
  t.match(await got, { room: 'lobby', data: { text: 'hi' }, offset: 1, from: { name: 'ada' } })
  t.equal(bobRoom.offset, 1)
  t.equal(await ada.join('lobby'), adaRoom, 'joining again returns the same handle')
  t.equal(ada.room('lobby'), adaRoom)

  const left = nextEvent((h) => adaRoom.on('presence', h), undefined, { client: ada, room: adaRoom, what: "ada's presence event for bob's leave" })
  await bobRoom.leave()
  t.same(await left, { room: 'lobby', joins: [], leaves: [bob.user], count: 1 })
  t.equal(bob.room('lobby'), undefined)
  t.ok((await ada.ping()) >= 0)
})

t.test('refusals reject with the server error code', async (t) => {
  const { wsUrl } = await startApp(t, { onJoin: ({ room }) => room !== 'private', maxMessageBytes: 100, maxFrameBytes: 1000 })
  const client = await connect(wsUrl, { WebSocket })
  t.teardown(() => client.close())
  await t.rejects(client.join('private'), { name: 'RoomsClientError', code: 'FORBIDDEN', room: 'private' })
  t.equal(client.room('private'), undefined, 'a refused join leaves no handle')
  await t.rejects(client.join('bad name'), { code: 'INVALID_ROOM' })
  const room = await client.join('open')
  await t.rejects(room.publish('x'.repeat(200)), { code: 'PAYLOAD_TOO_LARGE' })
  t.equal(await room.publish('small'), 1, 'still usable')
})

t.test('direct frames reach client.on("direct")', async (t) => {
  const { wsUrl, app } = await startApp(t)
  const client = await connect(wsUrl, { WebSocket })
  t.teardown(() => client.close())
  const direct = nextEvent<unknown>((h) => client.on('direct', h))
  await app.rooms.send(client.connectionId, { hello: 'you' })
  t.same(await direct, { hello: 'you' })
})

t.test('a first connection that fails rejects with CONNECT_FAILED', async (t) => {
  const { wsUrl } = await startApp(t, { authenticate: () => undefined })
  await t.rejects(connect(wsUrl, { WebSocket }), { code: 'CONNECT_FAILED' })
})

t.test('close() stops everything: pending and later calls reject with CLOSED', async (t) => {
  const { wsUrl } = await startApp(t)
  const client = await connect(wsUrl, { WebSocket })
  const room = await client.join('r')
  const states: ConnectionState[] = []
  client.on('state', (s) => states.push(s))
  client.close()
  t.same(states, ['closed'])
  await t.rejects(room.publish(1), { code: 'CLOSED' })
  await t.rejects(client.join('other'), { code: 'CLOSED' })
  t.throws(() => client.reconnect(), { code: 'CLOSED' })
})

t.test('the client reconnects after the socket is destroyed, rejoins, and resumes with nothing missed', async (t) => {
  const { wsUrl, app } = await startApp(t)
  const client = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 50 } })
  t.teardown(() => client.close())
  const room = await client.join('r')
  const offsets: number[] = []
  room.on('message', (m) => offsets.push(m.offset))
  await room.publish('one')
  const states: ConnectionState[] = []
  client.on('state', (s) => states.push(s))

  const reopened = nextEvent<ConnectionState>((h) => client.on('state', h), (s) => s === 'open')
  const rejoined = nextEvent<{ recovered: boolean | undefined }>((h) => room.on('joined', h))
  // Kill the server side of the connection without a close frame, and publish while it is gone.
  const oldId = client.connectionId
  const server = [...app.websocketServer.clients][0]!
  server.terminate()
  await app.rooms.broadcast('r', 'two')
  await app.rooms.broadcast('r', 'three')
  await reopened
  t.same(await rejoined, { recovered: true })
  t.not(client.connectionId, oldId, 'a new connection')
  t.same(states, ['reconnecting', 'open'])
  await room.publish('four')
  t.same(offsets, [1, 2, 3, 4], 'every message once, in order, across the reconnect')
})

/** A client in room "r" whose connection the server just dropped: it is reconnecting (10-20 ms backoff). */
async function disconnectedInRoomR (t: Test, options: ClientOptions = {}, server: RoomsOptions = {}): Promise<{ client: RoomsClient, room: Room }> {
  const { wsUrl, app } = await startApp(t, server)
  const client = await connect(wsUrl, { WebSocket, ...options, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const room = await client.join('r')
  await dropConnection(app, client)
  return { client, room }
}

t.test('publishes while disconnected are queued, bounded, and sent after the rejoin', async (t) => {
  const { room } = await disconnectedInRoomR(t, { maxQueue: 2 })
  const first = room.publish('queued-1')
  const second = room.publish('queued-2')
  await t.rejects(room.publish('overflow'), { code: 'QUEUE_FULL' })
  t.same(await Promise.all([first, second]), [1, 2], 'queued publishes go out in order once back')
})

t.test('an ack that never comes rejects with TIMEOUT', async (t) => {
  const { wsUrl } = await startApp(t, {
    onPublish: async () => await new Promise<undefined>(() => {})
  })
  const client = await connect(wsUrl, { WebSocket, requestTimeoutMs: 1000 })
  t.teardown(() => client.close())
  const room = await client.join('r')
  const err = await room.publish('never acked').catch((e: RoomsClientError) => e)
  t.match(err, { code: 'TIMEOUT' })
})

t.test('reconnect: false closes on a drop; explicit reconnect() rejoins', async (t) => {
  const { wsUrl, app } = await startApp(t)
  const client = await connect(wsUrl, { WebSocket, reconnect: false })
  const room = await client.join('r')
  const rejoined = nextEvent((h) => room.on('joined', h), undefined, { room, what: 'the rejoin after reconnect()' })
  client.reconnect()
  await rejoined
  t.equal((await app.rooms.get('r'))?.count, 1)
  const closed = nextEvent<ConnectionState>((h) => client.on('state', h), (s) => s === 'closed')
  ;[...app.websocketServer.clients][0]!.terminate()
  t.equal(await closed, 'closed')
})

t.test('a full default queue (maxQueue 100) goes out after the rejoin within the server\'s default rate limit: every publish lands, in order', async (t) => {
  const { room } = await disconnectedInRoomR(t)
  const queued = Array.from({ length: 100 }, (_, i) => room.publish(i))
  await t.rejects(room.publish('overflow'), { code: 'QUEUE_FULL' }, 'the default bound')
  t.same(await Promise.all(queued), Array.from({ length: 100 }, (_, i) => i + 1), 'none refused with RATE_LIMITED, in order')
})

t.test('a queue larger than the server\'s burst (maxQueue raised alone): the excess is refused with RATE_LIMITED, what lands is in order', async (t) => {
  // The bucket barely refills (0.001 frames a second): what a slow machine takes to read the frames changes nothing.
  const { client, room } = await disconnectedInRoomR(t, { maxQueue: 300 }, { maxFramesPerSecond: 0.001 })
  const outcomes = await Promise.all(Array.from({ length: 300 }, async (_, i) => await room.publish(i).then((offset) => offset, (err: RoomsClientError) => err.code)))
  const landed = outcomes.filter((o): o is number => typeof o === 'number')
  const refused = outcomes.filter((o) => typeof o === 'string')
  t.ok(refused.length > 0, 'some are refused')
  t.same([...new Set(refused)], ['RATE_LIMITED'], 'refused for the rate, not dropped by a close')
  t.same(landed, landed.map((_, i) => i + 1), 'what landed has consecutive offsets, in the order published')
  t.equal(client.state, 'open')
})
