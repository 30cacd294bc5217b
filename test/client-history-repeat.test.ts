import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import WebSocket from 'ws'
import { RoomsError } from '../src/index.js'
import { connect, type Gap, type Room, type RoomMessage, type RoomsClient, type RoomsClientError } from '../src/client/index.js'
import { nextEvent } from './helpers/client.js'
import { HeldStore } from './helpers/held-store.js'
import { fillWait, LIMITS, slowJoins } from './helpers/refused-leave.js'
import { serverSockets, startApp } from './helpers/server.js'
import { guard } from './helpers/until.js'

// A first join(room, { history }) that the server answers as a repeat: the connection is still in the room
// through a membership the SDK dropped its handle for, because the leave it sent was not applied (refused with
// RATE_LIMITED, here for not fitting behind a slow hook: room.leave(), or the leave undoing a timed-out join).
// A repeat replays nothing; the SDK, which knows the leave went unconfirmed, reads the history asked for itself.

// The SDK sends a refused leave again after a backoff: a day's ceiling keeps it from coming during a test.
const NO_RETRY_NOW = { initialDelayMs: 86_400_000, maxDelayMs: 86_400_000, maxAttempts: 0 }

async function client (url: string, name: string, requestTimeoutMs?: number): Promise<RoomsClient<unknown>> {
  return await connect(url, { WebSocket, name, reconnect: NO_RETRY_NOW, ...(requestTimeoutMs === undefined ? {} : { requestTimeoutMs }) })
}

/** What a handle tells, in order, as short strings. */
function record (room: Room<unknown>): string[] {
  const log: string[] = []
  room.on('message', (m) => log.push(`msg ${m.offset}`))
  room.on('gap', (g) => log.push(`gap ${g.after}-${String(g.before)}`))
  return log
}

async function nextOffset (room: Room<unknown>, offset: number, owner: RoomsClient<unknown>): Promise<RoomMessage<unknown>> {
  return await nextEvent<RoomMessage<unknown>>((h) => room.on('message', h), (m) => m.offset === offset, { client: owner, room, what: `message ${offset}` })
}

/**
 * ada is in `lobby` on the server with no handle for it: her leave was refused (RATE_LIMITED, it did not fit
 * behind the slow hook), so the server kept her membership. Offsets 1-4 are in the room's history.
 */
async function strayMember (t: Test, adapter?: HeldStore): Promise<{ app: FastifyInstance, ada: RoomsClient<unknown>, rb: Room<unknown> }> {
  const slow = slowJoins()
  const { app, wsUrl } = await startApp(t, { ...LIMITS, onJoin: slow.onJoin, ...(adapter === undefined ? {} : { adapter }) })
  const bob = await client(wsUrl, 'bob')
  t.teardown(() => bob.close())
  const rb = await bob.join('lobby')
  for (let i = 1; i <= 4; i++) await rb.publish(`old ${i}`)

  const ada = await client(wsUrl, 'ada')
  t.teardown(() => ada.close())
  const first = await ada.join('lobby')
  const blocked = ada.join('slow')
  await slow.entered
  fillWait(ada.room('slow'))
  const leaving = first.leave()
  const refused = await leaving.then(() => undefined, (err: RoomsClientError) => err)
  t.equal(refused?.code, 'RATE_LIMITED', 'the leave was refused, not handled')
  t.equal(ada.room('lobby'), undefined, 'the SDK dropped its handle all the same')
  slow.release()
  await blocked
  t.same((await app.rooms.get('lobby'))?.members.map((m) => m.name).sort(), ['ada', 'bob'], 'the server kept ada in the room')
  return { app, ada, rb }
}

/**
 * strayMember, then ada's join('lobby', { history: 2 }) with the SDK's read of that history held in the store:
 * resolves once the read waits, so what the test does before `read.release()` comes while join() is unresolved.
 * Undefined (a failed assert) if join() resolved first.
 */
async function joinWithReadHeld (t: Test): Promise<{ ada: RoomsClient<unknown>, rb: Room<unknown>, read: ReturnType<HeldStore['hold']>, joining: Promise<Room<unknown>> } | undefined> {
  const store = new HeldStore()
  const { ada, rb } = await strayMember(t, store)
  const read = store.hold('history')
  const joining = ada.join('lobby', { history: 2 })
  const first = await Promise.race([read.entered.then(() => 'read'), joining.then(() => 'joined')])
  t.equal(first, 'read', 'the history asked for is read before join() resolves')
  return first === 'read' ? { ada, rb, read, joining } : undefined
}

t.test('a leave the server refused, then join(room, { history }): the last n messages, then live ones, each once, in order', async (t) => {
  const { ada, rb } = await strayMember(t)
  // Delivered to ada's connection for a room it has no handle for.
  await rb.publish('while away 5')
  await rb.publish('while away 6')

  const room = await ada.join('lobby', { history: 3 })
  t.equal(room.offset, 6)
  const log = record(room)
  const last = nextOffset(room, 7, ada)
  t.equal(await rb.publish('live 7'), 7)
  await last
  t.same(log, ['msg 4', 'msg 5', 'msg 6', 'msg 7'], 'the three asked for, then the live one')
  t.equal(room.status, 'joined')
})

t.test('a leave the server refused, then join(room, { history }) while messages keep coming: none lost, none twice', async (t) => {
  const held = await joinWithReadHeld(t)
  if (held === undefined) return
  const { ada, rb, read, joining } = held
  // Live messages 5-6 go out to ada's membership while the SDK's read of the history waits.
  await rb.publish('live 5')
  await rb.publish('live 6')
  read.release()
  const room = await joining
  const log = record(room)
  const last = nextOffset(room, 7, ada)
  await rb.publish('live 7')
  await last
  t.same(log, ['msg 3', 'msg 4', 'msg 5', 'msg 6', 'msg 7'], 'the two asked for, then every live one, once, in order')
})

t.test('a leave the server refused, then join(room, { history }) and a history that cannot be read: a gap names it', async (t) => {
  const held = await joinWithReadHeld(t)
  if (held === undefined) return
  const { ada, rb, read, joining } = held
  read.release(new RoomsError('UNAVAILABLE', 'The message store is unreachable right now: retry in a moment.'))
  const room = await joining
  const gaps: Gap[] = []
  room.on('gap', (g) => gaps.push(g))
  const log = record(room)
  const last = nextOffset(room, 5, ada)
  await rb.publish('live 5')
  await last
  t.same(log, ['gap 2-5', 'msg 5'], 'the two asked for (3 and 4) are a gap, told before the live message')
  t.match(gaps[0], { room: 'lobby', epoch: room.epoch, currentEpoch: room.epoch, after: 2, before: 5 })
})

t.test('a first join that timed out, whose undo the server refused, then join(room, { history }): the last n messages', async (t) => {
  const slow = slowJoins()
  // Here the lobby's own onJoin is the slow hook.
  const onJoin = async ({ room }: { room: string }): Promise<boolean> => await slow.onJoin({ room: room === 'lobby' ? 'slow' : room })
  const { app, wsUrl } = await startApp(t, { ...LIMITS, onJoin })
  await app.rooms.broadcast('lobby', 'old 1')
  await app.rooms.broadcast('lobby', 'old 2')

  // The join times out by the SDK's own clock; everything after it must answer within that too.
  const ada = await client(wsUrl, 'ada', 2000)
  t.teardown(() => ada.close())
  // The plugin's listener was added first: when this one runs, the server has refused the leave (or queued it).
  const [socket] = serverSockets(app)
  const undoRead = new Promise<void>((resolve) => socket?.on('message', (data: Buffer) => { if (data.toString().includes('"type":"leave"')) resolve() }))
  // So that the leave undoing the timed-out join does not fit.
  slow.entered.then(() => fillWait(ada.room('lobby')), () => {})
  const timedOut = await ada.join('lobby', { history: 5 }).then(() => undefined, (err: RoomsClientError) => err)
  t.equal(timedOut?.code, 'TIMEOUT', 'the first join timed out')
  await guard(undoRead, 'the server to read the leave that undoes the join')
  slow.release()
  await ada.ping() // handled after the join
  t.same((await app.rooms.get('lobby'))?.members.map((m) => m.name), ['ada'], 'the server kept ada in the room')
  t.equal(ada.room('lobby'), undefined, 'with no handle for it in the SDK')
  await app.rooms.broadcast('lobby', 'while away 3')
  await app.rooms.broadcast('lobby', 'while away 4')

  const room = await ada.join('lobby', { history: 5 })
  const log = record(room)
  const last = nextOffset(room, 5, ada)
  await app.rooms.broadcast('lobby', 'live 5')
  await last
  t.same(log, ['msg 1', 'msg 2', 'msg 3', 'msg 4', 'msg 5'], 'the history asked for, then the live message')
})

t.test('leave() and join(room, { history }) at once: the leave applies, and the new handle gets the last n all the same', async (t) => {
  const { app, wsUrl } = await startApp(t)
  const ada = await client(wsUrl, 'ada')
  t.teardown(() => ada.close())
  const first = await ada.join('lobby')
  for (let i = 1; i <= 4; i++) await app.rooms.broadcast('lobby', i)
  // The join goes out while the leave is unanswered: its answer may be a repeat or a fresh join.
  const leaving = first.leave()
  const joining = ada.join('lobby', { history: 2 })
  await leaving
  const room = await joining
  t.not(room, first)
  const log = record(room)
  const last = nextOffset(room, 5, ada)
  await app.rooms.broadcast('lobby', 5)
  await last
  t.same(log, ['msg 3', 'msg 4', 'msg 5'], 'the two asked for, then the live one')
})
