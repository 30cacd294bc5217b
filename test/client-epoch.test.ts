import t, { type Test } from 'tap'
import WebSocket from 'ws'
import Fastify, { type FastifyInstance } from 'fastify'
import rooms, { type RoomsOptions } from '../src/index.js'
import { connect, type Gap, type RoomsClient } from '../src/client/index.js'

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
