import t from 'tap'
import WebSocket from 'ws'
import { ERROR_CODES } from '../src/index.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { seeded } from './helpers/random.js'
import { guard, until } from './helpers/until.js'

const FUZZERS = 20
const FRAMES_EACH = 5_000
/** A guard on the waits that queue behind the whole flood (not a synchronisation). */
const FLOOD_MS = 60_000
const rand = seeded(0xF022)
const int = (n: number): number => Math.floor(rand() * n)
const pick = <T>(list: readonly T[]): T => list[int(list.length)] as T
const ROOMS = ['calm', 'a', 'b', '__proto__', 'constructor', 'toString', 'x:y.z-1']
const WEIRD = [null, true, 0, -1, 1.5, 1e308, '', 'x'.repeat(300), [], {}, { __proto__: { polluted: true } }, [[[]]], '\u0000', '😀']

function nested (depth: number): string {
  return '['.repeat(depth) + ']'.repeat(depth)
}

/** One generated frame: text (string) or binary (Buffer). */
function frame (oversize: boolean): string | Buffer {
  const room = pick(ROOMS)
  const id = rand() < 0.7 ? int(1e6) : undefined
  switch (int(14)) {
    case 0: return Buffer.from(Array.from({ length: int(64) }, () => int(256)))
    case 1: return JSON.stringify({ type: 'publish', room, data: { n: int(100) }, id }).slice(0, int(40))
    case 2: return nested(1 + int(20_000))
    case 3: return `{"type":"publish","room":"${room}","id":${int(1e6)},"data":${nested(5_000 + int(20_000))}}`
    case 4: return JSON.stringify({ type: pick(['join', 'leave', 'publish', 'ping']), room: 'r'.repeat(int(400)), id })
    case 5: return JSON.stringify({ type: 'publish', room, id, data: 'd'.repeat(int(8_000)) })
    case 6: return JSON.stringify({ type: pick(['join', 'leave', 'publish', 'ping']), room: pick(WEIRD), id: pick([...WEIRD, id]), data: pick(WEIRD), since: pick([...WEIRD, { offset: pick(WEIRD), epoch: pick(WEIRD) }]) })
    case 7: return JSON.stringify({ type: pick(['subscribe', 'JOIN', '', '__proto__', 'constructor', 'hasOwnProperty', 'valueOf']), room, id })
    case 8: return `{"__proto__":{"type":"join","room":"a"},"constructor":{"prototype":{"polluted":1}},"type":"${pick(['join', 'publish', 'leave'])}","room":"${room}","data":1,"id":${int(100)}}`
    case 9: return JSON.stringify({ type: 'leave', room, id })
    case 10: return JSON.stringify({ type: 'join', room, id, since: rand() < 0.5 ? { offset: int(50), epoch: pick(['bogus', '']) } : undefined })
    case 11: return JSON.stringify({ type: 'publish', room, id, data: { text: 'hostile order', n: int(1000) } })
    case 12: return pick(['', ' ', 'null', '[]', '"str"', '1', 'true', '{}', '{"type":null}', '{"type":"ping","id":{}}'])
    default: return oversize && rand() < 0.02 ? 'x'.repeat(70_000) : JSON.stringify({ type: 'ping', id })
  }
}

t.test(`fuzz: ${FUZZERS * FRAMES_EACH} seeded hostile frames from ${FUZZERS} connections at once`, async (t) => {
  const { wsUrl, app } = await startApp(t, {
    maxFramesPerSecond: 1e9, frameBurst: 1e9, maxMessageBytes: 4096, maxFrameBytes: 64 * 1024, maxRoomsPerConnection: 5
  })

  // Well-behaved members of "calm", where fuzzers publish too.
  const calm = await Promise.all([1, 2, 3].map(async () => await TestSocket.open(wsUrl)))
  t.teardown(() => Promise.all(calm.map(async (c) => await c.close())))
  for (const c of calm) await c.join('calm')

  const badCodes: string[] = []
  const closeCodes: number[] = []
  const fuzzers: Array<{ ws: WebSocket, user: string, rooms: Set<string>, closed: boolean, oversize: boolean, sentOversize: boolean }> = []
  let sent = 0
  await Promise.all(Array.from({ length: FUZZERS }, async () => {
    const s = await TestSocket.open(wsUrl)
    // A quarter of the fuzzers also send frames over maxFrameBytes, which close them (1009).
    const state = { ws: s.ws, user: s.welcome.user.id, rooms: new Set<string>(), closed: false, oversize: fuzzers.length < FUZZERS / 4, sentOversize: false }
    fuzzers.push(state)
    // Membership as this connection was told it: joined and left replies arrive in order.
    s.ws.on('message', (raw) => {
      const f = JSON.parse(raw.toString())
      if (f.type === 'joined') state.rooms.add(f.room)
      else if (f.type === 'left') state.rooms.delete(f.room)
      else if (f.type === 'error' && !(ERROR_CODES as readonly string[]).includes(f.code)) badCodes.push(f.code)
    })
    s.ws.on('close', (code) => { state.closed = true; closeCodes.push(code) })
  }))
  for (let i = 0; i < FRAMES_EACH; i++) {
    for (const f of fuzzers) {
      if (f.closed || f.ws.readyState !== WebSocket.OPEN) continue
      const data = frame(f.oversize)
      if (data.length > 64 * 1024) f.sentOversize = true
      f.ws.send(data, { binary: Buffer.isBuffer(data) })
      sent++
    }
  }
  // The calm publisher runs alongside, awaiting each ack. Its first publish
  // queues behind up to 100,000 hostile frames, some of them deep JSON: on a
  // loaded machine that took more than the usual 10 s guard.
  const calmAcks: number[] = []
  for (let i = 0; i < 300; i++) calmAcks.push((await calm[0]!.request({ type: 'publish', room: 'calm', data: { calm: i } }, FLOOD_MS)).offset)

  // Let every open fuzzer's frames be handled: one ping round trip each.
  const open = fuzzers.filter((f) => !f.closed)
  // A fuzzer the server closes meanwhile has had its frames handled too: its close ends the wait.
  await Promise.all(open.map(async (f) => await guard(new Promise<void>((resolve) => {
    const id = `sync-${f.user}`
    const onMessage = (raw: WebSocket.RawData): void => {
      const frame = JSON.parse(raw.toString())
      if (frame.id === id) { f.ws.off('message', onMessage); resolve() }
    }
    f.ws.on('message', onMessage)
    f.ws.once('close', () => resolve())
    f.ws.send(JSON.stringify({ type: 'ping', id }))
  }), `the pong of ${f.user}`, { ms: FLOOD_MS })))
  const stillOpen = fuzzers.filter((f) => !f.closed)

  t.ok(sent >= FUZZERS * FRAMES_EACH * 0.5, `${sent} frames sent (connections closed for oversized frames send no more)`)
  t.same(badCodes, [], 'every error frame carried a contract error code')
  // 1009, or 1006 when the client was still flooding as the server cut it and never read the close frame.
  t.ok(closeCodes.every((c) => c === 1009 || c === 1006), `closes were 1009 for frames over maxFrameBytes: ${JSON.stringify(closeCodes)}`)
  t.same(fuzzers.filter((f) => f.closed).map((f) => f.sentOversize), fuzzers.filter((f) => f.closed).map(() => true), 'only connections that sent an oversized frame were closed')
  t.ok(stillOpen.length >= FUZZERS * 3 / 4, `${stillOpen.length} fuzzers are still connected`)
  t.same(Object.getPrototypeOf({}), Object.prototype, 'no prototype was polluted')
  t.equal(({} as Record<string, unknown>).polluted, undefined)

  // The registry holds exactly the members that are really connected.
  await until(() => app.rooms.connections === stillOpen.length + calm.length, 'the server has seen every closed fuzzer go')
  const expected = new Map<string, Set<string>>()
  for (const f of [...stillOpen]) for (const room of f.rooms) expected.set(room, new Set([...(expected.get(room) ?? []), f.user]))
  for (const c of calm) expected.set('calm', new Set([...(expected.get('calm') ?? []), c.welcome.user.id]))
  const listed = (await app.rooms.list({ limit: 1000 })).rooms.map((r) => r.name).sort()
  t.same(listed, [...expected.keys()].sort(), 'the listed rooms are exactly those with connected members')
  for (const [room, users] of expected) {
    const info = await app.rooms.get(room)
    t.same(new Set(info?.members.map((m) => m.id)), users, `room ${room.slice(0, 24)}: exactly its connected members`)
  }

  // Well-behaved clients got every message of "calm", each once, in order.
  const last = (await app.rooms.get('calm'))!.offset
  t.ok(last >= 300, `calm reached offset ${last}`)
  for (const [i, c] of calm.entries()) {
    await c.sync()
    const offsets = c.take('message').map((m) => m.offset as number)
    t.same(offsets, Array.from({ length: last }, (_, k) => k + 1), `calm member ${i}: offsets 1..${last}, once each, in order`)
  }
  t.ok(calmAcks.every((o, i) => i === 0 || o > calmAcks[i - 1]!), 'acks increase')

  const fresh = await TestSocket.open(wsUrl)
  await fresh.sync()
  await fresh.close()
  t.pass('the server still accepts and answers new connections')
})
