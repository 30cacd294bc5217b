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

t.test('an app\'s own @fastify/websocket with skipUTF8Validation: data measured as sent on, not by the frame\'s bytes', async (t) => {
  const { app, wsUrl } = await startApp(t, { maxMessageBytes: 700 }, async (app) => {
    await app.register(websocket, { options: { skipUTF8Validation: true } })
  })
  const a = await TestSocket.open(wsUrl)
  const b = await TestSocket.open(wsUrl)
  t.teardown(() => Promise.all([a.close(), b.close()]))
  await a.join('r')
  await b.join('r')
  // Each 0xff byte reads as U+FFFD, 3 bytes of UTF-8: 400 bytes of it are 1,200 bytes of data, in a 447-byte frame
  // (read by the fast path); 650 of them, 1,950 bytes in a 697-byte frame (over 512 characters: the slow path).
  for (const [id, n] of [[1, 400], [2, 650]] as const) {
    const frame = Buffer.concat([Buffer.from(`{"type":"publish","room":"r","id":${id},"data":"`), Buffer.alloc(n, 0xff), Buffer.from('"}')])
    t.ok(frame.length <= 700, `a frame of ${frame.length} bytes`)
    a.ws.send(frame, { binary: false })
    t.match(await a.next((f) => f.id === id), { type: 'error', code: 'PAYLOAD_TOO_LARGE', id }, `${n} bad bytes: refused`)
  }
  const offset = await app.rooms.broadcast('r', 'after')
  t.match(await b.next((f) => f.type === 'message'), { data: 'after', offset }, 'nothing was published before it')
  // Valid UTF-8 on the same server is measured as before: 300 x 'é' is 602 bytes of data.
  t.match(await a.request({ type: 'publish', room: 'r', data: 'é'.repeat(300) }), { type: 'ack' })
})
