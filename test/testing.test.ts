import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import rooms, { type RoomsOptions } from '../src/index.js'
import { injectRooms, RoomsTestError } from '../src/testing.js'

/** An app as an app's own test builds it: registered, never listening. */
async function build (t: { teardown: (fn: () => unknown) => void }, options: RoomsOptions = {}): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(rooms, { presenceIntervalMs: 0, ...options })
  t.teardown(async () => await app.close())
  return app
}

t.test('injectRooms: welcome, join, publish, messages and presence between two sockets, without a port', async (t) => {
  const app = await build(t)
  const ada = await injectRooms(app, { query: { name: 'ada' } })
  const bob = await injectRooms(app, { query: { name: 'bob' } })
  t.equal(app.server.listening, false, 'no port was opened')
  t.match(ada.welcome, { type: 'welcome', protocol: 2, user: { name: 'ada' } })
  t.match(await ada.join('lobby'), { type: 'joined', room: 'lobby', count: 1 })
  t.match(await bob.join('lobby', { history: 0 }), { count: 2 })
  t.ok(await ada.next('presence', (p) => p.joins.some((m) => m.name === 'bob')), 'ada sees bob join')
  t.match(await bob.request({ type: 'publish', room: 'lobby', data: 'hi' }), { type: 'ack', offset: 1 })
  const message = await ada.next('message', (m) => m.offset === 1)
  t.equal(message.data, 'hi')
  t.equal(message.from?.name, 'bob')
  await app.rooms.broadcast('lobby', { from: 'server' })
  t.match(await bob.next('message', (m) => m.offset === 2), { data: { from: 'server' } })
  t.equal(bob.pending('message').length, 1, 'its own message is still unread')
  t.same(await bob.close(), { code: 1000, reason: '' })
  t.ok(await ada.next('presence', (p) => p.leaves.some((m) => m.name === 'bob')), 'and leave at once: the server saw the close')
  await ada.close()
})

t.test('injectRooms: refusals reject with the server\'s code or status; waits end when the socket closes', async (t) => {
  const app = await build(t, {
    authenticate: (request) => {
      if (request.headers['x-user'] === undefined) throw new Error('no user')
      return { id: String(request.headers['x-user']), name: String(request.headers['x-user']) }
    },
    onJoin: ({ room }) => room !== 'staff'
  })
  await t.rejects(injectRooms(app), /Unexpected server response: 401/, 'a refused upgrade')
  const ada = await injectRooms(app, { headers: { 'x-user': 'ada' } })
  t.equal(ada.welcome.user.id, 'ada')
  await t.rejects(ada.join('staff'), new RoomsTestError({ type: 'error', code: 'FORBIDDEN', message: 'You may not join room "staff".', room: 'staff' }))
  await t.rejects(ada.join('bad room'), { name: 'RoomsTestError', code: 'INVALID_ROOM' })
  ada.send('not json')
  t.match(await ada.next('error'), { code: 'INVALID_FRAME' })
  const waiting = ada.next('message')
  t.equal(await app.rooms.disconnect(ada.welcome.connectionId, 'bye'), true)
  await t.rejects(waiting, /The socket closed \(code 4003: bye\) while waiting for a message frame/)
  t.same(await ada.closed, { code: 4003, reason: 'bye' })
  await t.rejects(ada.next('pong'), /The socket closed \(code 4003: bye\) before a pong frame came/)
})

t.test('injectRooms: a token in band with verifyToken; a bad one rejects with UNAUTHORIZED', async (t) => {
  const app = await build(t, {
    verifyToken: async (token) => {
      if (token !== 'good') throw new Error('bad token')
      return { user: { id: 'ada', name: 'ada' } }
    }
  })
  const ada = await injectRooms(app, { token: 'good' })
  t.equal(ada.welcome.user.id, 'ada')
  await t.rejects(injectRooms(app, { token: 'forged' }), { name: 'RoomsTestError', code: 'UNAUTHORIZED' })
  await t.rejects(injectRooms(app, { timeoutMs: 100 }), /closed \(code 4001|No welcome within 100 ms/)
  await ada.close()
})
