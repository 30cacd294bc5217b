import t, { type Test } from 'tap'
import type { Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'
import type { RoomsOptions } from '../src/index.js'
import { HeldStore } from './helpers/held-store.js'
import { serverClosed, serverSocketOf, startApp } from './helpers/server.js'
import { eventually } from './helpers/redis.js'
import { TestSocket } from './helpers/socket.js'
import { guard } from './helpers/until.js'

t.test('a client that never reads is closed with 1013; fast members miss nothing; server memory stays bounded', async (t) => {
  const maxBufferedBytes = 256 * 1024
  const { wsUrl, app } = await startApp(t, { maxBufferedBytes, closeTimeoutMs: 200, historySize: 0, maxFramesPerSecond: 1e6, frameBurst: 10_000, authenticate: (r) => ({ id: String(r.headers['x-user']), name: String(r.headers['x-user']) }) })
  const fast = await Promise.all(['f1', 'f2', 'f3'].map(async (id) => await TestSocket.open(wsUrl, { headers: { 'x-user': id } })))
  const slow = await TestSocket.open(wsUrl, { headers: { 'x-user': 'slow' } })
  t.teardown(() => Promise.all(fast.map(async (f) => await f.close())))
  for (const f of fast) await f.join('firehose')
  await slow.join('firehose')
  // From here on the slow client reads nothing: its TCP window fills, then the server's buffer for it grows.
  slow.stopReading()
  const serverSide = [...app.websocketServer.clients].at(-1)!
  let peak = 0
  const closed = new Promise<number>((resolve) => serverSide.once('close', (code) => resolve(code)))

  const total = 3000
  const payload = 'x'.repeat(2000)
  const received = fast.map(() => 0)
  const done = fast.map((f, i) => new Promise<void>((resolve) => f.ws.on('message', (raw) => {
    const frame = JSON.parse(raw.toString())
    if (frame.type === 'message' && ++received[i]! === total) resolve()
  })))
  // The first fast member publishes as fast as acks come back, a bounded window of them in flight.
  const publisher = fast[0]!
  const inFlight: Array<Promise<unknown>> = []
  for (let n = 1; n <= total; n++) {
    inFlight.push(publisher.request({ type: 'publish', room: 'firehose', data: { n, payload } }))
    if (inFlight.length >= 32) await inFlight.shift()
    peak = Math.max(peak, serverSide.bufferedAmount)
  }
  await Promise.all(inFlight)
  await guard(Promise.all(done), `every fast member to get all ${total} messages`, { ms: 60_000, abort: fast.map((f) => f.closed) })
  t.equal(await guard(closed, 'the server to cut the slow reader'), 1006, 'cut after the grace time, since it never read the 1013 close frame')
  t.ok(peak <= maxBufferedBytes + 4096, `the server buffered at most ${peak} bytes for it (limit ${maxBufferedBytes})`)
  t.same(received, [total, total, total], 'every fast member got every message')
  const leave = await fast[0]!.next((f) => f.type === 'presence' && f.leaves.length > 0)
  t.match(leave, { leaves: [{ id: 'slow' }], count: 3 })
  t.equal(publisher.frames.filter((f) => f.type === 'error').length, 0, 'no publish was refused')
  t.equal(app.rooms.connections, 3)
})

t.test('a slow reader that does read its buffer sees close code 1013', async (t) => {
  const { wsUrl, app } = await startApp(t, { maxBufferedBytes: 64 * 1024, closeTimeoutMs: 5_000, historySize: 0 })
  const slow = await TestSocket.open(wsUrl)
  await slow.join('r')
  slow.stopReading()
  const serverSide = [...app.websocketServer.clients][0]!
  const closing = new Promise<void>((resolve) => {
    const check = (): void => { if (serverSide.readyState === serverSide.CLOSING) resolve() }
    serverSide.on('close', () => resolve())
    void app.rooms.broadcast('r', 'x'.repeat(4000)).then(function more (): void {
      check()
      if (serverSide.readyState === serverSide.OPEN) void app.rooms.broadcast('r', 'x'.repeat(4000)).then(more)
    })
  })
  await closing
  slow.resumeReading()
  t.equal((await slow.closed).code, 1013)
})

/** Offsets of the `message` frames a socket got, in order. */
const offsets = (s: TestSocket, room: string): number[] => s.frames.filter((f) => f.type === 'message' && f.room === room).map((f) => f.offset as number)

t.test('a join whose replay is larger than maxBufferedBytes: a member that reads gets all of it, then the live messages, each once and in order', async (t) => {
  const maxBufferedBytes = 256 * 1024
  // 40 messages of 30 KB: 1.2 MB, more than four times the limit.
  const { wsUrl } = await startApp(t, { maxBufferedBytes, historySize: 100, maxFramesPerSecond: 1e6, frameBurst: 10_000 })
  const publisher = await TestSocket.open(wsUrl)
  t.teardown(() => publisher.close())
  const { epoch } = await publisher.join('big')
  const N = 40
  for (let i = 1; i <= N; i++) t.equal((await publisher.request({ type: 'publish', room: 'big', data: String(i).padEnd(30_000, 'x') })).offset, i)
  for (const join of [{ history: N }, { since: { offset: 0, epoch } }, { since: { offset: 0, epoch: 'another' } }]) {
    const what = JSON.stringify(join)
    const reader = await TestSocket.open(wsUrl)
    reader.send({ type: 'join', room: 'big', id: 'j', ...join })
    // Published while the replay is read: they follow it.
    const live = Array.from({ length: 5 }, async () => await publisher.request({ type: 'publish', room: 'big', data: 'live' }))
    const last = ((await Promise.all(live)).map((ack) => ack.offset as number)).sort((a, b) => a - b).at(-1)!
    await reader.next((f) => f.type === 'message' && f.offset === last, `${what}: the last live message`)
    t.equal(reader.frames.find((f) => f.id === 'j')?.type, 'joined', `${what}: joined`)
    t.same(offsets(reader, 'big'), Array.from({ length: last }, (_, i) => i + 1), `${what}: every offset once, in order`)
    t.equal(reader.ws.readyState, reader.ws.OPEN, `${what}: still open`)
    await reader.close()
  }
})

t.test('what is published to a joiner while its join is answered waits for it up to maxBufferedBytes: past that it is a slow consumer (1013)', async (t) => {
  const maxBufferedBytes = 64 * 1024
  const adapter = new HeldStore()
  const { url, wsUrl, app } = await startApp(t, { adapter, metrics: true, maxBufferedBytes, closeTimeoutMs: 200, historySize: 0, maxFramesPerSecond: 1e6, frameBurst: 10_000, authenticate: (r) => ({ id: String(r.headers['x-user']), name: String(r.headers['x-user']) }) })
  const publisher = await TestSocket.open(wsUrl, { headers: { 'x-user': 'pub' } })
  t.teardown(() => publisher.close())
  await publisher.join('busy')
  const joiner = await TestSocket.open(wsUrl, { headers: { 'x-user': 'joiner' } })
  const serverSide = [...app.websocketServer.clients].at(-1)!
  // The store answers the join late (a slow store, or a replay the joiner is slow to read): frames wait behind it.
  const held = adapter.hold('join')
  t.teardown(() => held.release())
  joiner.send({ type: 'join', room: 'busy', id: 'j' })
  await held.entered
  // 2 KB each: 33 of them pass the limit; the check comes every 64 waiting frames.
  for (let n = 1; n <= 64; n++) await publisher.request({ type: 'publish', room: 'busy', data: 'y'.repeat(2000) })
  const closed = await guard(joiner.closed, 'the joiner to be closed')
  t.equal(closed.code, 1013, 'closed as a slow consumer')
  t.match(await (await fetch(`${url}/metrics`)).text(), /^fastify_rooms_slow_consumers_total 1$/m, 'counted once, as any slow consumer')
  held.release()
  t.equal(offsets(publisher, 'busy').length, 64, 'the publisher got every message')
  await serverClosed(serverSide, 'the joiner\'s socket to close')
  await eventually(async () => (await app.rooms.get('busy'))?.count, (count) => count === 1, 'the joiner to be out of the room')
})

/**
 * A room of 100 messages of 120 KB (12 MB: more than loopback's socket buffers take, 4 MiB sent and 6 MiB
 * received at most by Linux's defaults), and a member that joins with all of them as its replay but reads nothing yet.
 */
async function bigReplay (t: Test, extra: Partial<RoomsOptions> = {}): Promise<{ app: FastifyInstance, publisher: TestSocket, reader: TestSocket, leaves: Array<{ room: string, cause: string }> }> {
  const leaves: Array<{ room: string, cause: string }> = []
  const { wsUrl, app } = await startApp(t, { maxBufferedBytes: 256 * 1024, maxMessageBytes: 128 * 1024, maxFrameBytes: 256 * 1024, historySize: 100, maxFramesPerSecond: 1e6, frameBurst: 10_000, closeTimeoutMs: 300, onLeave: ({ room, cause }) => { leaves.push({ room, cause }) }, ...extra })
  const publisher = await TestSocket.open(wsUrl)
  t.teardown(() => publisher.close())
  await publisher.join('big')
  for (let i = 1; i <= 100; i++) await publisher.request({ type: 'publish', room: 'big', data: String(i).padEnd(120_000, 'x') })
  const reader = await TestSocket.open(wsUrl)
  // Reading again, or its close would wait for ws's own 30 s timeout.
  t.teardown(async () => {
    reader.resumeReading()
    await reader.close()
  })
  reader.stopReading()
  reader.send({ type: 'join', room: 'big', id: 'j', history: 100 })
  // Its socket full, the server's replay waits for it to read (ws' own Sender is not in the way: the plugin writes to the TCP socket).
  const raw = (serverSocketOf(app, reader) as unknown as { _socket: Socket })._socket
  await eventually(async () => raw.listenerCount('drain'), (n) => n > 0, 'the replay to wait for the reader')
  return { app, publisher, reader, leaves }
}

t.test('what is published while a replay waits follows it once the member reads: no 1013 for the two together', async (t) => {
  const { reader, publisher } = await bigReplay(t)
  // 240 KB meanwhile, under the 256 KiB limit; with what is left of the replay, more than it.
  for (let i = 0; i < 8; i++) await publisher.request({ type: 'publish', room: 'big', data: 'live'.padEnd(30_000, 'y') })
  reader.resumeReading()
  await reader.next((f) => f.type === 'message' && f.offset === 108, 'the last live message')
  t.same(offsets(reader, 'big'), Array.from({ length: 108 }, (_, i) => i + 1), 'every offset once, in order')
})

t.test('a member removed from the room while its replay waits has had its joined: it gets left, and onLeave', async (t) => {
  const { app, reader, leaves } = await bigReplay(t)
  t.equal(await app.rooms.removeFromRoom(reader.welcome.connectionId, 'big'), true)
  reader.resumeReading()
  await reader.next((f) => f.type === 'left', 'left')
  await eventually(async () => leaves.length, (n) => n > 0, 'onLeave')
  t.same(leaves, [{ room: 'big', cause: 'removed' }])
  t.equal((await app.rooms.get('big'))?.count, 1, 'only the publisher is in the room')
})

t.test('a member that drops while its replay waits has had its joined: it stays present for the grace time, then leaves', async (t) => {
  const { app, reader, publisher, leaves } = await bigReplay(t, { presenceGraceMs: 500 })
  const dropped = Date.now()
  reader.ws.terminate()
  await publisher.next((f) => f.type === 'presence' && f.leaves.length > 0, 'the leave')
  t.ok(Date.now() - dropped >= 490, 'not before the grace time')
  await eventually(async () => leaves.length, (n) => n > 0, 'onLeave')
  t.same(leaves, [{ room: 'big', cause: 'closed' }])
  t.equal((await app.rooms.get('big'))?.count, 1)
})

t.test('app.close() while a replay waits for a member that does not read does not wait for it', async (t) => {
  const { app } = await bigReplay(t)
  await guard(app.close(), 'app.close()')
  t.pass('closed')
})
