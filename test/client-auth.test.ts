import t from 'tap'
import WebSocket from 'ws'
import { connect, type AuthenticatedFrame, type RoomsClient } from '../src/client/index.js'
import { ADA, nextState, record, scripted, startTokenApp, token } from './fixtures/token-auth.js'
import { nextEvent } from './helpers/client.js'

/** The token's lifetime in the refresh tests: refreshed 10% (100 ms) before it ends. */
const LIFETIME_MS = 1000

async function refreshes (client: RoomsClient, count: number): Promise<AuthenticatedFrame[]> {
  const frames: AuthenticatedFrame[] = []
  await nextEvent<AuthenticatedFrame>((h) => client.on('authenticated', h), (frame) => frames.push(frame) >= count, { client, what: `${count} token refreshes` })
  return frames
}

t.test('getToken is called on connect; the token goes in the first frame, never in the URL', async (t) => {
  const { wsUrl, upgrades } = await startTokenApp(t)
  const expiresAt = Date.now() + 60_000
  const { getToken, causes } = scripted(async () => token(ADA.id, expiresAt))
  const client = await connect(wsUrl, { WebSocket, getToken, name: 'ignored-with-a-token' })
  t.teardown(() => client.close())
  t.same(causes, ['connect'])
  t.same(client.user, ADA, 'the user is the token\'s')
  t.equal(client.expiresAt, expiresAt, 'expiresAt from welcome')
  t.same(upgrades, ['/ws?name=ignored-with-a-token'])
  for (const url of upgrades) t.notOk(url.includes(token(ADA.id, expiresAt)) || url.includes(ADA.id), `no token in ${url}`)
  const room = await client.join('lobby')
  t.equal(await room.publish('hello'), 1)
})

t.test('refresh in place ahead of expiresAt: same connection id, authenticated arrives, no expiry close', async (t) => {
  const { wsUrl, app, upgrades } = await startTokenApp(t)
  const issued: number[] = []
  const { getToken, causes } = scripted(() => {
    issued.push(Date.now() + LIFETIME_MS)
    return token(ADA.id, issued.at(-1))
  })
  const client = await connect(wsUrl, { WebSocket, getToken })
  t.teardown(() => client.close())
  const id = client.connectionId
  const room = await client.join('lobby')
  const changes = record(client)
  const frames = await refreshes(client, 2)
  t.ok(Date.now() > (issued[0] as number), 'lived past the first token\'s expiry')
  t.same(causes, ['connect', 'refresh', 'refresh'])
  t.same(frames.map((f) => [f.type, f.expiresAt]), issued.slice(1).map((e) => ['authenticated', e]), 'the server\'s answers, with the new expiries')
  t.equal(client.expiresAt, issued[2])
  t.equal(client.connectionId, id, 'the same connection')
  t.same(changes, [], 'no state change: no close, no reconnect')
  t.equal(client.lastClose, undefined)
  t.equal(upgrades.length, 1)
  t.equal(app.rooms.connections, 1)
  const direct = nextEvent((h) => client.on('direct', h), undefined, { client, what: 'the direct frame' })
  t.equal(await app.rooms.send(id, 'still you'), true)
  t.equal(await direct, 'still you')
  t.equal(await room.publish('after two refreshes'), 1)
})

t.test('a reconnect calls getToken again; rejoins and queued publishes wait for welcome', async (t) => {
  let gate: Promise<void> | undefined
  let open!: () => void
  let verifying!: () => void
  const held = new Promise<void>((resolve) => { verifying = resolve })
  const { wsUrl, app, upgrades } = await startTokenApp(t, {
    // Holds the reconnect's token: a frame sent before welcome would now be refused with 4001.
    verifyToken: async (token) => {
      if (gate !== undefined) {
        verifying()
        await gate
      }
      return { user: { id: token, name: 'ada' } }
    }
  })
  const { getToken, causes } = scripted(() => 'u-ada', () => 'u-ada-again')
  const client = await connect(wsUrl, { WebSocket, getToken })
  t.teardown(() => client.close())
  const room = await client.join('lobby')
  const changes = record(client)
  gate = new Promise((resolve) => { open = resolve })
  const reconnecting = nextState(client, 'reconnecting')
  for (const socket of app.websocketServer.clients) socket.close(1012, 'Room state was reset: reconnect and rejoin')
  await reconnecting
  const queued = room.publish('sent after welcome')
  const joining = client.join('second')
  await held
  open()
  t.equal(await queued, 1)
  t.equal((await joining).status, 'joined')
  t.same(changes.map((c) => [c.state, (c as { code?: number }).code]), [['reconnecting', 1012], ['open', undefined]], 'never a 4001')
  t.same(causes, ['connect', 'reconnect'])
  t.same(upgrades, ['/ws', '/ws'])
  t.equal(client.user?.id, 'u-ada-again', 'the second token authenticated the second connection')
})

t.test('a token that expires beyond what setTimeout holds is not refreshed at once', async (t) => {
  const { wsUrl } = await startTokenApp(t)
  const { getToken, causes } = scripted(() => token(ADA.id, Date.now() + 40 * 24 * 3600 * 1000))
  const client = await connect(wsUrl, { WebSocket, getToken })
  t.teardown(() => client.close())
  await client.ping()
  await client.ping()
  t.same(causes, ['connect'])
})

t.test('a token without expiresAt is never refreshed', async (t) => {
  const { wsUrl } = await startTokenApp(t)
  const { getToken, causes } = scripted(() => token(ADA.id))
  const client = await connect(wsUrl, { WebSocket, getToken })
  t.teardown(() => client.close())
  await client.ping()
  t.equal(client.expiresAt, undefined)
  t.same(causes, ['connect'])
})

t.test('getToken must be a function', async (t) => {
  await t.rejects(connect('ws://127.0.0.1:1/ws', { WebSocket, getToken: 'abc' as never }), { name: 'TypeError', message: /getToken must be a function/ })
})
