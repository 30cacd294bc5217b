import t from 'tap'
import WebSocket from 'ws'
import { connect, type EphemeralMessage, type Gap, type Room, type RoomMessage } from '../src/client/index.js'
import { eachAdapter } from './helpers/deployment.js'
import { serverSockets, startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { gate, nextEvent, nextState } from './helpers/client.js'

eachAdapter(t, 'an ephemeral publish: acked without an offset, delivered as an ephemeral event, offsets and recovery untouched', async (t, deploy) => {
  const g = gate()
  const d = await deploy({ presenceIntervalMs: 0 }, (app) => g.setup(app))
  const ada = await connect(d.node(0).wsUrl, { WebSocket, name: 'ada' })
  const bob = await connect(d.node(1).wsUrl, { WebSocket, name: 'bob', reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
  t.teardown(() => { ada.close(); bob.close() })
  const adaRoom = await ada.join('r')
  const bobRoom = await bob.join('r')
  const messages: RoomMessage[] = []
  bobRoom.on('message', (m) => messages.push(m))
  const ephemerals: EphemeralMessage[] = []
  bobRoom.on('ephemeral', (m) => ephemerals.push(m))
  const gaps: Gap[] = []
  bobRoom.on('gap', (gap) => gaps.push(gap))

  t.equal(await adaRoom.publish('stored 1'), 1)
  const typing = nextEvent<EphemeralMessage>((h) => bobRoom.on('ephemeral', h), undefined, bob)
  const result: undefined = await adaRoom.publish({ typing: true }, { ephemeral: true })
  t.equal(result, undefined, 'the ack has no offset')
  const got = await typing
  t.match(got, { room: 'r', data: { typing: true }, ephemeral: true, from: { name: 'ada', id: ada.user!.id } })
  t.notOk('offset' in got, 'no offset')
  t.type(got.ts, 'number')
  // Waited for as an event: on Redis it reaches bob's node through pub/sub, which a ping to that node does not order.
  const stored2 = nextEvent<RoomMessage>((h) => bobRoom.on('message', h), (m) => m.offset === 2, bob)
  t.equal(await adaRoom.publish('stored 2'), 2, 'the next stored publish takes the next offset')
  await stored2
  t.same(messages.map((m) => [m.offset, m.data]), [[1, 'stored 1'], [2, 'stored 2']], 'message handlers get stored messages only')
  t.equal(bobRoom.offset, 2)

  // Published while bob is away: the stored message is recovered on the rejoin, the ephemeral one is not.
  g.closed = true
  bob.reconnect()
  await adaRoom.publish({ typing: 'away' }, { ephemeral: true })
  await adaRoom.publish('stored 3')
  const rejoined = nextEvent<{ recovered: boolean | undefined }>((h) => bobRoom.on('joined', h), undefined, bob)
  g.closed = false
  t.same(await rejoined, { recovered: true })
  await bob.ping()
  t.same(messages.map((m) => m.offset), [1, 2, 3], 'the missed stored message, once')
  t.same(ephemerals.map((m) => m.data), [{ typing: true }], 'the ephemeral one sent while away is not replayed')
  t.equal(bobRoom.offset, 3)
  t.same(gaps, [])
})

t.test('an ephemeral publish is never held: while disconnected it rejects at once, a stored one waits', async (t) => {
  const g = gate()
  const { app, wsUrl } = await startApp(t, {}, g.setup)
  const client = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const room = await client.join('r')
  const [clientOnServer] = serverSockets(app)
  // A raw member of the room: it would see the ephemeral publish had it been
  // sent (ephemeral messages are never stored, so history cannot tell).
  const witness = await TestSocket.open(wsUrl)
  t.teardown(() => witness.close())
  await witness.join('r')
  g.closed = true
  // The client's connection alone is dropped (dropConnection would drop the witness too).
  const reconnecting = nextState(client, 'reconnecting')
  clientOnServer!.terminate()
  await reconnecting
  await t.rejects(room.publish('typing', { ephemeral: true }), { name: 'RoomsClientError', code: 'DISCONNECTED', room: 'r' })
  const stored = room.publish('stored')
  g.closed = false
  t.equal(await stored, 1, 'the stored publish went out after the rejoin')
  // The barrier: the client's frames are handled in order, so an ephemeral
  // publish sent before 'stored' reached the witness before it.
  await witness.next((f) => f.type === 'message' && f.data === 'stored', "'stored' at the witness")
  t.same(witness.frames.filter((f) => f.data === 'typing'), [], 'the ephemeral one was never sent')
  const page = await app.rooms.history('r')
  t.same(page?.messages.map((m) => (JSON.parse(m.frame) as { data: unknown }).data), ['stored'], 'the ephemeral one was never sent')
})

// Checked by tsc only: the offset is typed by the option.
export async function typed (room: Room<string>): Promise<void> {
  const offset: number = await room.publish('stored')
  // @ts-expect-error an ephemeral publish resolves with no offset
  const none: number = await room.publish('typing', { ephemeral: true })
  room.on('ephemeral', (m) => {
    // @ts-expect-error an ephemeral message has no offset
    m.offset.toFixed()
  })
  void [offset, none]
}
