import t, { type Test } from 'tap'
import WebSocket from 'ws'
import { connect, type Member, type PresenceChange, type RoomsClient } from '../src/client/index.js'
import { eachAdapter, type Deployment } from './helpers/deployment.js'
import { dropConnection, gate, nextEvent } from './helpers/client.js'
import { startApp } from './helpers/server.js'
import { RoomsError } from '../src/index.js'

/** Pages of two members, presence on the next tick, departures without grace. */
const options = { membersPageSize: 2, presenceIntervalMs: 0, presenceGraceMs: 0 }

const ids = (members: Member[]): string[] => members.map((m) => m.id)
const byId = (a: string, b: string): number => a < b ? -1 : a > b ? 1 : 0

/** Clients named `names`, spread over the nodes, each in room `r`, joined one after the other. */
async function crowd (t: Test, d: Deployment, names: string[]): Promise<RoomsClient[]> {
  const clients: RoomsClient[] = []
  for (const [i, name] of names.entries()) {
    const c = await connect(d.node(i).wsUrl, { WebSocket, name, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
    t.teardown(() => c.close())
    await c.join('r')
    clients.push(c)
  }
  return clients
}

eachAdapter(t, 'paging through a room larger than one page: count at once, members a page at a time, by id', async (t, deploy) => {
  const d = await deploy(options)
  const clients = await crowd(t, d, ['ada', 'bob', 'carol', 'dave', 'eve'])
  const everyone = clients.map((c) => c.user!.id).sort(byId)
  const eve = clients[4]!
  const room = eve.room('r')!
  t.equal(room.count, 5, 'the count is the whole room')
  t.same(ids(room.members), everyone.slice(0, 2), 'the first page: the two lowest ids')
  t.equal(room.membersComplete, false)

  const [page, same] = await Promise.all([room.loadMoreMembers(), room.loadMoreMembers()])
  t.same(ids(page), everyone.slice(2, 4), 'the next page')
  t.equal(same, page, 'a call while one is in flight shares it')
  t.same(ids(room.members), everyone.slice(0, 4))
  t.equal(room.membersComplete, false)
  t.same(ids(await room.loadMoreMembers()), everyone.slice(4))
  t.equal(room.membersComplete, true)
  t.same(ids(room.members), everyone, 'every member once, by id')
  t.same(await room.loadMoreMembers(), [], 'nothing more to load')
  t.same(ids(await room.loadMoreMembers()), [], 'and again')

  const joined = nextEvent<PresenceChange>((h) => room.on('presence', h), undefined, eve)
  const [frank] = await crowd(t, d, ['frank'])
  t.same(ids((await joined).joins), [frank!.user!.id])
  t.equal(room.count, 6)
  t.same(ids(room.members), [...everyone, frank!.user!.id].sort(byId), 'a complete list stays complete')
})

eachAdapter(t, 'an incomplete list: a leave of a member not loaded changes only the count; pages loaded later do not bring back who left', async (t, deploy) => {
  const d = await deploy(options)
  const clients = await crowd(t, d, ['ada', 'bob', 'carol', 'dave', 'eve'])
  const eve = clients[4]!
  const room = eve.room('r')!
  const loaded = new Set(ids(room.members))
  const changes: PresenceChange[] = []
  room.on('presence', (change) => changes.push(change))
  const counts: number[] = []
  room.on('count', (n) => counts.push(n))

  // Node 0's diffs of every join first. Dave joined on node 1, and node 0 batches his join on its own
  // timer: eve's `joined` covers it, but while that batch is open the leave below can reach node 0 and
  // share it; then eve's diff names dave too, whom she never loaded, and she hears of him as a join.
  // Ada, on node 0 from the start, counts five once node 0 has sent them all (eve's came after dave's).
  const adaRoom = clients[0]!.room('r')!
  if (adaRoom.count < 5) await nextEvent<number>((h) => adaRoom.on('count', h), (n) => n === 5, clients[0]!)
  const unloaded = clients.find((c) => c !== eve && !loaded.has(c.user!.id))!
  const counted = nextEvent<number>((h) => room.on('count', h), (n) => n === 4, eve)
  await unloaded.room('r')!.leave()
  await counted
  t.same(changes, [], 'no presence event for a member this handle never knew')

  const known = clients.find((c) => c !== eve && loaded.has(c.user!.id))
  if (known !== undefined) {
    const left = nextEvent<PresenceChange>((h) => room.on('presence', h), undefined, eve)
    await known.room('r')!.leave()
    t.same(ids((await left).leaves), [known.user!.id], 'a loaded member leaving is a leave')
  }
  while (!room.membersComplete) await room.loadMoreMembers()
  const present = clients.filter((c) => c !== unloaded && c !== known).map((c) => c.user!.id).sort(byId)
  t.same(ids(room.members), present, 'the pages hold who is there, and nobody who left')
  t.equal(room.count, present.length)
  t.same(counts, known === undefined ? [4] : [4, 3])
})

eachAdapter(t, 'after a reconnect the list starts again from the new joined', async (t, deploy) => {
  // The others dropped too (one memory node) stay present through the grace period.
  const d = await deploy({ ...options, presenceGraceMs: 10_000 })
  const clients = await crowd(t, d, ['ada', 'bob', 'carol'])
  const carol = clients[2]!
  const room = carol.room('r')!
  while (!room.membersComplete) await room.loadMoreMembers()
  t.equal(room.members.length, 3)
  const rejoined = nextEvent((h) => room.on('joined', h), undefined, carol)
  await dropConnection(d.node(2).app, carol)
  await rejoined
  t.equal(room.count, 3)
  t.equal(room.members.length, 2, 'the first page of the new joined')
  t.equal(room.membersComplete, false)
  t.equal((await room.loadMoreMembers(1)).length, 1)
  t.equal(room.membersComplete, true)
  t.same(ids(room.members), clients.map((c) => c.user!.id).sort(byId))
})

eachAdapter(t, 'loadMoreMembers refusals: disconnected DISCONNECTED, a bad limit the server error, a left handle NOT_IN_ROOM', async (t, deploy) => {
  const g = gate()
  const d = await deploy(options, (app) => g.setup(app))
  const clients = await crowd(t, d, ['ada', 'bob', 'carol'])
  const carol = clients[2]!
  const room = carol.room('r')!
  t.equal(room.membersComplete, false)

  await t.rejects(room.loadMoreMembers(5000), { name: 'RoomsClientError', code: 'INVALID_FRAME' })
  t.equal(room.membersComplete, false, 'a refused page changes nothing')

  g.closed = true
  await dropConnection(d.node(2).app, carol)
  await t.rejects(room.loadMoreMembers(), { name: 'RoomsClientError', code: 'DISCONNECTED', room: 'r' })
  const rejoined = nextEvent((h) => room.on('joined', h), undefined, carol)
  g.closed = false
  await rejoined

  await room.leave()
  await t.rejects(room.loadMoreMembers(), { code: 'NOT_IN_ROOM', room: 'r' })
})

eachAdapter(t, 'a rejoin reads the new first page in the server\'s order: ids above U+FFFF and in U+E000-U+FFFF, no change reported where none happened', async (t, deploy) => {
  // By code point (the server's order on every adapter): a < U+FF01 < the emoji; JavaScript's < puts the emoji before U+FF01.
  const users = ['a', '\uFF01', '\u{1F600}']
  const d = await deploy({ ...options, presenceGraceMs: 10_000, authenticate: (request: { query: unknown }) => ({ id: (request.query as { u: string }).u, name: 'n' }) })
  const clients: RoomsClient[] = []
  for (const u of users) {
    const c = await connect(`${d.node(0).wsUrl}?u=${encodeURIComponent(u)}`, { WebSocket, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
    t.teardown(() => c.close())
    await c.join('r')
    clients.push(c)
  }
  const room = clients[0]!.room('r')!
  // The first to join learns of the others from their diffs.
  if (room.count < users.length) await nextEvent((h) => room.on('presence', h), () => room.count === users.length, clients[0]!)
  while (!room.membersComplete) await room.loadMoreMembers()
  t.same(ids(room.members), users, 'every member, in the server\'s order')
  const changes: PresenceChange[] = []
  room.on('presence', (change) => changes.push(change))
  const rejoined = nextEvent((h) => room.on('joined', h), undefined, clients[0]!)
  clients[0]!.reconnect() // nobody joins or leaves meanwhile
  await rejoined
  t.same(changes, [], 'no join or leave reported')
  t.same(ids(room.members), ['a', '\uFF01'], 'the new first page; the emoji past it is not known until loaded')
  t.equal(room.count, 3)
  await room.loadMoreMembers()
  t.same(ids(room.members), users)
})

t.test('loadMoreMembers and history while a rejoin refused for a passing reason waits: UNAVAILABLE, not NOT_IN_ROOM; after the rejoin they work', async (t) => {
  let down = false
  let refused = (): void => {}
  const refusal = new Promise<void>((resolve) => { refused = resolve })
  const { app, wsUrl } = await startApp(t, {
    ...options,
    onJoin: () => {
      if (!down) return true
      refused()
      throw new RoomsError('UNAVAILABLE', 'The message store is unreachable right now: retry in a moment.')
    }
  })
  const others = await Promise.all(['ada', 'bob'].map(async (name) => await connect(wsUrl, { WebSocket, name })))
  t.teardown(() => others.forEach((c) => c.close()))
  for (const c of others) await c.join('r')
  // A long backoff: the refused rejoin is not sent again until the test reconnects.
  const carol = await connect(wsUrl, { WebSocket, name: 'carol', reconnect: { initialDelayMs: 60_000, maxDelayMs: 60_000 } })
  t.teardown(() => carol.close())
  const room = await carol.join('r')
  await app.rooms.broadcast('r', 'one')
  if (room.offset < 1) await nextEvent((h) => room.on('message', h), undefined, carol)
  t.equal(room.membersComplete, false)

  down = true
  carol.reconnect()
  await refusal
  await carol.ping() // its reply follows the refusal's, which the SDK has handled by then
  t.equal(room.status, 'joined', 'the handle stays, its rejoin waits')
  await t.rejects(room.loadMoreMembers(), { name: 'RoomsClientError', code: 'UNAVAILABLE', room: 'r', message: /being rejoined.*retry after the room's next joined event/ })
  await t.rejects(room.history(), { code: 'UNAVAILABLE', room: 'r' })

  // Reads sent as the connection opens go out just behind the rejoin, and are answered after its refusal.
  const sent = new Promise<unknown[]>((resolve) => {
    const off = carol.on('state', (state) => {
      if (state !== 'open') return
      off()
      resolve([room.history().catch((err: unknown) => err), room.loadMoreMembers().catch((err: unknown) => err), room.publish('typing', { ephemeral: true }).catch((err: unknown) => err)])
    })
  })
  carol.reconnect()
  t.match(await Promise.all(await sent), [{ code: 'UNAVAILABLE', room: 'r' }, { code: 'UNAVAILABLE', room: 'r' }, { code: 'DISCONNECTED', room: 'r', message: /not held, so it was not published/ }],
    'in flight when the rejoin was refused: reads UNAVAILABLE, an ephemeral publish DISCONNECTED, as if made while the rejoin waits')
  t.equal(room.status, 'joined')

  down = false
  const rejoined = nextEvent((h) => room.on('joined', h), undefined, carol)
  carol.reconnect()
  await rejoined
  t.same((await room.history()).messages.map((m) => m.data), ['one'])
  t.equal((await room.loadMoreMembers()).length > 0, true)
})
