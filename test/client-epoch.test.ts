import t, { type Test } from 'tap'
import WebSocket from 'ws'
import Fastify, { type FastifyInstance } from 'fastify'
import rooms, { type RoomsOptions } from '../src/index.js'
import { connect, type Gap, type Room, type RoomMessage, type RoomsClient } from '../src/client/index.js'
import { dropConnection, gate, nextEvent, nextState } from './helpers/client.js'
import { HeldStore } from './helpers/held-store.js'
import { eventually } from './helpers/redis.js'
import { startApp } from './helpers/server.js'

/**
 * The plugin (memory adapter) listening on `port`; 0 picks one. While
 * `gate.closed`, upgrades of the client named "ada" get 503, so that the
 * test decides when she comes back.
 */
async function listen (t: Test, port: number, gate: { closed: boolean }, options: RoomsOptions = {}): Promise<{ app: FastifyInstance, port: number }> {
  const app = Fastify()
  app.addHook('onRequest', async (request) => {
    if (gate.closed && request.url.startsWith('/ws') && request.url.includes('name=ada')) {
      throw Object.assign(new Error('Not yet'), { statusCode: 503 })
    }
  })
  await app.register(rooms, options)
  await app.listen({ port, host: '127.0.0.1' })
  t.teardown(async () => await app.close())
  return { app, port: (app.server.address() as { port: number }).port }
}

async function rejoin (client: RoomsClient, room: string, gate: { closed: boolean }): Promise<{ recovered: boolean | undefined }> {
  const joined = new Promise<{ recovered: boolean | undefined }>((resolve) => {
    const off = client.room(room)!.on('joined', (info) => { off(); resolve(info) })
  })
  gate.closed = false
  client.reconnect()
  return await joined
}

// PROTOCOL v2's epoch-change replay: the new epoch's messages published before
// the rejoin follow joined, so the SDK delivers them from offset 1.
t.test('after the server lost its history, the new epoch is delivered from offset 1, and the gap names the old epoch\'s lost range', async (t) => {
  const gate = { closed: false }
  const first = await listen(t, 0, gate)
  const wsUrl = `ws://127.0.0.1:${first.port}/ws`
  const ada = await connect(wsUrl, { WebSocket, name: 'ada', reconnect: { initialDelayMs: 10, maxDelayMs: 50 } })
  t.teardown(() => ada.close())
  const room = await ada.join('r')
  const delivered: Array<[string, number, unknown]> = []
  const gaps: Gap[] = []
  room.on('message', (m) => delivered.push([m.epoch, m.offset, m.data]))
  room.on('gap', (gap) => gaps.push(gap))
  await room.publish('old-1')
  await room.publish('old-2')
  await ada.ping()
  const oldEpoch = room.epoch

  // A restart of an in-memory server: same port, empty history, a new epoch.
  gate.closed = true
  await first.app.close()
  await listen(t, first.port, gate)
  const bob = await connect(wsUrl, { WebSocket, name: 'bob' })
  t.teardown(() => bob.close())
  const bobRoom = await bob.join('r')
  t.equal(await bobRoom.publish('new'), 1, 'offset 1 of the new epoch, published before ada is back')
  const newEpoch = bobRoom.epoch
  t.not(newEpoch, oldEpoch)

  t.same(await rejoin(ada, 'r', gate), { recovered: false })
  await ada.ping()
  t.equal(await bobRoom.publish('after'), 2)
  await ada.ping()

  t.same(delivered, [
    [oldEpoch, 1, 'old-1'],
    [oldEpoch, 2, 'old-2'],
    [newEpoch, 1, 'new'],
    [newEpoch, 2, 'after']
  ], 'every message of the new epoch once, in order')
  t.same(gaps, [{ room: 'r', epoch: oldEpoch, after: 2, before: null, currentEpoch: newEpoch }], 'one gap: whatever the old epoch held after offset 2')
  t.equal(room.epoch, newEpoch)
  t.equal(room.offset, 2)
})

/** Ada in room "r" of a first server, with one message of its first epoch delivered; what she gets is recorded. */
async function adaWithOneMessage (t: Test): Promise<{ gate: { closed: boolean }, first: { app: FastifyInstance, port: number }, wsUrl: string, ada: RoomsClient, delivered: Array<[string, number]>, gaps: Gap[], oldEpoch: string }> {
  const gate = { closed: false }
  const first = await listen(t, 0, gate)
  const wsUrl = `ws://127.0.0.1:${first.port}/ws`
  const ada = await connect(wsUrl, { WebSocket, name: 'ada', reconnect: { initialDelayMs: 10, maxDelayMs: 50 } })
  t.teardown(() => ada.close())
  const room = await ada.join('r')
  const delivered: Array<[string, number]> = []
  const gaps: Gap[] = []
  room.on('message', (m) => delivered.push([m.epoch, m.offset]))
  room.on('gap', (gap) => gaps.push(gap))
  await room.publish('old-1')
  await ada.ping()
  return { gate, first, wsUrl, ada, delivered, gaps, oldEpoch: room.epoch }
}

// The server replays the new epoch from its first retained offset; the SDK names what historySize dropped before it.
t.test('when the new epoch\'s first messages were dropped by historySize before the rejoin, a second gap names them', async (t) => {
  const { gate, first, ada, delivered, gaps, oldEpoch } = await adaWithOneMessage(t)

  gate.closed = true
  await first.app.close()
  const second = await listen(t, first.port, gate, { historySize: 2 })
  for (const n of [1, 2, 3]) await second.app.rooms.broadcast('r', n)
  const newEpoch = (await second.app.rooms.history('r'))!.epoch

  t.same(await rejoin(ada, 'r', gate), { recovered: false })
  await ada.ping()

  t.same(delivered, [[oldEpoch, 1], [newEpoch, 2], [newEpoch, 3]])
  t.same(gaps, [
    { room: 'r', epoch: oldEpoch, after: 1, before: null, currentEpoch: newEpoch },
    { room: 'r', epoch: newEpoch, after: 0, before: 2, currentEpoch: newEpoch }
  ])
})

t.test('a second rejoin before any message of the new epoch names its missing offsets once, not again at the first live message', async (t) => {
  const { gate, first, wsUrl, ada, delivered, gaps, oldEpoch } = await adaWithOneMessage(t)

  // A new epoch that keeps nothing: the rejoin replays no message, so none has started it yet.
  gate.closed = true
  await first.app.close()
  const second = await listen(t, first.port, gate, { historySize: 0 })
  // Bob keeps the new room (and its offsets) alive while ada is away.
  const bob = await connect(wsUrl, { WebSocket, name: 'bob' })
  t.teardown(() => bob.close())
  await bob.join('r')
  for (const n of [1, 2, 3]) await second.app.rooms.broadcast('r', n)
  t.same(await rejoin(ada, 'r', gate), { recovered: false })
  const newEpoch = ada.room('r')!.epoch
  t.not(newEpoch, oldEpoch)
  // Again, before any message: same epoch now, and offsets 1 to 3 are not kept.
  t.same(await rejoin(ada, 'r', gate), { recovered: false })
  await second.app.rooms.broadcast('r', 4)
  await ada.ping()

  t.same(delivered, [[oldEpoch, 1], [newEpoch, 4]])
  t.same(gaps, [
    { room: 'r', epoch: oldEpoch, after: 1, before: null, currentEpoch: newEpoch },
    { room: 'r', epoch: newEpoch, after: 0, before: 4, currentEpoch: newEpoch }
  ], 'offsets 1 to 3 of the new epoch are named once')
})

for (const answer of ['the server\'s replay', 'an onConnect put-in (the SDK reads what it missed)']) {
  t.test(`a hole in the new epoch's history (a message delivered but not kept), rejoin answered by ${answer}: a gap names it, every other message once`, async (t) => {
    const putIn = answer !== 'the server\'s replay'
    let now = 1_000_000
    const store = new HeldStore({ now: () => now })
    const upgrades = gate()
    const { app, wsUrl } = await startApp(t, {
      adapter: store,
      historyTtlMs: 1000,
      // A message over the whole budget is delivered to the members but not kept.
      maxHistoryBytes: 8192,
      onConnect: ({ connectionId, user }) => { if (putIn && user.name === 'ada') void app.rooms.join(connectionId, 'lobby') }
    }, upgrades.setup)
    const ada = await connect(wsUrl, { WebSocket, name: 'ada', reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
    t.teardown(() => ada.close())
    const room = putIn ? (ada.room('lobby') ?? await nextEvent<Room<unknown>>((h) => ada.on('joined', h), () => true, ada)) : await ada.join('lobby')
    const log: string[] = []
    room.on('message', (m) => log.push(`msg ${m.offset}`))
    room.on('gap', (g) => log.push(`gap ${g.epoch === g.currentEpoch ? 'new' : 'old'} ${g.after}-${String(g.before)}`))
    const two = nextEvent<RoomMessage<unknown>>((h) => room.on('message', h), (m) => m.offset === 2, ada)
    await app.rooms.broadcast('lobby', 1)
    await app.rooms.broadcast('lobby', 2)
    await two
    upgrades.closed = true
    await dropConnection(app, ada)
    // Ada's grace ends, the room empties, its history expires: the room is forgotten, and begins again in a new epoch.
    now += 1000
    await eventually(async () => await app.rooms.history('lobby'), (page) => page === null, 'the room forgotten')
    await app.rooms.broadcast('lobby', 'n1')
    await app.rooms.broadcast('lobby', 'x'.repeat(9000))
    await app.rooms.broadcast('lobby', 'n3')
    t.same((await app.rooms.history('lobby'))?.messages.map((m) => m.offset), [1, 3], 'offset 2 of the new epoch is not kept')
    const read = putIn ? store.hold('room') : undefined
    const open = nextState(ada, 'open')
    upgrades.closed = false
    await open
    if (read !== undefined) {
      await read.entered
      read.release()
    }
    const last = nextEvent<RoomMessage<unknown>>((h) => room.on('message', h), (m) => m.offset === 4, ada)
    await app.rooms.broadcast('lobby', 'n4')
    await last
    await ada.ping()
    t.same(log, ['msg 1', 'msg 2', 'gap old 2-null', 'msg 1', 'gap new 1-3', 'msg 3', 'msg 4'])
  })
}
