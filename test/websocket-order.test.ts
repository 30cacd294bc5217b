import t from 'tap'
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import websocket from '@fastify/websocket'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'

t.test('@fastify/websocket registered before the plugin serves it with the app\'s own options', async (t) => {
  const { app, wsUrl } = await startApp(t, {}, async (app) => { await app.register(websocket, { options: { maxPayload: 4096 } }) })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  t.equal(a.welcome.type, 'welcome')
  t.equal(app.websocketServer.options.maxPayload, 4096, 'one WebSocket server: the app\'s, with its maxPayload')
  await a.join('lobby')
  t.equal((await app.rooms.get('lobby'))?.count, 1)
})

t.test('without @fastify/websocket the plugin registers it, limited to maxFrameBytes', async (t) => {
  const { app, wsUrl } = await startApp(t, { maxFrameBytes: 8192, maxMessageBytes: 4096 })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  t.equal(a.welcome.type, 'welcome')
  t.equal(app.websocketServer.options.maxPayload, 8192)
  t.ok(app.hasPlugin('@fastify/websocket'), 'registered where the app can use it for its own routes')
})

t.test('@fastify/websocket registered after the plugin fails at startup, before listening (the unsupported order)', async (t) => {
  const script = fileURLToPath(new URL('./fixtures/websocket-after.ts', import.meta.url))
  const result = await new Promise<{ code: number | null, output: string }>((resolve) => {
    const child = execFile(process.execPath, ['--import=tsx', script], (_err, stdout, stderr) => { resolve({ code: child.exitCode, output: stdout + stderr }) })
  })
  t.not(result.code, 0, 'the process does not start')
  t.notMatch(result.output, /listening/, 'it never listens')
  // @fastify/websocket decorates `ws` a second time; avvio lets its synchronous throw escape as an uncaught exception.
  t.match(result.output, /FST_ERR_DEC_ALREADY_PRESENT/)
})
