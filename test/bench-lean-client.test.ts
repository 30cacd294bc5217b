import t from 'tap'
import { createServer } from 'node:http'
import type { Socket } from 'node:net'
import { FrameParser, maskedFrame, openLean } from '../bench/lean-client.js'
import { lastCount } from '../bench/client.js'
import { textFrame } from '../bench/coalesced.js'
import { startApp } from './helpers/server.js'
import { until } from './helpers/until.js'

interface Seen { messages: string[], presence: string[], control: Array<[number, string]>, failures: string[] }

function parser (): { parser: FrameParser, seen: Seen } {
  const seen: Seen = { messages: [], presence: [], control: [], failures: [] }
  const p = new FrameParser({
    message: (payload) => seen.messages.push(payload.toString()),
    presence: (tail, length) => seen.presence.push(tail.toString('latin1', 0, length)),
    control: (opcode, payload) => seen.control.push([opcode, payload.toString()]),
    fail: (reason) => seen.failures.push(reason)
  })
  return { parser: p, seen }
}

/** An unmasked server frame with FIN and opcode as given (textFrame always sets FIN and text). */
function frame (opcode: number, payload: string, fin = true): Buffer {
  const bytes = textFrame(Buffer.from(payload))
  bytes[0] = (fin ? 0x80 : 0) | opcode
  return bytes
}

const presenceOf = (joins: number, count: number): string =>
  `{"type":"presence","room":"r","joins":[${Array.from({ length: joins }, (_, i) => `{"id":"u${i}","name":"n${i}"}`).join(',')}],"leaves":[],"count":${count}}`

t.test('the frame parser reads 2-, 4- and 10-byte lengths, keeps only a presence diff\'s last bytes, and copes with any split of the reads', async (t) => {
  const small = '{"type":"joined","room":"r","count":3}'
  const medium = presenceOf(10, 11) // 126..65535 bytes: a 4-byte header
  const large = presenceOf(3000, 3001) // over 65535 bytes: a 10-byte header
  const tiny = '{"a":1}' // shorter than the bytes that tell presence
  const stream = Buffer.concat([frame(1, small), frame(1, medium), frame(1, large), frame(1, tiny)])
  t.ok(medium.length >= 126 && medium.length < 65536 && large.length >= 65536, 'the sizes take each header length')
  for (const step of [1, 2, 3, 7, 11, 100, 4096, stream.length]) {
    const { parser: p, seen } = parser()
    for (let i = 0; i < stream.length; i += step) p.push(stream, i, Math.min(stream.length, i + step))
    t.same(seen.failures, [], `reads of ${step} bytes: no failure`)
    t.same(seen.messages, [small, tiny], `reads of ${step} bytes: other messages whole`)
    t.equal(seen.presence.length, 2, `reads of ${step} bytes: both presence diffs counted`)
    t.match(seen.presence[0], /"count":11\}$/, 'the first diff\'s tail holds its count')
    t.match(seen.presence[1], /"count":3001\}$/, 'the second diff\'s tail holds its count')
  }
})

t.test('the frame parser joins a fragmented message and passes control frames sent between its fragments', async (t) => {
  const text = presenceOf(20, 21)
  const stream = Buffer.concat([
    frame(1, text.slice(0, 5), false), // too short yet to tell presence
    frame(9, 'ping!'),
    frame(0, text.slice(5, 300), false),
    frame(10, ''),
    frame(0, text.slice(300), true),
    frame(1, '{"type":"welcome"}', false),
    frame(0, ',"x":1', true),
    frame(8, '\u0003\u00e8')
  ])
  for (const step of [1, 5, stream.length]) {
    const { parser: p, seen } = parser()
    for (let i = 0; i < stream.length; i += step) p.push(stream, i, Math.min(stream.length, i + step))
    t.same(seen.failures, [], 'no failure')
    t.equal(seen.presence.length, 1, 'one presence message from three fragments')
    t.match(seen.presence[0], /"count":21\}$/, 'its tail spans the last fragment')
    t.same(seen.messages, ['{"type":"welcome"},"x":1'], 'a fragmented other message, whole')
    t.same(seen.control.map(([op]) => op), [9, 10, 8], 'ping, pong and close passed on, in order')
    t.equal(seen.control[0]![1], 'ping!', 'with their payloads')
  }
})

t.test('the frame parser refuses what a server must not send', async (t) => {
  const cases: Array<[string, Buffer]> = [
    ['a masked frame', maskedFrame(1, Buffer.from('hi'))],
    ['RSV bits without an extension', Buffer.from([0xc1, 0x00])],
    ['a continuation outside a message', frame(0, 'x')],
    ['a new message inside a fragmented one', Buffer.concat([frame(1, 'abc', false), frame(1, 'def')])],
    ['a fragmented control frame', frame(9, 'x', false)],
    ['an unknown opcode', frame(3, 'x')]
  ]
  for (const [what, bytes] of cases) {
    const { parser: p, seen } = parser()
    p.push(bytes, 0, bytes.length)
    t.equal(seen.failures.length, 1, `${what} fails the parser`)
  }
})

t.test('a lean client joins a fastify-rooms room, counts presence diffs and reads the room\'s count from the last one', async (t) => {
  const { wsUrl } = await startApp(t)
  const first = await openLean('rooms', wsUrl)
  t.teardown(() => first.close())
  await first.join('lobby')
  t.equal(lastCount(first), 1, 'the count of its `joined`')
  const others = await Promise.all([0, 1, 2].map(async () => await openLean('rooms', wsUrl)))
  t.teardown(() => { for (const c of others) c.close() })
  for (const other of others) await other.join('lobby')
  t.equal(lastCount(others[2]!), 4, 'the last to join reads 4 from its `joined`')
  // No event tells that the last diff arrived: the count is polled.
  await until(() => {
    if (first.closed) throw new Error('the server closed the first member')
    return lastCount(first) === 4
  }, 'the first member counts 4')
  t.ok(first.presenceFrames >= 1 && first.presenceFrames <= 3, `presence diffs counted (${first.presenceFrames})`)
  t.equal(first.closed, false, 'the server closed nothing')
})

t.test('a lean client refuses a server whose Sec-WebSocket-Accept is wrong, and one that does not upgrade', async (t) => {
  const server = createServer((_req, res) => { res.statusCode = 404; res.end() })
  server.on('upgrade', (_req, socket: Socket) => {
    socket.end('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSByaWdodCBvbmU=\r\n\r\n')
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => server.close())
  const { port } = server.address() as { port: number }
  await t.rejects(openLean('rooms', `ws://127.0.0.1:${port}/ws`), /wrong Sec-WebSocket-Accept/)
  server.removeAllListeners('upgrade')
  server.on('upgrade', (_req, socket: Socket) => { socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n') })
  await t.rejects(openLean('rooms', `ws://127.0.0.1:${port}/ws`), /refused the upgrade: HTTP\/1.1 403/)
})

t.test('a lean client answers a ping with a pong carrying the same payload, and refuses a join once closed', async (t) => {
  const { app, wsUrl } = await startApp(t)
  const client = await openLean('rooms', wsUrl)
  t.teardown(() => client.close())
  const pong = new Promise<string>((resolve, reject) => {
    for (const ws of app.websocketServer.clients) {
      ws.once('pong', (data: Buffer) => resolve(data.toString()))
      ws.once('close', () => reject(new Error('the connection closed before the pong')))
    }
  })
  for (const ws of app.websocketServer.clients) ws.ping('are you there')
  t.equal(await pong, 'are you there')
  client.close()
  await t.rejects(client.join('lobby'), /closed/, 'a join on a closed connection settles at once')
})
