import t from 'tap'
import { connect } from 'node:net'
import { once } from 'node:events'
import { forbidden, RoomsError } from '../src/index.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'

t.test('authenticate: its user is the identity; nothing or a throw is 401 before the upgrade', async (t) => {
  const { wsUrl } = await startApp(t, {
    authenticate: async (request) => {
      const token = request.headers.authorization
      if (token === 'Bearer boom') throw new Error('token store down')
      return token === 'Bearer good' ? { id: 'u-1', name: 'Ada', plan: 'pro' } : undefined
    }
  })
  const a = await TestSocket.open(wsUrl, { headers: { authorization: 'Bearer good' } })
  t.teardown(() => a.close())
  t.same(a.welcome.user, { id: 'u-1', name: 'Ada', plan: 'pro' })
  const attempts: Array<Record<string, string>> = [{}, { authorization: 'Bearer bad' }, { authorization: 'Bearer boom' }]
  for (const headers of attempts) {
    const refused = await TestSocket.refused(wsUrl, { headers })
    t.equal(refused.status, 401)
    t.match(refused.body, { statusCode: 401, code: 'UNAUTHORIZED', error: 'Unauthorized' })
  }
})

t.test('authenticate returning a malformed user is a server error, not a connection', async (t) => {
  const { wsUrl } = await startApp(t, { authenticate: () => ({ name: 'no id' }) as never })
  t.same(await TestSocket.refused(wsUrl), { status: 500, body: { statusCode: 500, code: 'INTERNAL', error: 'Internal Server Error', message: 'The server failed to handle this request; it has been logged. Try again later.' } }, 'the details stay in the log')
  const encodable = await startApp(t, { authenticate: () => ({ id: 'u-big', name: 'big', rowId: 10n }) })
  const refused = await TestSocket.refused(encodable.wsUrl)
  t.equal(refused.status, 500, 'so is a user JSON cannot encode: refused before the upgrade, not a socket that dies')
  t.match(refused.body, { statusCode: 500, code: 'INTERNAL' })
})

t.test('anonymous names: 1-32 printable characters, else 400', async (t) => {
  const { wsUrl } = await startApp(t)
  const ok = await TestSocket.open(`${wsUrl}?name=${encodeURIComponent('Zoë 🦊')}`)
  t.teardown(() => ok.close())
  t.equal(ok.welcome.user.name, 'Zoë 🦊')
  for (const name of ['x'.repeat(33), 'bell\u0007', 'new\nline', '   ']) {
    const refused = await TestSocket.refused(`${wsUrl}?name=${encodeURIComponent(name)}`)
    t.equal(refused.status, 400, JSON.stringify(name))
    t.equal(refused.body.code, 'INVALID_NAME')
  }
})

t.test('onJoin: false or forbidden() refuse with FORBIDDEN; the room is untouched', async (t) => {
  const seen: string[] = []
  const { wsUrl, app } = await startApp(t, {
    onJoin: async ({ room, user, connectionId, request }) => {
      seen.push(`${room}:${user.name}:${typeof connectionId}:${typeof request.headers}`)
      if (room === 'secret') return false
      if (room.startsWith('vip')) throw forbidden('VIP rooms need a VIP pass.')
      return true
    }
  })
  const a = await TestSocket.open(`${wsUrl}?name=ada`)
  t.teardown(() => a.close())
  t.match(await a.join('secret'), { type: 'error', code: 'FORBIDDEN', room: 'secret', message: /may not join/ })
  t.match(await a.join('vip-lounge'), { type: 'error', code: 'FORBIDDEN', room: 'vip-lounge', message: 'VIP rooms need a VIP pass.' })
  t.equal(await app.rooms.get('secret'), null)
  t.equal((await a.join('open')).type, 'joined')
  t.same(seen, ['secret:ada:string:object', 'vip-lounge:ada:string:object', 'open:ada:string:object'])
})

t.test('onPublish: refuse, transform, or pass through', async (t) => {
  const { wsUrl, app } = await startApp(t, {
    onPublish: ({ data, user }) => {
      const text = (data as { text?: string }).text ?? ''
      if (text.includes('spam')) return false
      if (text.includes('shout')) throw forbidden('No shouting here.')
      if (text.includes('darn')) return { data: { text: text.replaceAll('darn', '****'), by: user.name } }
      return undefined
    }
  })
  const a = await TestSocket.open(`${wsUrl}?name=ada`)
  t.teardown(() => a.close())
  await a.join('r')
  t.match(await a.request({ type: 'publish', room: 'r', data: { text: 'buy spam' } }), { type: 'error', code: 'FORBIDDEN', room: 'r' })
  t.match(await a.request({ type: 'publish', room: 'r', data: { text: 'shout' } }), { type: 'error', code: 'FORBIDDEN', message: 'No shouting here.' })
  t.equal((await app.rooms.get('r'))?.offset, 0, 'refused publishes got no offset')
  t.same(await a.request({ type: 'publish', room: 'r', data: { text: 'oh darn' } }), { type: 'ack', id: 4, room: 'r', offset: 1 })
  t.same((await a.next((f) => f.type === 'message')).data, { text: 'oh ****', by: 'ada' }, 'members get the transformed data')
  await a.request({ type: 'publish', room: 'r', data: { text: 'plain' } })
  t.same((await a.next((f) => f.type === 'message')).data, { text: 'plain' })
})

t.test('a hook that throws something else gives INTERNAL, logs the details, and harms nobody', async (t) => {
  const logged: Array<Record<string, unknown>> = []
  const stream = { write: (line: string) => { logged.push(JSON.parse(line)) } }
  const { wsUrl } = await startApp(t, {
    onJoin: ({ room }) => { if (room === 'bad') throw new Error('database password is hunter2') },
    onPublish: async ({ data }) => { if (data === 'boom') throw new TypeError('secret detail') }
  }, undefined, { logger: { level: 'error', stream } })
  const a = await TestSocket.open(wsUrl)
  const b = await TestSocket.open(wsUrl)
  t.teardown(() => Promise.all([a.close(), b.close()]))
  const error = await a.join('bad')
  t.match(error, { type: 'error', code: 'INTERNAL', room: 'bad', id: 1 })
  t.notMatch(error.message, /hunter2/, 'details stay on the server')
  await a.join('ok')
  await b.join('ok')
  t.match(await a.request({ type: 'publish', room: 'ok', data: 'boom' }), { code: 'INTERNAL' })
  t.equal((await b.request({ type: 'publish', room: 'ok', data: 'fine' })).offset, 1, 'others keep going')
  t.equal((await a.request({ type: 'publish', room: 'ok', data: 'fine too' })).offset, 2, 'and so does the one that hit the error')
  const entries = logged.filter((l) => l.msg === 'fastify-rooms: a hook or the adapter failed')
  t.equal(entries.length, 2)
  t.match(entries[0], { connectionId: a.welcome.connectionId, room: 'bad', err: { message: 'database password is hunter2' } })
})

t.test('a hook\'s RoomsError keeps its code (UNAVAILABLE: a store outage met in the hook), but UNAUTHORIZED, which only a 4001 close may follow, fails as any other throw: INTERNAL, logged, the connection open; the same over REST', async (t) => {
  const logged: Array<Record<string, unknown>> = []
  const stream = { write: (line: string) => { logged.push(JSON.parse(line)) } }
  const { url, wsUrl } = await startApp(t, {
    // With credentials configured, REST asks onJoin too.
    authenticate: () => ({ id: 'u-1', name: 'Ada' }),
    // The UNAVAILABLE names another room, as one from a call about it would (app.rooms.get('lobby')): the error frame names the join's.
    onJoin: ({ room }) => { if (room !== 'ok') throw new RoomsError(room === 'vip' ? 'UNAUTHORIZED' : 'UNAVAILABLE', 'Not now.', room === 'vip' ? undefined : 'lobby') },
    onPublish: ({ data }) => { if (data === 'boom') throw new RoomsError('UNAUTHORIZED', 'Not you.') }
  }, undefined, { logger: { level: 'error', stream } })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  t.match(await a.join('vip'), { type: 'error', code: 'INTERNAL', room: 'vip', id: 1 })
  t.match(await a.join('busy'), { type: 'error', code: 'UNAVAILABLE', room: 'busy', message: 'Not now.' }, 'UNAVAILABLE tells the client to retry, as from the store itself')
  await a.join('ok')
  t.match(await a.request({ type: 'publish', room: 'ok', data: 'boom' }), { type: 'error', code: 'INTERNAL', room: 'ok' })
  t.match(await a.request({ type: 'publish', room: 'ok', data: 'fine' }), { type: 'ack', offset: 1 }, 'the connection is open and goes on')
  for (const [room, status, code] of [['vip', 500, 'INTERNAL'], ['busy', 503, 'UNAVAILABLE']] as const) {
    const response = await fetch(`${url}/rooms/${room}/messages`)
    t.equal(response.status, status, `REST about ${room}`)
    t.match(await response.json(), { statusCode: status, code })
  }
  const entries = logged.filter((l) => l.msg === 'fastify-rooms: a hook or the adapter failed')
  t.equal(entries.length, 2, 'each UNAUTHORIZED on the socket is logged as a failure')
  t.match(entries[0], { room: 'vip', err: { code: 'UNAUTHORIZED' } })
})

t.test('onPublish: a member removed from the room while its hook runs gets NOT_IN_ROOM, and nothing is published', async (t) => {
  let hookStarted!: () => void
  const started = new Promise<void>((resolve) => { hookStarted = resolve })
  let release!: () => void
  const gate = new Promise<void>((resolve) => { release = resolve })
  const { wsUrl, app } = await startApp(t, {
    onPublish: async ({ data }) => {
      if (data !== 'gated') return
      hookStarted()
      await gate
    }
  })
  const a = await TestSocket.open(`${wsUrl}?name=ada`)
  const b = await TestSocket.open(`${wsUrl}?name=bob`)
  t.teardown(() => Promise.all([a.close(), b.close()]))
  await a.join('r')
  await b.join('r')
  a.send({ type: 'publish', room: 'r', data: 'gated', id: 'p1' })
  await started
  t.equal(await app.rooms.removeFromRoom(a.welcome.connectionId, 'r', 'Muted.'), true)
  t.match(await a.next((f) => f.type === 'left'), { room: 'r', reason: 'Muted.' })
  release()
  t.match(await a.next((f) => f.id === 'p1'), { type: 'error', code: 'NOT_IN_ROOM', room: 'r' })
  await b.sync()
  t.same(b.pending('message'), [], 'the others got nothing')
  t.equal((await app.rooms.get('r'))?.offset, 0, 'nothing was stored')
})

t.test('frames of one connection are handled in order even when hooks are slow', async (t) => {
  let first = true
  const { wsUrl } = await startApp(t, {
    onPublish: async () => {
      // The first publish's hook resolves last; order must still hold.
      if (first) { first = false; await new Promise((resolve) => setImmediate(resolve)); await new Promise((resolve) => setImmediate(resolve)) }
    }
  })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  a.send({ type: 'join', room: 'r' })
  for (let i = 0; i < 5; i++) a.send({ type: 'publish', room: 'r', data: i, id: i })
  const messages = []
  for (let i = 0; i < 5; i++) messages.push(await a.next((f) => f.type === 'message'))
  t.same(messages.map((m) => [m.offset, m.data]), [[1, 0], [2, 1], [3, 2], [4, 3], [5, 4]])
})

t.test('the server closes the socket of a refused upgrade even when the client would keep it open', async (t) => {
  const { url } = await startApp(t, { authenticate: () => undefined })
  const { port } = new URL(url)
  const socket = connect(Number(port), '127.0.0.1')
  let response = ''
  socket.on('data', (chunk) => { response += chunk.toString() })
  socket.write([
    'GET /ws HTTP/1.1', `Host: 127.0.0.1:${port}`, 'Connection: Upgrade', 'Upgrade: websocket',
    'Sec-WebSocket-Version: 13', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', '', ''
  ].join('\r\n'))
  await once(socket, 'close')
  t.match(response, /^HTTP\/1\.1 401 /, 'refused with 401, then closed by the server')
})
