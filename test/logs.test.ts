import t from 'tap'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { logSink } from './helpers/log.js'

const USER = { id: 'u-4f1c9a2e77', name: 'Grace', email: 'grace@example.test' }

t.test('our log lines go through the app\'s pino settings: its redaction applies', async (t) => {
  const { lines, stream, logged } = logSink()
  const { wsUrl } = await startApp(t, { authenticate: () => USER }, undefined, { logger: { level: 'info', stream, redact: ['userId'] } })
  const grace = await TestSocket.open(wsUrl)
  t.equal(grace.welcome.user.id, USER.id, 'the client still sees its id')
  await grace.close()
  await logged(() => lines.some((l) => l.msg === 'fastify-rooms: disconnected'), 'the disconnect is logged')
  const lifecycle = lines.filter((l) => /^fastify-rooms: (connected|disconnected)$/.test(l.msg))
  t.match(lifecycle, [
    { level: 30, msg: 'fastify-rooms: connected', connectionId: grace.welcome.connectionId, userId: '[Redacted]' },
    { level: 30, msg: 'fastify-rooms: disconnected', connectionId: grace.welcome.connectionId, userId: '[Redacted]', code: 1005 }
  ])
  t.notOk(lines.some((l) => JSON.stringify(l).includes(USER.id)), 'the user id is in no line')
  t.notOk(lines.some((l) => JSON.stringify(l).includes(USER.email)), 'nor any other field of the user')
})

t.test('errors carry their code: every error frame at debug, failures at error', async (t) => {
  const { lines, stream } = logSink()
  const { wsUrl } = await startApp(t, {
    authenticate: () => USER,
    onJoin: ({ room }) => { if (room === 'broken') throw new Error('the hook failed') }
  }, undefined, { logger: { level: 'debug', stream } })
  const grace = await TestSocket.open(wsUrl)
  t.teardown(() => grace.close())
  grace.send('not json')
  t.match(await grace.next((f) => f.type === 'error'), { code: 'INVALID_FRAME' })
  t.match(await grace.join('broken'), { type: 'error', code: 'INTERNAL', room: 'broken' })
  const frames = lines.filter((l) => l.msg === 'fastify-rooms: error frame sent')
  t.match(frames, [
    { level: 20, connectionId: grace.welcome.connectionId, code: 'INVALID_FRAME' },
    { level: 20, connectionId: grace.welcome.connectionId, code: 'INTERNAL', room: 'broken' }
  ])
  t.match(lines.filter((l) => l.level >= 50), [
    { level: 50, msg: 'fastify-rooms: a hook or the adapter failed', code: 'INTERNAL', connectionId: grace.welcome.connectionId, room: 'broken', err: { message: 'the hook failed' } }
  ])
})

t.test('a peer that breaks the WebSocket protocol (a frame over maxFrameBytes) is logged at info, not as the server\'s error', async (t) => {
  const { lines, stream, logged } = logSink()
  const { wsUrl } = await startApp(t, { maxFrameBytes: 1024, maxMessageBytes: 512 }, undefined, { logger: { level: 'info', stream } })
  const big = await TestSocket.open(wsUrl)
  big.ws.send('x'.repeat(5000))
  t.equal((await big.closed).code, 1009)
  await logged(() => lines.some((l) => l.msg === 'fastify-rooms: disconnected'), 'the close is logged')
  t.match(lines.filter((l) => /WebSocket protocol/.test(l.msg)), [{ level: 30, connectionId: big.welcome.connectionId, err: { code: 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' } }])
  t.same(lines.filter((l) => l.level >= 50), [], 'no error line')
})
