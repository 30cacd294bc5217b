import t from 'tap'
import WebSocket from 'ws'
import { RoomsError } from '../src/index.js'
import { connect, type RoomsClientError } from '../src/client/index.js'
import { startApp } from './helpers/server.js'
import { nextEvent } from './helpers/client.js'
import { guard } from './helpers/until.js'

t.test('a rejoin refused for a passing reason (UNAVAILABLE) keeps the room and joins it again; a first join is the app\'s to retry', async (t) => {
  let down = false
  let refusals = 0
  let refusedThrice!: () => void
  const thirdRefusal = new Promise<void>((resolve) => { refusedThrice = resolve })
  const { wsUrl, app } = await startApp(t, {
    onJoin: () => {
      if (!down) return
      if (++refusals === 3) refusedThrice()
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
  const first = nextEvent((h) => room.on('message', h), undefined, { client, room, what: "'before'" })
  await app.rooms.broadcast('r', 'before')
  await first

  down = true
  const refused = nextEvent((h) => client.on('welcome', h), undefined, { client, what: 'the welcome after reconnect()' })
  client.reconnect()
  await refused
  const back = nextEvent<{ recovered: boolean | undefined }>((h) => room.on('joined', h), undefined, { client, room, what: 'the rejoin once the store is back' })
  // Let a few rejoins be refused before the store comes back: each refusal is a frame the server answered.
  // Fails at once if the handle is left or the client closes meanwhile (the rejoins would stop).
  const gaveUp = new Promise((resolve) => {
    room.on('left', (info) => resolve({ left: info }))
    client.on('state', (state, change) => { if (state === 'closed') resolve({ closed: change }) })
  })
  await guard(thirdRefusal, 'three refused rejoins', { abort: [gaveUp] })
  t.equal(client.room('r'), room, 'the handle stays while its rejoin is refused')
  const held = room.publish('held')
  down = false
  t.same(await back, { recovered: true }, 'joined again, nothing missed')
  t.equal(await held, 2, 'a publish made while the rejoin was refused waits for it, then is published once')
  t.same(left, [], 'never left')
  const after = nextEvent((h) => room.on('message', h), (m: { data: unknown }) => m.data === 'after', { client, room, what: "'after'" })
  await app.rooms.broadcast('r', 'after')
  await after
  t.same(messages, ['before', 'held', 'after'], 'each once, in order')

  down = true
  const error = await client.join('other').catch((err: RoomsClientError) => err)
  t.match(error, { code: 'UNAVAILABLE' }, 'a first join refused for a passing reason rejects: the app decides')
  t.equal(client.room('other'), undefined)
})
