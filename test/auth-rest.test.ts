import t from 'tap'
import { forbidden, type JoinContext, type RoomsOptions } from '../src/index.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'

const ADA = { id: 'u-ada', name: 'ada', email: 'ada@example.com' }
const BOB = { id: 'u-bob', name: 'bob' }
const sessions: Record<string, typeof ADA | typeof BOB> = { 'session=ada': ADA, 'session=bob': BOB }
const tokens: Record<string, typeof ADA | typeof BOB> = { 'tok-ada': ADA, 'tok-bob': BOB }

/** Only ada may see `secret`; `vip` refuses with its own sentence. */
const onJoin: RoomsOptions['onJoin'] = ({ user, room }) => {
  if (room === 'vip') throw forbidden('The VIP room is for VIPs.')
  return room !== 'secret' || user.id === ADA.id
}

interface Reply { status: number, body: any, headers: Headers }

async function request (url: string, headers: Record<string, string> = {}, init: RequestInit = {}): Promise<Reply> {
  const res = await fetch(url, { ...init, headers: { ...headers, ...(init.headers as Record<string, string> | undefined) } })
  const text = await res.text()
  return { status: res.status, body: text === '' ? undefined : JSON.parse(text), headers: res.headers }
}

const UNAUTHORIZED = { statusCode: 401, code: 'UNAUTHORIZED', error: 'Unauthorized', message: /Authorization: Bearer/ }

/** Every REST route, with the rooms `open` and `secret` holding a member. */
function routes (url: string): string[] {
  return [`${url}/rooms`, `${url}/rooms/open`, `${url}/rooms/open/messages`, `${url}/rooms/secret`, `${url}/rooms/secret/messages`]
}

t.test('authenticate: REST without the cookie is 401 on every route; with it, rooms onJoin refuses are 403', async (t) => {
  const seen: Array<Pick<JoinContext, 'connectionId' | 'user' | 'room'>> = []
  const { url, wsUrl } = await startApp(t, {
    authenticate: (request) => sessions[String(request.headers.cookie)],
    onJoin: (ctx) => {
      if (ctx.connectionId === '') seen.push({ connectionId: ctx.connectionId, user: ctx.user, room: ctx.room })
      return onJoin(ctx)
    }
  })
  const ada = await TestSocket.open(wsUrl, { headers: { cookie: 'session=ada' } })
  t.teardown(() => ada.close())
  await ada.join('open')
  await ada.join('secret')
  for (const route of routes(url)) {
    const anonymous = await request(route)
    t.equal(anonymous.status, 401, route)
    t.match(anonymous.body, UNAUTHORIZED)
    t.equal(anonymous.headers.get('www-authenticate'), null, 'no Bearer challenge without verifyToken')
    t.equal((await request(route, { cookie: 'session=nobody' })).status, 401, `${route} with an unknown cookie`)
    t.equal((await request(route, { cookie: 'session=ada' })).status, 200, `${route} as ada`)
  }
  t.equal((await request(`${url}/rooms/open`, { cookie: 'session=bob' })).status, 200)
  const refused = await request(`${url}/rooms/secret`, { cookie: 'session=bob' })
  t.same(refused.body, { statusCode: 403, code: 'FORBIDDEN', error: 'Forbidden', message: 'You may not see room "secret".' })
  t.equal((await request(`${url}/rooms/secret/messages`, { cookie: 'session=bob' })).status, 403)
  t.match((await request(`${url}/rooms/vip`, { cookie: 'session=ada' })).body, { statusCode: 403, code: 'FORBIDDEN', message: 'The VIP room is for VIPs.' })
  t.match(seen, [{ connectionId: '', user: ADA, room: 'open' }], 'onJoin gets the full user and an empty connectionId')
})

t.test('verifyToken: REST needs Authorization: Bearer with a good token; 401 with a Bearer challenge otherwise', async (t) => {
  const { url, wsUrl } = await startApp(t, {
    verifyToken: (token) => {
      if (token === 'tok-old') return { user: ADA, expiresAt: Date.now() - 1000 }
      const user = tokens[token]
      if (user === undefined) throw new Error('unknown token')
      return { user }
    },
    onJoin
  })
  const ada = await TestSocket.connect(wsUrl)
  t.teardown(() => ada.close())
  await ada.authenticate('tok-ada')
  await ada.join('open')
  await ada.join('secret')
  for (const route of routes(url)) {
    for (const headers of [{}, { authorization: 'Bearer tok-nobody' }, { authorization: 'Bearer tok-old' }, { authorization: 'Basic dG9rLWFkYQ==' }, { authorization: 'Bearer ' }] as Array<Record<string, string>>) {
      const refused = await request(route, headers)
      t.equal(refused.status, 401, `${route} ${JSON.stringify(headers)}`)
      t.match(refused.body, UNAUTHORIZED)
      t.equal(refused.headers.get('www-authenticate'), 'Bearer')
    }
    t.equal((await request(route, { authorization: 'Bearer tok-ada' })).status, 200, `${route} as ada`)
    t.equal((await request(route, { authorization: 'bearer tok-ada' })).status, 200, `${route}: the scheme is case-insensitive`)
  }
  t.equal((await request(`${url}/rooms/secret`, { authorization: 'Bearer tok-bob' })).status, 403)
  t.equal((await request(`${url}/rooms/secret/messages`, { authorization: 'Bearer tok-bob' })).status, 403)
})

t.test('without credentials the answer is 401 before any validation: nothing about the request leaks', async (t) => {
  const { url } = await startApp(t, { verifyToken: () => { throw new Error('no') } })
  for (const route of [`${url}/rooms/${encodeURIComponent('bad name!')}`, `${url}/rooms?limit=0`, `${url}/rooms/x/messages?after=-1`, `${url}/rooms/nobody-here`]) {
    t.equal((await request(route)).status, 401, route)
  }
})

t.test('publicRest: true opens the reads; the REST publish still needs credentials, onJoin and its guard', async (t) => {
  let guarded = 0
  const { url, wsUrl } = await startApp(t, {
    authenticate: (request) => sessions[String(request.headers.cookie)],
    onJoin,
    publicRest: true,
    // A plain (not async) guard that lets requests through: it used to hang them.
    restPublish: (request, reply) => {
      guarded++
      if (request.headers['x-ops'] !== 'yes') void reply.code(403).send({ statusCode: 403, code: 'FORBIDDEN', error: 'Forbidden', message: 'Ops only.' })
    }
  })
  const ada = await TestSocket.open(wsUrl, { headers: { cookie: 'session=ada' } })
  t.teardown(() => ada.close())
  await ada.join('open')
  await ada.join('secret')
  for (const route of routes(url)) t.equal((await request(route)).status, 200, `${route} is public`)
  const post = async (room: string, headers: Record<string, string>): Promise<Reply> =>
    await request(`${url}/rooms/${room}/messages`, { 'content-type': 'application/json', ...headers }, { method: 'POST', body: '{"data":"hi"}' })
  t.equal((await post('open', {})).status, 401, 'no credentials')
  t.equal((await post('secret', { cookie: 'session=bob' })).status, 403, 'onJoin refuses bob')
  t.equal(guarded, 0, 'the guard never ran for those')
  t.equal((await post('open', { cookie: 'session=bob' })).status, 403, 'the guard refuses')
  t.equal((await post('open', { cookie: 'session=bob', 'x-ops': 'yes' })).status, 201)
  t.equal(guarded, 2)
})

t.test('without any auth option REST stays open to all', async (t) => {
  const { url } = await startApp(t, { onJoin: () => false })
  for (const route of [`${url}/rooms`, `${url}/rooms/any/messages`]) t.not((await request(route)).status, 401, route)
})

t.test('authenticate returning a malformed user over REST is a 500, not a way in', async (t) => {
  const { url } = await startApp(t, { authenticate: () => ({ name: 'no id' }) as never })
  t.equal((await request(`${url}/rooms`)).status, 500)
  const encodable = await startApp(t, { authenticate: () => ({ id: 'u-big', name: 'big', rowId: 10n }) })
  t.equal((await request(`${encodable.url}/rooms`)).status, 500, 'so is a user JSON cannot encode, as on the socket')
})
