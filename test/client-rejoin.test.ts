import t from 'tap'
import WebSocket from 'ws'
import { RoomsError } from '../src/index.js'
import { connect, type RoomsClientError } from '../src/client/index.js'
import { startApp } from './helpers/server.js'

t.test('a rejoin refused for a passing reason (UNAVAILABLE) keeps the room and joins it again; a first join is the app\'s to retry', async (t) => {
  let down = false
  let refusals = 0
  const { wsUrl, app } = await startApp(t, {
    onJoin: () => {
      if (!down) return
      refusals++
      // As the Redis adapter answers while the store is away.
      throw new RoomsError('UNAVAILABLE', 'The message store is unreachable right now: retry in a moment.')
    }
  })
  const client = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const room = await client.join('r')
  const left: unknown[] = []
  room.on('left', (info) => left.push(info))
  const messages: unknown[] = []
  room.on('message', (m) => messages.push(m.data))
  // With history the room keeps its epoch while nobody is in it, so the rejoin can recover.
  const first = new Promise((resolve) => room.on('message', resolve))
  await app.rooms.broadcast('r', 'before')
  await first

  down = true
  const refused = new Promise<void>((resolve) => {
    const off = client.on('welcome', () => { off(); resolve() })
  })
  client.reconnect()
  await refused
  const back = new Promise<{ recovered: boolean | undefined }>((resolve) => {
    const off = room.on('joined', (info) => { off(); resolve(info) })
  })
  // Let a few rejoins be refused before the store comes back: each refusal is a frame the server answered.
  while (refusals < 3) await new Promise((resolve) => setImmediate(resolve))
  t.equal(client.room('r'), room, 'the handle stays while its rejoin is refused')
  const held = room.publish('held')
  down = false
  t.same(await back, { recovered: true }, 'joined again, nothing missed')
  t.equal(await held, 2, 'a publish made while the rejoin was refused waits for it, then is published once')
  t.same(left, [], 'never left')
  const after = new Promise<void>((resolve) => room.on('message', (m) => { if (m.data === 'after') resolve() }))
  await app.rooms.broadcast('r', 'after')
  await after
  t.same(messages, ['before', 'held', 'after'], 'each once, in order')

  down = true
  const error = await client.join('other').catch((err: RoomsClientError) => err)
  t.match(error, { code: 'UNAVAILABLE' }, 'a first join refused for a passing reason rejects: the app decides')
  t.equal(client.room('other'), undefined)
})
