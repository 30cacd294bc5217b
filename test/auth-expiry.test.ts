import t from 'tap'
import { once } from 'node:events'
import { UNAUTHORIZED_REASONS, type TokenIdentity } from '../src/index.js'
import { serverClosed, serverSocketOf, serverSocketsClosed, startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'

const ADA = { id: 'u-ada', name: 'ada' }

/** verifyToken where each token names its user and expiry: `user:expiresAt` (`-` for none). */
function verifyToken (token: string): TokenIdentity {
  const [id, expires] = token.split(':')
  if (id === undefined || expires === undefined) throw new Error('malformed token')
  return { user: { id, name: id.slice(2) }, expiresAt: expires === '-' ? undefined : Number(expires) }
}
const token = (id: string, expiresAt?: number): string => `${id}:${expiresAt ?? '-'}`

/** A check the test holds: `began` once it started, answered once `release` is called. */
function deferred (): { began: Promise<void>, checking: () => void, released: Promise<void>, release: () => void } {
  let checking = (): void => {}
  let release = (): void => {}
  const began = new Promise<void>((resolve) => { checking = resolve })
  const released = new Promise<void>((resolve) => { release = resolve })
  return { began, checking, released, release }
}

/** Wait, by the server's heartbeat pings (events, not sleeps), until the clock passes `time` or the socket closes. */
async function pingsUntil (s: TestSocket, time: number): Promise<void> {
  while (Date.now() <= time && s.closedWith === undefined) await Promise.race([once(s.ws, 'ping'), s.closed])
}

t.test('at expiresAt without a refresh: UNAUTHORIZED and close 4001 "token expired", not before', async (t) => {
  const { wsUrl, app } = await startApp(t, { verifyToken })
  const expiresAt = Date.now() + 500
  const s = await TestSocket.connect(wsUrl)
  const onServer = serverSocketOf(app, s)
  const welcome = await s.authenticate(token(ADA.id, expiresAt))
  t.equal(welcome.expiresAt, expiresAt)
  await s.join('lobby')
  const closed = await s.closed
  t.ok(Date.now() >= expiresAt, 'closed at expiresAt, not before')
  t.same(closed, { code: 4001, reason: UNAUTHORIZED_REASONS.expired })
  t.match(closed.reason, /token expired/i)
  t.match(s.frames.at(-1), { type: 'error', code: 'UNAUTHORIZED', message: UNAUTHORIZED_REASONS.expired })
  await serverClosed(onServer, 'the server to see the close')
  t.equal(app.rooms.connections, 0)
  t.equal(await app.rooms.get('lobby'), null, 'it left its rooms')
})

t.test('a refresh answers authenticated with its id and the new expiresAt; same connection, no new welcome, closed at the new time', async (t) => {
  const { wsUrl, app } = await startApp(t, { verifyToken })
  const first = Date.now() + 1000
  const s = await TestSocket.connect(wsUrl)
  const welcome = await s.authenticate(token(ADA.id, first))
  await s.join('lobby')
  const second = first + 150
  t.same(await s.request({ type: 'auth', token: token(ADA.id, second) }), { type: 'authenticated', id: 2, expiresAt: second })
  s.send({ type: 'auth', token: token(ADA.id, second) })
  t.same(await s.next((f) => f.type === 'authenticated'), { type: 'authenticated', expiresAt: second }, 'without an id, no id')
  t.equal(await app.rooms.send(welcome.connectionId, 'still you'), true, 'the same connection id')
  t.same((await s.next((f) => f.type === 'direct')).data, 'still you')
  const closed = await s.closed
  t.ok(Date.now() >= second, 'lived past the first expiry')
  t.same(closed, { code: 4001, reason: UNAUTHORIZED_REASONS.expired })
  t.equal(s.frames.filter((f) => f.type === 'welcome').length, 1)
})

t.test('a refresh without expiresAt lifts the expiry', async (t) => {
  const { wsUrl } = await startApp(t, { verifyToken, heartbeatMs: 50 })
  const expiresAt = Date.now() + 500
  const s = await TestSocket.connect(wsUrl)
  t.teardown(() => s.close())
  await s.authenticate(token(ADA.id, expiresAt))
  t.same(await s.request({ type: 'auth', token: token(ADA.id) }), { type: 'authenticated', id: 1 })
  await pingsUntil(s, expiresAt + 50)
  await s.sync()
  t.equal(s.closedWith, undefined, 'still open past the old expiry')
})

t.test('a refresh sent before expiresAt and still being checked at expiresAt is judged on its token, not cut as expired', async (t) => {
  /** One slow check at a time: `checking` says it began, `release` lets it answer. */
  let slow = deferred()
  const slowly = async (given: string): Promise<TokenIdentity> => {
    if (!given.startsWith('slow/')) return verifyToken(given)
    slow.checking()
    await slow.released
    return verifyToken(given.slice(5))
  }
  const { wsUrl } = await startApp(t, { verifyToken: slowly, heartbeatMs: 50 })
  const s = await TestSocket.connect(wsUrl)
  t.teardown(() => s.close())
  const expiresAt = Date.now() + 1000
  await s.authenticate(token(ADA.id, expiresAt))
  const refreshed = s.request({ type: 'auth', token: `slow/${token(ADA.id)}` })
  await slow.began
  await pingsUntil(s, expiresAt + 50)
  t.equal(s.closedWith, undefined, 'still open past expiresAt while its refresh is being checked')
  slow.release()
  t.same(await refreshed, { type: 'authenticated', id: 1 })
  await pingsUntil(s, Date.now() + 100)
  await s.sync()
  t.equal(s.closedWith, undefined, 'the refreshed token does not expire')

  // One that fails is then refused as any bad refresh.
  slow = deferred()
  const other = await TestSocket.connect(wsUrl)
  const otherExpiry = Date.now() + 1000
  await other.authenticate(token(ADA.id, otherExpiry))
  other.send({ type: 'auth', token: 'slow/not a token' })
  await slow.began
  await pingsUntil(other, otherExpiry + 50)
  t.equal(other.closedWith, undefined, 'still open past expiresAt while its refresh is being checked')
  slow.release()
  t.same(await other.closed, { code: 4001, reason: UNAUTHORIZED_REASONS.badToken })
})

t.test('an expiresAt beyond what setTimeout can hold does not close the connection at once', async (t) => {
  const { wsUrl } = await startApp(t, { verifyToken, heartbeatMs: 50 })
  const s = await TestSocket.connect(wsUrl)
  t.teardown(() => s.close())
  const welcome = await s.authenticate(token(ADA.id, Date.now() + 40 * 24 * 3600 * 1000))
  await pingsUntil(s, Date.now() + 60)
  await s.sync()
  t.equal(s.closedWith, undefined)
  t.ok(welcome.expiresAt !== undefined)
})

t.test('a refresh for another user, a bad refresh token, or an expired one close 4001', async (t) => {
  const { wsUrl, app } = await startApp(t, { verifyToken })
  const cases: Array<[string, string, string]> = [
    ['another user', token('u-bob', Date.now() + 60_000), UNAUTHORIZED_REASONS.otherUser],
    ['a bad token', 'garbage', UNAUTHORIZED_REASONS.badToken],
    ['an expired token', token(ADA.id, Date.now() - 1), UNAUTHORIZED_REASONS.expired]
  ]
  for (const [what, refresh, reason] of cases) {
    const s = await TestSocket.connect(wsUrl)
    await s.authenticate(token(ADA.id, Date.now() + 60_000))
    await s.join('lobby')
    t.match(await s.request({ type: 'auth', token: refresh }), { type: 'error', code: 'UNAUTHORIZED', id: 2, message: reason }, what)
    t.same(await s.closed, { code: 4001, reason }, what)
  }
  await serverSocketsClosed(app, 'the server to see the closes')
  t.equal(app.rooms.connections, 0)
  t.equal(await app.rooms.get('lobby'), null, 'each left its rooms')
})

t.test('frames sent after a refused refresh are not handled', async (t) => {
  const { wsUrl, app } = await startApp(t, { verifyToken: async (t) => { await new Promise(setImmediate); return verifyToken(t) } })
  const s = await TestSocket.connect(wsUrl)
  await s.authenticate(token(ADA.id))
  s.send({ type: 'auth', token: token('u-bob'), id: 'r' })
  s.send({ type: 'join', room: 'after', id: 'j' })
  await s.closed
  t.same(s.frames.slice(1).map((f) => [f.type, f.id]), [['error', 'r']])
  t.equal(await app.rooms.get('after'), null)
})

t.test('a refresh whose verifyToken never answers is refused after authTimeoutMs; the connection does not freeze', async (t) => {
  const { wsUrl, app } = await startApp(t, {
    authTimeoutMs: 200,
    verifyToken: async (token) => token === 'hang' ? await new Promise<never>(() => {}) : verifyToken(token)
  })
  const s = await TestSocket.connect(wsUrl)
  const onServer = serverSocketOf(app, s)
  await s.authenticate(token(ADA.id))
  await s.join('lobby')
  s.send({ type: 'auth', token: 'hang', id: 'r1' })
  const closed = await s.closed
  t.same(closed, { code: 4001, reason: UNAUTHORIZED_REASONS.unanswered })
  t.match(s.frames.at(-1), { type: 'error', id: 'r1', code: 'UNAUTHORIZED', message: UNAUTHORIZED_REASONS.unanswered })
  await serverClosed(onServer, 'the server to see the close')
  t.equal(app.rooms.connections, 0)
  t.equal(await app.rooms.get('lobby'), null, 'it left its rooms')
})
