import t from 'tap'
import WebSocket from 'ws'
import { MemoryAdapter } from '../src/index.js'
import { connect, type Gap, type HistoryPage, type RoomMessage, type RoomsClient } from '../src/client/index.js'
import { eachAdapter } from './helpers/deployment.js'
import { startApp } from './helpers/server.js'
import { dropConnection, gate, nextEvent } from './helpers/client.js'
import { eventually } from './helpers/redis.js'

async function client (url: string, name: string): Promise<RoomsClient<number>> {
  return await connect<number>(url, { WebSocket, name, reconnect: false })
}

const data = (page: HistoryPage<number>): number[] => page.messages.map((m) => m.data)

eachAdapter(t, 'room.history pages back through stored messages over the socket, oldest first, ending where the handle is', async (t, deploy) => {
  const { node, app } = await deploy()
  const ada = await client(node(1).wsUrl, 'ada')
  t.teardown(() => ada.close())
  for (let n = 1; n <= 7; n++) await app.rooms.broadcast('r', n)
  const room = await ada.join('r')
  t.equal(room.offset, 7)

  const latest = await room.history({ limit: 3 })
  t.equal(latest.epoch, room.epoch)
  t.same(data(latest), [5, 6, 7], 'the latest three')
  t.match(latest.messages[0], { room: 'r', data: 5, offset: 5, epoch: room.epoch })
  t.type(latest.messages[0]?.ts, 'number')
  t.same(data(await room.history({ limit: 3, before: 5 })), [2, 3, 4], 'the three before the oldest shown')
  t.same(data(await room.history({ limit: 3, before: 2 })), [1], 'fewer at the start')
  t.same(data(await room.history({ before: 1 })), [], 'nothing before the first offset')
  t.same(data(await room.history()), [1, 2, 3, 4, 5, 6, 7], 'at most 100 by default')

  // A message in flight to the handle is not in a page read before it arrived.
  const published = await room.publish(8)
  if (room.offset < published) await nextEvent((h) => room.on('message', h), () => room.offset >= published, { room, what: `the handle to reach offset ${published}` })
  t.same(data(await room.history({ limit: 2 })), [7, 8], 'the page follows the handle')
  t.same(data(await room.history({ limit: 1, before: 99 })), [8], 'a before past the handle: up to the handle')
})

t.test('room.history: the server\'s history limits apply, and bad calls reject clearly', async (t) => {
  const { app, wsUrl } = await startApp(t, { historySize: 3 })
  const ada = await client(wsUrl, 'ada')
  t.teardown(() => ada.close())
  for (let n = 1; n <= 6; n++) await app.rooms.broadcast('r', n)
  const room = await ada.join('r')
  t.same(data(await room.history({ limit: 10 })), [4, 5, 6], 'only what is retained')
  t.same(data(await room.history({ limit: 2, before: 3 })), [], 'dropped by the limits: an empty page, never later messages')

  await t.rejects(room.history({ limit: 0 }), new TypeError('history limit must be a whole number from 1 to 1000, got 0.'))
  await t.rejects(room.history({ limit: 1001 }), TypeError)
  await t.rejects(room.history({ limit: 2.5 }), TypeError)
  await t.rejects(room.history({ before: 0 }), new TypeError('history before must be an offset (a whole number of at least 1), got 0.'))

  await room.leave()
  await t.rejects(room.history(), { code: 'NOT_IN_ROOM', room: 'r', message: 'Not in room "r": this handle has left it.' })
  await app.rooms.broadcast('other', 1)
  const other = await ada.join('other')
  ada.close()
  await t.rejects(other.history(), { code: 'CLOSED' })
})

t.test('room.history while disconnected rejects with DISCONNECTED', async (t) => {
  const { app, wsUrl } = await startApp(t)
  const ada = await connect<number>(wsUrl, { WebSocket, reconnect: { initialDelayMs: 5000, maxDelayMs: 5000 } })
  t.teardown(() => ada.close())
  await app.rooms.broadcast('r', 1)
  const room = await ada.join('r')
  const dropped = nextEvent((h) => ada.on('state', h), (state) => state === 'reconnecting', { client: ada, what: 'the drop' })
  for (const socket of app.websocketServer.clients) socket.terminate()
  await dropped
  await t.rejects(room.history(), { code: 'DISCONNECTED', room: 'r' })
})

t.test('room.history with a before past the handle\'s offset, over trimmed history: nothing past the offset, which is still on its way to the handlers', async (t) => {
  const { app, wsUrl } = await startApp(t, { historySize: 2 })
  const ada = await client(wsUrl, 'ada')
  t.teardown(() => ada.close())
  const room = await ada.join('r')
  const first = nextEvent((h) => room.on('message', h), undefined, ada)
  await app.rooms.broadcast('r', 1)
  await first
  // 2..6 are sent to the socket in this turn; the handle reads none of them before history() is called.
  const more = Promise.all([2, 3, 4, 5, 6].map(async (n) => await app.rooms.broadcast('r', n)))
  t.equal(room.offset, 1)
  const page = room.history({ before: 100 })
  await more
  // The store kept 5 and 6 only: asked for what follows 0, it answers from 5.
  t.same(data(await page), [], 'not 5, which the message handler gets')
  t.equal(room.offset, 6)
})

t.test('room.history sent right behind a rejoin that finds the history reset: no message of the new epoch, which the handlers get', async (t) => {
  let now = 1_000_000
  const upgrades = gate()
  const { app, wsUrl } = await startApp(t, { adapter: new MemoryAdapter({ now: () => now }), historyTtlMs: 1000 }, upgrades.setup)
  const ada = await connect(wsUrl, { WebSocket, name: 'ada', reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
  t.teardown(() => ada.close())
  const room = await ada.join('r')
  const last = nextEvent<RoomMessage>((h) => room.on('message', h), (m) => m.offset === 20, ada)
  for (let n = 1; n <= 20; n++) await app.rooms.broadcast('r', n)
  await last
  const oldEpoch = room.epoch
  upgrades.closed = true
  await dropConnection(app, ada)
  // The history expires; once the member is gone too the room is forgotten, and a new epoch begins.
  now += 1000
  await eventually(async () => await app.rooms.history('r'), (page) => page === null, 'room r forgotten')
  for (let n = 1; n <= 5; n++) await app.rooms.broadcast('r', 100 + n)
  const newEpoch = (await app.rooms.history('r'))?.epoch
  t.not(newEpoch, oldEpoch, 'the epoch changed')

  const delivered: string[] = []
  const gaps: Gap[] = []
  room.on('message', (m) => delivered.push(`${m.epoch}/${m.offset}`))
  room.on('gap', (gap) => gaps.push(gap))
  // Asked while the handle still counts in the old epoch (offset 20), sent right behind the rejoin.
  let page: Promise<HistoryPage> | undefined
  ada.on('state', (state) => { if (state === 'open') page = room.history() })
  const rejoined = nextEvent((h) => room.on('joined', h), () => true, { client: ada, room })
  upgrades.closed = false
  t.same(await rejoined, { recovered: false })
  const read = await (page as Promise<HistoryPage>)
  await ada.ping()
  t.same(delivered, [1, 2, 3, 4, 5].map((o) => `${String(newEpoch)}/${o}`), 'the new epoch, through the handlers')
  t.match(gaps, [{ epoch: oldEpoch, after: 20, before: null, currentEpoch: newEpoch }])
  t.equal(read.epoch, newEpoch)
  t.same(read.messages.map((m) => `${m.epoch}/${m.offset}`), [], 'none of them in the page as well')
})
