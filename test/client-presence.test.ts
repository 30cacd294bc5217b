import t, { type Test } from 'tap'
import WebSocket from 'ws'
import { connect, type PresenceChange, type Room, type RoomsClient } from '../src/client/index.js'
import { eachAdapter } from './helpers/deployment.js'
import { gate, nextEvent } from './helpers/client.js'
import { until } from './helpers/until.js'

/** Presence flushed on the next tick, departures without grace: every change is seen at once. */
const fast = { presenceIntervalMs: 0, presenceGraceMs: 0 }

async function client (t: Test, url: string, name: string): Promise<RoomsClient> {
  // Fast reconnects: on one memory node a test that drops one socket drops them all.
  const c = await connect(url, { WebSocket, name, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
  t.teardown(() => c.close())
  return c
}

const names = (members: Array<{ name: string }>): string[] => members.map((m) => m.name).sort()

/** The next presence change of a room handle. */
const nextPresence = async (room: Room, c: RoomsClient): Promise<PresenceChange> => await nextEvent<PresenceChange>((h) => room.on('presence', h), undefined, c)

eachAdapter(t, 'presence diffs reach the SDK as effective changes, with the count; the joiner never sees itself join', async (t, deploy) => {
  const d = await deploy(fast)
  const ada = await client(t, d.node(0).wsUrl, 'ada')
  const bob = await client(t, d.node(1).wsUrl, 'bob')
  const carol = await client(t, d.node(0).wsUrl, 'carol')

  const adaRoom = await ada.join('r')
  t.same(names(adaRoom.members), ['ada'])
  t.equal(adaRoom.count, 1)
  const adaSeesBob = nextPresence(adaRoom, ada)
  const bobRoom = await bob.join('r')
  t.same(names(bobRoom.members), ['ada', 'bob'], 'joined carries the members, the joiner included')
  t.equal(bobRoom.count, 2)
  const change = await adaSeesBob
  t.same({ ...change, joins: names(change.joins) }, { room: 'r', joins: ['bob'], leaves: [], count: 2 })
  t.same(names(adaRoom.members), ['ada', 'bob'], 'members follow presence')
  t.equal(adaRoom.count, 2)

  // bob's frames come in order: a presence naming bob himself would come before the one naming carol.
  const bobSeesCarol = nextPresence(bobRoom, bob)
  const adaSeesCarol = nextPresence(adaRoom, ada)
  await carol.join('r')
  t.same(names((await bobSeesCarol).joins), ['carol'], 'the first change bob sees is carol, not himself')
  t.same(names((await adaSeesCarol).joins), ['carol'])

  const counts: number[] = []
  adaRoom.on('count', (n) => counts.push(n))
  const adaSeesLeave = nextPresence(adaRoom, ada)
  await bobRoom.leave()
  const left = await adaSeesLeave
  t.same({ ...left, leaves: names(left.leaves) }, { room: 'r', joins: [], leaves: ['bob'], count: 2 })
  t.same(names(adaRoom.members), ['ada', 'carol'])
  t.same(counts, [2], 'count follows the diff')
})

eachAdapter(t, 'several joins within one presence interval reach a member as one event', async (t, deploy) => {
  // Long enough that joins sent together fall in one batch; the test waits for the event, not for the interval.
  const d = await deploy({ presenceIntervalMs: 300, presenceGraceMs: 0 })
  const ada = await client(t, d.node(0).wsUrl, 'ada')
  const others = await Promise.all(['bob', 'carol', 'dave'].map(async (name, i) => await client(t, d.node(i + 1).wsUrl, name)))
  const room = await ada.join('r')
  const changes: PresenceChange[] = []
  room.on('presence', (change) => changes.push(change))
  const all = nextEvent<PresenceChange>((h) => room.on('presence', h), () => room.count === 4, ada)
  await Promise.all(others.map(async (c) => await c.join('r')))
  await all
  t.equal(changes.length, 1, 'one event for the three joins')
  t.same(names(changes[0]!.joins), ['bob', 'carol', 'dave'])
  t.equal(changes[0]!.count, 4)
  t.same(names(room.members), ['ada', 'bob', 'carol', 'dave'])
})

eachAdapter(t, 'a reconnect within the grace period shows no leave and no join to the others', async (t, deploy) => {
  const d = await deploy({ presenceIntervalMs: 0, presenceGraceMs: 10_000 })
  const ada = await client(t, d.node(0).wsUrl, 'ada')
  const bob = await client(t, d.node(1).wsUrl, 'bob')
  const adaRoom = await ada.join('r')
  const adaSeesBob = nextPresence(adaRoom, ada)
  const bobRoom = await bob.join('r')
  await adaSeesBob
  const changes: PresenceChange[] = []
  adaRoom.on('presence', (change) => changes.push(change))

  const id = bob.user?.id
  const rejoined = nextEvent((h) => bobRoom.on('joined', h), undefined, bob)
  const reconnecting = nextEvent((h) => bob.on('state', h), (s) => s === 'reconnecting', { client: bob, what: "bob's reconnecting state" })
  for (const socket of d.node(1).app.websocketServer.clients) socket.terminate()
  await reconnecting
  await rejoined
  t.equal(bob.user?.id, id, 'the resume token kept the user id')
  t.same(names(bobRoom.members), ['ada', 'bob'])

  // A later join is the barrier: ada's frames come in order, so a leave or join of bob would come first.
  const carol = await client(t, d.node(0).wsUrl, 'carol')
  const next = nextPresence(adaRoom, ada)
  await carol.join('r')
  await next
  t.same(changes.map((c) => names([...c.joins, ...c.leaves])), [['carol']], 'nothing about bob')
  t.equal(adaRoom.count, 3)
})

eachAdapter(t, 'reconnect() is a reconnect, not a goodbye: within the grace period the others see no leave and no join', async (t, deploy) => {
  const g = gate()
  const d = await deploy({ presenceIntervalMs: 0, presenceGraceMs: 10_000 }, (app) => g.setup(app))
  const ada = await client(t, d.node(0).wsUrl, 'ada')
  const bob = await client(t, d.node(1).wsUrl, 'bob')
  const adaRoom = await ada.join('r')
  const adaSeesBob = nextPresence(adaRoom, ada)
  const bobRoom = await bob.join('r')
  await adaSeesBob
  const changes: PresenceChange[] = []
  adaRoom.on('presence', (change) => changes.push(change))

  // The server sees the old connection end before the new one joins: its close code alone decides.
  const sockets = d.node(1).app.websocketServer.clients
  const before = sockets.size
  g.closed = true
  const rejoined = nextEvent((h) => bobRoom.on('joined', h), undefined, bob)
  bob.reconnect()
  await until(() => sockets.size === before - 1, 'the server saw the old connection close')
  g.closed = false
  await rejoined
  const carol = await client(t, d.node(0).wsUrl, 'carol')
  const next = nextPresence(adaRoom, ada)
  await carol.join('r')
  await next
  t.same(changes.map((c) => names([...c.joins, ...c.leaves])), [['carol']], 'nothing about bob')

  // close() is a goodbye: carol leaves at once, grace or not. (Not bob: his old
  // connection, which he did not say goodbye on, stays in its grace period.)
  const left = nextPresence(adaRoom, ada)
  carol.close()
  t.same(names((await left).leaves), ['carol'])
})
