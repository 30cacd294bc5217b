import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import WebSocket from 'ws'
import rooms from '../src/index.js'
import { connect, type PresenceChange, type WebSocketConstructor } from '../src/client/index.js'
import { nextEvent } from './helpers/client.js'

/** The in-memory server with no resumeSecret: a restart signs with another random key, so the guests' tokens are lost. */
async function start (t: Test, port = 0): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(rooms, { presenceIntervalMs: 0, presenceGraceMs: 0 })
  await app.listen({ port, host: '127.0.0.1' })
  t.teardown(async () => await app.close())
  return app
}

t.test('a reconnect that gives a fresh user (a restart lost the resume key): the former user is not told as a leave, as the new one is not as a join', async (t) => {
  const first = await start(t)
  const port = (first.server.address() as { port: number }).port
  const wsUrl = `ws://127.0.0.1:${port}/ws`
  const carol = await connect(wsUrl, { name: 'carol', WebSocket: WebSocket as unknown as WebSocketConstructor, reconnect: false })
  t.teardown(() => carol.close())
  await carol.join('r')
  const ada = await connect(wsUrl, { name: 'ada', WebSocket: WebSocket as unknown as WebSocketConstructor, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
  t.teardown(() => ada.close())
  const room = await ada.join('r')
  const former = ada.user!.id
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
