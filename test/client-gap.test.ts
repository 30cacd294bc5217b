import t from 'tap'
import WebSocket from 'ws'
import { connect, type Gap, type RoomMessage } from '../src/client/index.js'
import { startApp } from './helpers/server.js'
import { dropConnection, gate, nextEvent } from './helpers/client.js'

t.test('same epoch, history no longer covers: gap names the exact lost offsets, REST refetches what is still stored, nothing twice', async (t) => {
  const g = gate()
  const { app, url, wsUrl } = await startApp(t, { historySize: 2 }, g.setup)
  const client = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const room = await client.join('r')
  const delivered: number[] = []
  room.on('message', (m: RoomMessage) => delivered.push(m.offset))
  const gaps: Gap[] = []
  room.on('gap', (gap) => gaps.push(gap))
  await room.publish(1)
  await client.ping()

  g.closed = true
  await dropConnection(app, client)
  for (const n of [2, 3, 4]) await app.rooms.broadcast('r', n)
  g.closed = false
  const rejoined = nextEvent((h) => room.on('joined', h), undefined, { room, what: 'the rejoin' })
  client.reconnect()
  t.same(await rejoined, { recovered: false })
  const epoch = room.epoch
  t.same(gaps, [{ room: 'r', epoch, after: 1, before: 5, currentEpoch: epoch }], 'offsets 2, 3 and 4 were not delivered')
  t.equal(room.offset, 4)

  // The documented refetch: after=gap.after, keep offsets below gap.before, in gap.epoch.
  const gap = gaps[0]!
  const page = await (await fetch(`${url}/rooms/r/messages?after=${gap.after}`)).json() as { epoch: string, messages: Array<{ offset: number, data: unknown }> }
  t.equal(page.epoch, gap.epoch)
  const refetched = page.messages.filter((m) => m.offset < (gap.before as number))
  t.same(refetched.map((m) => m.offset), [3, 4], 'what history still holds; 2 was dropped by historySize')

  await app.rooms.broadcast('r', 5)
  await client.ping()
  t.same(delivered, [1, 5], 'live messages go on from before, none twice')
})

t.test('recovered: no gap, the replay fills the hole, and a rejoin with nothing missed replays nothing', async (t) => {
  const g = gate()
  const { app, wsUrl } = await startApp(t, {}, g.setup)
  const client = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const room = await client.join('r')
  const delivered: number[] = []
  room.on('message', (m) => delivered.push(m.offset))
  let gaps = 0
  room.on('gap', () => gaps++)
  await room.publish('a')
  g.closed = true
  await dropConnection(app, client)
  await app.rooms.broadcast('r', 'b')
  g.closed = false
  let rejoined = nextEvent((h) => room.on('joined', h), undefined, { room, what: 'the rejoin' })
  client.reconnect()
  t.same(await rejoined, { recovered: true })
  rejoined = nextEvent((h) => room.on('joined', h), undefined, { room, what: 'the rejoin' })
  client.reconnect()
  t.same(await rejoined, { recovered: true })
  await client.ping()
  t.same(delivered, [1, 2])
  t.equal(gaps, 0)
})
