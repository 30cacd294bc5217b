import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import WebSocket from 'ws'
import rooms from '../src/index.js'
import { connect, type PresenceChange, type Room, type RoomsClient, type WebSocketConstructor } from '../src/client/index.js'
import { nextEvent } from './helpers/client.js'

/** The in-memory server with no resumeSecret: a restart signs with another random key, so the guests' tokens are lost. */
async function start (t: Test, port = 0): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(rooms, { presenceIntervalMs: 0, presenceGraceMs: 0 })
  await app.listen({ port, host: '127.0.0.1' })
  t.teardown(async () => await app.close())
  return app
}

/** Carol, then ada (reconnecting at once, through `WebSocketImpl`), both in room r: ada's handle and her first user id. */
async function carolAndAda (t: Test, wsUrl: string, WebSocketImpl: unknown = WebSocket): Promise<{ ada: RoomsClient, room: Room, former: string }> {
  const carol = await connect(wsUrl, { name: 'carol', WebSocket: WebSocket as unknown as WebSocketConstructor, reconnect: false })
  t.teardown(() => carol.close())
  await carol.join('r')
  const ada = await connect(wsUrl, { name: 'ada', WebSocket: WebSocketImpl as WebSocketConstructor, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
  t.teardown(() => ada.close())
  const room = await ada.join('r')
  return { ada, room, former: ada.user!.id }
}

t.test('a reconnect that gives a fresh user (a restart lost the resume key): the former user is not told as a leave, as the new one is not as a join', async (t) => {
  const first = await start(t)
  const port = (first.server.address() as { port: number }).port
  const wsUrl = `ws://127.0.0.1:${port}/ws`
  const { ada, room, former } = await carolAndAda(t, wsUrl)
  t.same(room.members.map((m) => m.name).sort(), ['ada', 'carol'])

  const changes: PresenceChange[] = []
  room.on('presence', (change) => changes.push(change))
  // The rejoin's presence comes before its `joined`.
  const rejoined = nextEvent((h) => room.on('joined', h), undefined, { client: ada, room, what: 'the rejoin after the restart' })
  await first.close()
  await start(t, port)
  await rejoined

  t.not(ada.user!.id, former, 'the restarted server gave a fresh user (the case under test)')
  t.equal(ada.user!.name, 'ada')
  t.same(room.members.map((m) => m.id), [ada.user!.id], 'the room has the new user only')
  t.same(changes.map((c) => ({ joins: c.joins.map((m) => m.name), leaves: c.leaves.map((m) => m.name) })), [{ joins: [], leaves: ['carol'] }],
    'carol, gone with the restart, is a leave; neither of ada\'s users is a join or a leave')
  t.notOk(changes.some((c) => c.leaves.some((m) => m.id === former)), 'the former user is not a leave')
})

t.test('a fresh user while the former one is still in its grace: the end of that grace is no leave either', async (t) => {
  const app = Fastify()
  await app.register(rooms, { presenceIntervalMs: 0, presenceGraceMs: 300 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => await app.close())
  const wsUrl = `ws://127.0.0.1:${(app.server.address() as { port: number }).port}/ws`
  // A token the server does not accept (expired, or signed by another deployment's key): the reconnect is a fresh user.
  let forget = false
  class Forgetful extends WebSocket {
    constructor (url: string, protocols?: string[]) {
      super(url, forget ? protocols?.map((p) => p.startsWith('fastify-rooms.resume.') ? 'fastify-rooms.resume.not-a-token' : p) : protocols)
    }
  }
  const { ada, room, former } = await carolAndAda(t, wsUrl, Forgetful)
  const changes: PresenceChange[] = []
  room.on('presence', (change) => changes.push(change))
  const rejoined = nextEvent((h) => room.on('joined', h), undefined, { client: ada, room, what: 'the rejoin' })
  forget = true
  ada.reconnect()
  await rejoined
  t.not(ada.user!.id, former, 'a fresh user (the case under test)')
  t.ok(room.members.some((m) => m.id === former), 'the former user is still listed, in its grace')
  // Its grace ends: the server's diff takes it out, and the count drops to ada and carol.
  await nextEvent<number>((h) => room.on('count', h), (count) => count === 2, { client: ada, room, what: 'the end of the former user\'s grace' })
  t.notOk(room.members.some((m) => m.id === former), 'the former user is gone from the list')
  t.same(changes.flatMap((c) => c.leaves.map((m) => m.id)), [], 'and was never told as a leave')
})
