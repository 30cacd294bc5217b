import t from 'tap'
import WebSocket from 'ws'
import { UNAUTHORIZED_REASONS } from '../src/index.js'
import { connect, type RoomsClient, type WebSocketConstructor } from '../src/client/index.js'
import { ADA, BOB, nextState, record, scripted, startTokenApp, token, type TokenApp } from './fixtures/token-auth.js'
import { gate, nextEvent } from './helpers/client.js'
import { guard } from './helpers/until.js'
import { TestSocket } from './helpers/socket.js'

/** Long enough for a join before it expires, short enough to wait for. */
const LIFETIME_MS = 600

const refusal = (reason: string, byClient = false): { code: number, reason: string, byClient: boolean } => ({ code: 4001, reason, byClient })

/**
 * A full authenticated round trip through the server from another socket:
 * the turns of the event loop in which a looping client would have tried again.
 */
async function probe (started: TokenApp): Promise<void> {
  const s = await TestSocket.connect(started.wsUrl)
  await s.authenticate(token(BOB.id))
  await s.request({ type: 'ping' })
  s.close()
}

t.test('a refused token: getToken is asked once more, then connect() rejects with UNAUTHORIZED and the server\'s reason; no loop', async (t) => {
  const started = await startTokenApp(t, {}, undefined)
  const { getToken, causes } = scripted(() => 'forged')
  const err = await connect(started.wsUrl, { WebSocket, getToken, reconnect: { initialDelayMs: 1, maxDelayMs: 1 } }).then(() => undefined, (e: unknown) => e)
  t.match(err, {
    name: 'RoomsClientError',
    code: 'UNAUTHORIZED',
    message: `The server refused the credentials, also with a fresh token from getToken (close code 4001: ${UNAUTHORIZED_REASONS.badToken}).`,
    close: refusal(UNAUTHORIZED_REASONS.badToken)
  })
  t.same(causes, ['connect', 'unauthorized'], 'getToken: the first call and one more')
  t.same(started.upgrades, ['/ws', '/ws'], 'two upgrades')
  await probe(started)
  t.same(causes, ['connect', 'unauthorized'], 'no call after the client stopped')
  t.equal(started.upgrades.length, 3, 'no upgrade after it but the probe\'s')
})

t.test('a refused first token, then a good one from the retry: connect() resolves', async (t) => {
  const { wsUrl, upgrades } = await startTokenApp(t)
  const { getToken, causes } = scripted(() => 'stale', () => token(ADA.id))
  const client = await connect(wsUrl, { WebSocket, getToken })
  t.teardown(() => client.close())
  t.same(causes, ['connect', 'unauthorized'])
  t.equal(upgrades.length, 2)
  t.same(client.lastClose, refusal(UNAUTHORIZED_REASONS.badToken), 'the refused attempt is told in lastClose')
  t.same(client.user, ADA)
})

t.test('a refresh that fails: the server closes 4001 at expiry, getToken is asked once more, the client reconnects and rejoins', async (t) => {
  const { wsUrl, upgrades } = await startTokenApp(t)
  let expiresAt = 0
  const { getToken, causes } = scripted(
    () => token(ADA.id, expiresAt = Date.now() + LIFETIME_MS),
    () => { throw new Error('token service down') },
    () => token(ADA.id)
  )
  const client = await connect(wsUrl, { WebSocket, getToken })
  t.teardown(() => client.close())
  const first = client.connectionId
  const room = await client.join('lobby')
  t.equal(await room.publish('before'), 1)
  const changes = record(client)
  const rejoined = nextEvent((h) => room.on('joined', h), undefined, { room, what: 'the rejoin' })
  const open = nextState(client, 'open')
  await nextState(client, 'reconnecting')
  t.ok(Date.now() >= expiresAt, 'closed by the server at expiresAt')
  await open
  t.same(await rejoined, { recovered: true })
  t.match(changes, [
    { state: 'reconnecting', ...refusal(UNAUTHORIZED_REASONS.expired), attempt: 1, delayMs: 0 },
    { state: 'open', welcome: { connectionId: client.connectionId } }
  ])
  t.equal(changes.length, 2)
  t.same(causes, ['connect', 'refresh', 'unauthorized'])
  t.equal(upgrades.length, 2)
  t.not(client.connectionId, first, 'a new connection')
  t.equal(await room.publish('after'), 2)
})

t.test('a refresh the server refuses (another user): 4001, then the retry with a fresh token reconnects', async (t) => {
  const { wsUrl } = await startTokenApp(t)
  const { getToken, causes } = scripted(
    () => token(ADA.id, Date.now() + LIFETIME_MS),
    () => token(BOB.id, Date.now() + LIFETIME_MS),
    () => token(ADA.id)
  )
  const client = await connect(wsUrl, { WebSocket, getToken })
  t.teardown(() => client.close())
  const reconnecting = nextState(client, 'reconnecting')
  const open = nextState(client, 'open')
  t.match(await reconnecting, refusal(UNAUTHORIZED_REASONS.otherUser))
  await open
  t.same(causes, ['connect', 'refresh', 'unauthorized'])
  t.same(client.user, ADA)
})

t.test('a refused retry stops: closed with UNAUTHORIZED and the server\'s reason; waiting calls reject with UNAUTHORIZED', async (t) => {
  const started = await startTokenApp(t)
  const { getToken, causes } = scripted(
    () => token(ADA.id, Date.now() + LIFETIME_MS),
    () => { throw new Error('token service down') },
    () => 'revoked'
  )
  const client = await connect(started.wsUrl, { WebSocket, getToken, reconnect: { initialDelayMs: 1, maxDelayMs: 1 } })
  const room = await client.join('lobby')
  const changes = record(client)
  const errors: unknown[] = []
  client.on('error', (err) => errors.push(err))
  const closed = nextState(client, 'closed')
  await nextState(client, 'reconnecting')
  const queued = room.publish('never sent')
  const joining = client.join('other')
  t.same(await closed, { state: 'closed', ...refusal(UNAUTHORIZED_REASONS.badToken) })
  await t.rejects(guard(queued, 'the publish made as the client started its retry'), { code: 'UNAUTHORIZED', message: /Authentication failed: the token was not accepted/, close: refusal(UNAUTHORIZED_REASONS.badToken) })
  await t.rejects(joining, { code: 'UNAUTHORIZED', room: 'other' })
  t.same(changes.map((c) => [c.state, (c as { reason?: string }).reason]), [['reconnecting', UNAUTHORIZED_REASONS.expired], ['closed', UNAUTHORIZED_REASONS.badToken]])
  t.equal(client.state, 'closed')
  t.same(client.lastClose, refusal(UNAUTHORIZED_REASONS.badToken))
  await t.rejects(client.join('later'), { code: 'CLOSED', close: refusal(UNAUTHORIZED_REASONS.badToken) })
  t.same(errors, [], 'the server\'s UNAUTHORIZED frames are told through state, not error')
  await probe(started)
  t.same(causes, ['connect', 'refresh', 'unauthorized'])
  t.equal(started.upgrades.length, 3, 'two of the client, one of the probe')
})

t.test('getToken throwing on the retry after a 4001 stops with the server\'s reason and what getToken threw', async (t) => {
  const { wsUrl } = await startTokenApp(t)
  const { getToken, causes } = scripted(
    () => token(ADA.id, Date.now() + LIFETIME_MS),
    () => { throw new Error('token service down') }
  )
  const client = await connect(wsUrl, { WebSocket, getToken })
  const room = await client.join('lobby')
  const closed = nextState(client, 'closed')
  // Published as the client starts the retry: getToken throws synchronously, so it stops within this turn.
  const queued = new Promise((resolve, reject) => client.on('state', (state) => { if (state === 'reconnecting') room.publish('never sent').then(resolve, reject) }))
  t.same(await closed, { state: 'closed', ...refusal(UNAUTHORIZED_REASONS.expired) })
  await t.rejects(guard(queued, 'the publish made as the client started its retry'), {
    code: 'UNAUTHORIZED',
    message: `getToken failed: token service down, after the server refused the credentials (close code 4001: ${UNAUTHORIZED_REASONS.expired}).`,
    close: refusal(UNAUTHORIZED_REASONS.expired)
  })
  t.same(causes, ['connect', 'refresh', 'unauthorized'])
  await t.rejects(client.ping(), { code: 'CLOSED', close: refusal(UNAUTHORIZED_REASONS.expired) })
})

t.test('getToken failing on the first connection: UNAUTHORIZED with what it said, no upgrade', async (t) => {
  const { wsUrl, upgrades } = await startTokenApp(t)
  const cases: Array<[() => string | Promise<string>, string]> = [
    [() => { throw new Error('no session') }, 'getToken failed: no session'],
    [async () => await Promise.reject(new Error('401 from /token')), 'getToken failed: 401 from /token'],
    [() => undefined as unknown as string, 'getToken failed: getToken must return a non-empty string, got undefined'],
    [() => '', 'getToken failed: getToken must return a non-empty string, got an empty string']
  ]
  for (const [step, reason] of cases) {
    const { getToken, causes } = scripted(step)
    await t.rejects(connect(wsUrl, { WebSocket, getToken }), { code: 'UNAUTHORIZED', message: `${reason}.`, close: refusal(reason, true) })
    t.same(causes, ['connect'], 'asked once: nothing to retry')
  }
  t.same(upgrades, [])
})

t.test('a getToken that never answers: connect() rejects with TIMEOUT within requestTimeoutMs, no upgrade', async (t) => {
  const { wsUrl, upgrades } = await startTokenApp(t)
  const started = Date.now()
  await t.rejects(connect(wsUrl, { WebSocket, getToken: async () => await new Promise<string>(() => {}), requestTimeoutMs: 150 }), {
    code: 'TIMEOUT',
    message: 'getToken did not return a token within 150 ms.',
    close: { code: 1006, reason: 'getToken did not return a token within 150 ms', byClient: true }
  })
  // A timer may fire a few ms early (libuv's cached loop time).
  t.ok(Date.now() - started >= 150 - 5, 'not before requestTimeoutMs')
  t.same(upgrades, [])
})

t.test('getToken failing on an ordinary reconnect counts as a failed attempt, not a refusal', async (t) => {
  const { wsUrl, app } = await startTokenApp(t)
  const { getToken, causes } = scripted(() => token(ADA.id), () => { throw new Error('offline') }, () => token(ADA.id))
  const client = await connect(wsUrl, { WebSocket, getToken, reconnect: { initialDelayMs: 1, maxDelayMs: 5 } })
  t.teardown(() => client.close())
  const changes = record(client)
  const open = nextState(client, 'open')
  for (const socket of app.websocketServer.clients) socket.close(1012, 'Room state was reset: reconnect and rejoin')
  await open
  t.match(changes, [
    { state: 'reconnecting', code: 1012, attempt: 1 },
    { state: 'reconnecting', code: 4001, reason: 'getToken failed: offline', byClient: true, attempt: 2 },
    { state: 'open' }
  ])
  t.same(causes, ['connect', 'reconnect', 'reconnect'])
})

t.test('without getToken, 4001 is final at once: UNAUTHORIZED with the server\'s reason', async (t) => {
  const { wsUrl, upgrades } = await startTokenApp(t, { authTimeoutMs: 100 })
  await t.rejects(connect(wsUrl, { WebSocket }), {
    code: 'UNAUTHORIZED',
    message: `The server refused the credentials (close code 4001: ${UNAUTHORIZED_REASONS.timeout}).`,
    close: refusal(UNAUTHORIZED_REASONS.timeout)
  })
  t.equal(upgrades.length, 1)
})

t.test('without getToken, a token that expires (sent as Bearer) closes the client for good at expiry', async (t) => {
  const { wsUrl, upgrades } = await startTokenApp(t)
  const bearer = token(ADA.id, Date.now() + LIFETIME_MS)
  // What a Node app could do instead of getToken: ws sends headers, browsers cannot.
  const WithBearer = class extends WebSocket {
    constructor (url: string) { super(url, { headers: { authorization: `Bearer ${bearer}` } }) }
  } as unknown as WebSocketConstructor
  const client = await connect(wsUrl, { WebSocket: WithBearer, reconnect: { initialDelayMs: 1, maxDelayMs: 1 } })
  const changes = record(client)
  t.same(await nextState(client, 'closed'), { state: 'closed', ...refusal(UNAUTHORIZED_REASONS.expired) })
  t.same(changes.map((c) => c.state), ['closed'])
  t.equal(upgrades.length, 1)
})

t.test('4003 stays final with getToken: closed with the server\'s reason, getToken not asked again', async (t) => {
  const { wsUrl, app, upgrades } = await startTokenApp(t)
  const { getToken, causes } = scripted(() => token(ADA.id))
  const client: RoomsClient = await connect(wsUrl, { WebSocket, getToken, reconnect: { initialDelayMs: 1, maxDelayMs: 1 } })
  const changes = record(client)
  const closed = nextState(client, 'closed')
  t.equal(await app.rooms.disconnect(client.connectionId, 'Banned for spam.'), true)
  t.same(await closed, { state: 'closed', code: 4003, reason: 'Banned for spam.', byClient: false })
  t.same(changes.map((c) => c.state), ['closed'])
  await t.rejects(client.join('lobby'), { code: 'CLOSED', close: { code: 4003, reason: 'Banned for spam.' } })
  t.same(causes, ['connect'])
  t.equal(upgrades.length, 1)
})

t.test('reconnect: false with getToken: a 4001 after open closes with UNAUTHORIZED, no retry', async (t) => {
  const { wsUrl, upgrades } = await startTokenApp(t)
  const { getToken, causes } = scripted(() => token(ADA.id, Date.now() + LIFETIME_MS), () => { throw new Error('token service down') })
  const client = await connect(wsUrl, { WebSocket, getToken, reconnect: false })
  t.same(await nextState(client, 'closed'), { state: 'closed', ...refusal(UNAUTHORIZED_REASONS.expired) })
  t.same(causes, ['connect', 'refresh'])
  t.equal(upgrades.length, 1)
})

t.test('after the retry that followed a 4001 fails for another reason (a 503), getToken failing counts as a failed attempt, not a refusal', async (t) => {
  const g = gate()
  const { wsUrl, upgrades } = await startTokenApp(t, {}, g.setup)
  const { getToken, causes } = scripted(
    () => token(ADA.id, Date.now() + LIFETIME_MS),
    () => { throw new Error('token service down') },
    () => token(ADA.id),
    () => { throw new Error('offline') },
    () => token(ADA.id)
  )
  const client = await connect(wsUrl, { WebSocket, getToken, reconnect: { initialDelayMs: 1, maxDelayMs: 5 } })
  t.teardown(() => client.close())
  const room = await client.join('lobby')
  t.equal(await room.publish('before'), 1)
  // The retry with a fresh token after the 4001 at expiry meets a server that is restarting (503);
  // the gate opens once the client has reported that failure.
  g.closed = true
  client.on('state', (_state, change) => { if (change.state === 'reconnecting' && change.code === 1006) g.closed = false })
  const changes = record(client)
  const rejoined = nextEvent((h) => room.on('joined', h), undefined, { room, what: 'the rejoin' })
  // Closed for good instead is the failure this guards against: it must fail here, not wait for a timeout.
  const outcome = await Promise.race([nextState(client, 'open'), nextState(client, 'closed')])
  if (outcome.state !== 'open') {
    t.fail(`closed instead of reconnecting: ${JSON.stringify(client.lastClose)}`)
    return
  }
  t.same(await rejoined, { recovered: true })
  t.equal(await room.publish('after'), 2)
  t.match(changes, [
    { state: 'reconnecting', ...refusal(UNAUTHORIZED_REASONS.expired), attempt: 1, delayMs: 0 },
    { state: 'reconnecting', code: 1006, attempt: 2 },
    { state: 'reconnecting', code: 4001, reason: 'getToken failed: offline', byClient: true, attempt: 3 },
    { state: 'open' }
  ])
  t.same(causes, ['connect', 'refresh', 'unauthorized', 'reconnect', 'reconnect'])
  t.equal(upgrades.length, 3)
})

t.test('close() from a state handler on the reconnecting after a 4001: getToken is not asked again, no new socket', async (t) => {
  const started = await startTokenApp(t)
  const { getToken, causes } = scripted(
    () => token(ADA.id, Date.now() + LIFETIME_MS),
    () => { throw new Error('token service down') },
    () => token(ADA.id)
  )
  const client = await connect(started.wsUrl, { WebSocket, getToken })
  t.teardown(() => client.close())
  const changes = record(client)
  client.on('state', (state) => { if (state === 'reconnecting') client.close() })
  await nextState(client, 'closed')
  t.match(changes, [
    { state: 'reconnecting', ...refusal(UNAUTHORIZED_REASONS.expired), attempt: 1 },
    { state: 'closed' }
  ])
  t.same(causes, ['connect', 'refresh'], 'no getToken for a retry')
  await probe(started)
  t.equal(started.upgrades.length, 2, 'the client\'s first upgrade and the probe\'s')
  t.equal(client.state, 'closed')
})
