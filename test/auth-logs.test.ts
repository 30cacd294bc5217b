import t from 'tap'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { logSink } from './helpers/log.js'

const GOOD = 'tok-good-2b7e151628aed2a6'
const FRESH = 'tok-fresh-abf7158809cf4f3c'
const BAD = 'tok-bad-762e7160f38b4da5'
const ADA = { id: 'u-ada', name: 'ada' }

t.test('the connection lifecycle is logged at info, and no log line or upgrade URL carries a token', async (t) => {
  const log = logSink()
  const { wsUrl, url } = await startApp(t, {
    verifyToken: (token) => {
      if (token === GOOD || token === FRESH) return { user: ADA, expiresAt: Date.now() + 60_000 }
      throw new Error(`unknown token ${token}`)
    }
  }, undefined, { logger: { level: 'info', stream: log.stream } })
  const find = (msg: string): Array<Record<string, any>> => log.lines.filter((l) => l.msg === msg)

  const ada = await TestSocket.connect(wsUrl)
  const { connectionId } = await ada.authenticate(GOOD)
  t.equal(ada.ws.url, wsUrl, 'the upgrade URL is the bare path: the token travels in band')
  t.match(await ada.request({ type: 'auth', token: FRESH }), { type: 'authenticated' })
  const bearer = await TestSocket.open(wsUrl, { headers: { authorization: `Bearer ${GOOD}` } })
  const bad = await TestSocket.connect(wsUrl)
  bad.send({ type: 'auth', token: BAD })
  await bad.closed
  t.equal((await TestSocket.refused(wsUrl, { headers: { authorization: `Bearer ${BAD}` } })).status, 401)
  t.equal((await fetch(`${url}/rooms`, { headers: { authorization: `Bearer ${GOOD}` } })).status, 200)
  t.equal((await fetch(`${url}/rooms`, { headers: { authorization: `Bearer ${BAD}` } })).status, 401)
  await ada.close()
  await bearer.close()
  await log.logged(() => find('fastify-rooms: disconnected').length === 3, 'three disconnects are logged')

  t.match(find('fastify-rooms: connected'), [
    { level: 30, connectionId, userId: ADA.id, expiresAt: Number },
    { level: 30, userId: ADA.id }
  ])
  t.match(find('fastify-rooms: token refreshed'), [{ level: 30, connectionId, userId: ADA.id, expiresAt: Number }])
  t.match(find('fastify-rooms: authentication failed'), [{ level: 30, connectionId: String, reason: /token was not accepted/ }])
  const closes = find('fastify-rooms: disconnected')
  t.match(closes.find((l) => l.connectionId === connectionId), { level: 30, userId: ADA.id, code: 1005, reason: '', durationMs: Number })
  t.ok(closes.every((l) => l.durationMs >= 0))
  t.match(closes.find((l) => l.userId === undefined), { code: 4001, reason: /token was not accepted/ }, 'the refused one')
  const urls = log.lines.filter((l) => l.req !== undefined).map((l) => l.req.url as string)
  t.ok(urls.length >= 4, 'requests are logged, with their URLs')
  for (const line of log.raw) {
    for (const token of [GOOD, FRESH, BAD]) t.notOk(line.includes(token), `no token in ${line.slice(0, 120)}`)
  }
  t.notOk(log.raw.some((l) => l.includes('tok-')), 'not even part of one')
})
