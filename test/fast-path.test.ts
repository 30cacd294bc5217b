import t, { type Test } from 'tap'
import websocket from '@fastify/websocket'
import type { FastifyInstance } from 'fastify'
import WebSocket from 'ws'
import { TestSocket } from './helpers/socket.js'
import { startApp } from './helpers/server.js'

/**
 * The types of the frames the server sent through the public `WebSocket.send`,
 * per server socket in connection order. Frames written straight to the TCP
 * socket (fan-out and replies, on the fast path) do not show up here.
 */
function watchSends (app: FastifyInstance): string[][] {
  const sockets: string[][] = []
  app.websocketServer.on('connection', (socket: WebSocket) => {
    const types: string[] = []
    sockets.push(types)
    const send = socket.send.bind(socket) as (data: unknown, options: unknown, cb?: unknown) => void
    socket.send = ((data: unknown, options: unknown, cb?: unknown) => {
      if (typeof data === 'string' || Buffer.isBuffer(data)) types.push(JSON.parse(data.toString()).type)
      send(data, options, cb)
    }) as WebSocket['send']
  })
  return sockets
}

/**
 * Two members of a room; the publisher fires `count` publishes with ids and
 * pings between them, all at once. Every frame of both must come intact and in
 * order: the publisher's echo of each message before its ack, a pong where its
 * ping was, the listener's messages in publish order.
 */
async function exchange (t: Test, wsUrl: string, clientOptions: WebSocket.ClientOptions = {}): Promise<void> {
  const publisher = await TestSocket.open(wsUrl, clientOptions)
  const listener = await TestSocket.open(wsUrl, clientOptions)
  t.teardown(async () => { await publisher.close(); await listener.close() })
  await publisher.join('room')
  await listener.join('room')
  const count = 50
  const expected: string[] = []
  for (let i = 0; i < count; i++) {
    const data = { i, text: 'x'.repeat(i * 40) }
    publisher.send({ type: 'publish', room: 'room', id: i, data })
    expected.push(`message ${i}`, `ack ${i}`)
    if (i % 5 === 0) {
      publisher.send({ type: 'ping', id: `p${i}` })
      expected.push(`pong p${i}`)
    }
  }
  await publisher.next((f) => f.type === 'ack' && f.id === count - 1, 'the last ack')
  const got = publisher.frames.filter((f) => f.type === 'message' || f.type === 'ack' || f.type === 'pong').map((f) =>
    f.type === 'message' ? `message ${(f.data as { i: number }).i}` : `${f.type} ${f.id as string}`)
  t.same(got, expected, 'the publisher gets its messages, acks and pongs in order')
  const last = await listener.next((f) => f.type === 'message' && (f.data as { i: number }).i === count - 1, 'the last message')
  t.same(last.data, { i: count - 1, text: 'x'.repeat((count - 1) * 40) }, 'intact')
  t.same(listener.frames.filter((f) => f.type === 'message').map((f) => (f.data as { i: number }).i), Array.from({ length: count }, (_, i) => i), 'the listener gets every message once, in order')
}

t.test('without permessage-deflate, fan-out and replies are written straight to the TCP socket, in order', async (t) => {
  const { app, wsUrl } = await startApp(t, { maxFramesPerSecond: 1e6, frameBurst: 1000 })
  const sends = watchSends(app)
  await exchange(t, wsUrl)
  t.equal(sends.length, 2)
  for (const types of sends) t.same(types, [], 'nothing went through WebSocket.send: welcome, joined, messages, acks, pongs')
})

t.test('direct replies of every frame header size arrive intact: small ones framed in one buffer, large ones written after their header', async (t) => {
  const { app, wsUrl } = await startApp(t, { maxMessageBytes: 200_000, maxFrameBytes: 300_000 })
  const sends = watchSends(app)
  const publisher = await TestSocket.open(wsUrl)
  t.teardown(async () => await publisher.close())
  await publisher.join('room')
  // Payload sizes around 126 and 65536 (the header grows) and 16 KiB (large replies are not copied).
  const sizes = [10, 120, 16_300, 16_400, 65_500, 70_000, 150_000]
  for (const size of sizes) {
    const ack = await publisher.request({ type: 'publish', room: 'room', data: 'x'.repeat(size) })
    t.equal(ack.type, 'ack')
  }
  // The late joiner gets the stored frames replayed through its replies' path.
  const late = await TestSocket.open(wsUrl)
  t.teardown(async () => await late.close())
  await late.join('room', { history: sizes.length })
  for (const [i, size] of sizes.entries()) {
    const message = await late.next((f) => f.type === 'message' && f.offset === i + 1, `message ${i + 1}`)
    t.equal(message.data, 'x'.repeat(size), `${size} characters intact`)
  }
  const page = await late.request({ type: 'history', room: 'room' })
  t.same(page.messages.map((m: { data: string }) => m.data.length), sizes, 'a history page of about 330 KB, intact')
  for (const types of sends) t.same(types, [], 'nothing went through WebSocket.send')
})

t.test('with permessage-deflate, fan-out goes through WebSocket.send, intact and in order', async (t) => {
  const { app, wsUrl } = await startApp(t, { maxFramesPerSecond: 1e6, frameBurst: 1000 }, async (app) => {
    await app.register(websocket, { options: { perMessageDeflate: { threshold: 0 } } })
  })
  const sends = watchSends(app)
  await exchange(t, wsUrl, { perMessageDeflate: true })
  t.equal(sends.length, 2)
  for (const types of sends) t.equal(types.filter((type) => type === 'message').length, 50, 'every message went through WebSocket.send')
})

/** ws's Sender: not in @types/ws. */
const { Sender } = WebSocket as unknown as { Sender: (new (...args: any[]) => object) & { frame: (data: Buffer, options: object) => Buffer[] } }

/** ws classes on which the feature check must fail: no Sender.frame, or one that frames differently. */
const unfit: Array<[string, typeof WebSocket]> = [
  ['a ws without Sender.frame', class extends WebSocket { static Sender = undefined }],
  ['a ws whose Sender.frame builds other bytes', class extends WebSocket {
    static Sender = class extends Sender {
      static override frame (data: Buffer, options: object): Buffer[] {
        return Sender.frame(data, { ...options, rsv1: true })
      }
    }
  }]
]

for (const [name, WebSocketClass] of unfit) {
  t.test(`${name}: the feature check fails and fan-out goes through WebSocket.send, intact and in order`, async (t) => {
    const { app, wsUrl } = await startApp(t, { maxFramesPerSecond: 1e6, frameBurst: 1000 }, async (app) => {
      // ws's public option for the class of the server's sockets (it must extend ws's own).
      await app.register(websocket, { options: { WebSocket: WebSocketClass as never } })
    })
    const sends = watchSends(app)
    await exchange(t, wsUrl)
    t.equal(sends.length, 2)
    for (const types of sends) t.equal(types.filter((type) => type === 'message').length, 50, 'every message went through WebSocket.send')
  })
}

t.test('a direct write never overtakes what ws still holds back (a Blob being read)', async (t) => {
  let server: WebSocket | undefined
  const { app, wsUrl } = await startApp(t, {})
  app.websocketServer.on('connection', (socket: WebSocket) => { server = socket })
  const member = await TestSocket.open(wsUrl)
  t.teardown(async () => await member.close())
  await member.join('room')
  // ws reads a Blob asynchronously and queues every send behind it meanwhile.
  ;(server as WebSocket).send(new Blob([JSON.stringify({ type: 'direct', data: 'first' })]), { binary: false })
  const offset = await app.rooms.broadcast('room', 'second')
  await member.next((f) => f.type === 'message' && f.offset === offset, 'the broadcast')
  t.same(member.frames.filter((f) => f.type === 'direct' || f.type === 'message').map((f) => f.data), ['first', 'second'], 'in the order sent')
})
