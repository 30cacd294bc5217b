import t from 'tap'
import WebSocket from 'ws'
import { redisAdapter } from '../src/index.js'
import { encodePresence, messageFrame, type Member } from '../src/protocol.js'
import { startApp } from './helpers/server.js'
import { skipRedis, startRedis } from './helpers/redis.js'

/** A raw client that keeps the exact text of every frame. */
async function rawClient (url: string, user: string): Promise<{ ws: WebSocket, next: (match: (text: string) => boolean) => Promise<string>, send: (frame: unknown) => void }> {
  const ws = new WebSocket(url, { headers: { 'x-user': user } })
  const texts: string[] = []
  const waiters: Array<{ match: (text: string) => boolean, resolve: (text: string) => void }> = []
  ws.on('message', (data) => {
    const text = data.toString('utf8')
    const i = waiters.findIndex((w) => w.match(text))
    if (i === -1) texts.push(text)
    else (waiters.splice(i, 1)[0] as { resolve: (text: string) => void }).resolve(text)
  })
  const closed = new Promise<number>((resolve) => ws.once('close', resolve))
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  const next = async (match: (text: string) => boolean): Promise<string> => {
    const i = texts.findIndex(match)
    if (i !== -1) return texts.splice(i, 1)[0] as string
    if (ws.readyState !== WebSocket.OPEN) throw new Error('closed before the frame came')
    return await new Promise((resolve, reject) => {
      waiters.push({ match, resolve })
      closed.then((code) => reject(new Error(`closed with ${code} before the frame came`)), () => {})
    })
  }
  return { ws, next, send: (frame) => ws.send(JSON.stringify(frame)) }
}

/** Members with fields a JSON encoder must escape or keep in order. */
const users: Record<string, Member & Record<string, unknown>> = {
  ada: { id: 'ada', name: 'Ada "the first" Lovelace', avatar: 'https://x.test/a?b=1&c=2', roles: ['admin', 'ops'], meta: { tz: 'Europe/London', score: 1.5e-7 } },
  zoe: { id: 'zoé-\u00e9\u4e2d', name: 'Zoë \ud83d\ude00 \\ back\\slash \u2028 \u0000 end', nested: { a: [1, { b: null }], t: true } }
}

const awkward: unknown[] = [
  'plain',
  'quote " backslash \\ slash / tab \t newline \n cr \r',
  '\u0000\u0001\u001f control \u007f',
  'unicode: é 中文 \ud83d\ude00 \u2028 \u2029',
  'lone surrogate \ud800 end',
  { nested: { deep: [1, [2, [3, { four: 'é' }]]], empty: {}, list: [] }, n: -0.000001, big: 1e300, neg: -12 },
  [null, true, false, 0, '', ' '],
  '{"looks":"like json"}|m1|x',
  12345678901234567890,
  null
]

t.test('the frames Redis builds are byte for byte what the TypeScript encoders build', { skip: skipRedis }, async (t) => {
  const redis = await startRedis(t)
  // Every field public, so the awkward ones go through the Lua encoder too.
  const options = { authenticate: (r: { headers: Record<string, unknown> }) => users[String(r.headers['x-user'])] ?? null, publicUserFields: ['id', 'name', 'avatar', 'roles', 'meta', 'nested'], maxFramesPerSecond: 1e6, frameBurst: 10_000, presenceIntervalMs: 0 }
  const a = await startApp(t, { ...options, adapter: redisAdapter({ url: redis.url }) })
  const b = await startApp(t, { ...options, adapter: redisAdapter({ url: redis.url }) })
  const room = 'frames:Room_1.x-y'
  const ada = await rawClient(a.wsUrl, 'ada')
  const zoe = await rawClient(b.wsUrl, 'zoe')
  t.teardown(() => { ada.ws.close(); zoe.ws.close() })
  ada.send({ type: 'join', room, id: 1 })
  await ada.next((text) => text.includes('"joined"'))
  zoe.send({ type: 'join', room, id: 1 })
  await zoe.next((text) => text.includes('"joined"'))

  const join = await ada.next((text) => text.includes('"presence"'))
  // Ada is her instance's first member: its diff of zoe's join may name ada's own join too, first
  // (the instance hears it back on its subscription, which can lag behind ada's `joined`). That diff
  // is right and newer than ada's `joined` (see helpers/presence.ts): either one is checked byte for byte.
  const named = (JSON.parse(join) as { joins: Member[] }).joins.some((m) => m.id === 'ada') ? [users.ada, users.zoe] : [users.zoe]
  t.equal(join, encodePresence(room, named.map((m) => JSON.stringify(m as Member)), [], 2), 'presence join of a member from another instance, its fields intact')

  {
    let offset = 0
    for (const data of awkward) {
      zoe.send({ type: 'publish', room, data, id: `p${offset}` })
      offset++
      const text = await ada.next((text) => text.startsWith('{"type":"message"'))
      const { ts } = JSON.parse(text) as { ts: number }
      t.equal(text, messageFrame(room, { data: JSON.stringify(data), from: JSON.stringify(users.zoe as Member) }, offset, ts), `awkward data #${offset}`)
      // The sender gets the same bytes from its own instance.
      t.equal(await zoe.next((text) => text.startsWith('{"type":"message"')), text, 'the sender gets the same bytes')
    }
  }

  {
    // Server messages (no from), and the same bytes through history.
    const first = (await a.app.rooms.history(room))?.offset ?? 0
    for (const [i, data] of awkward.entries()) {
      const offset = await b.app.rooms.broadcast(room, data)
      t.equal(offset, first + i + 1)
      const text = await ada.next((text) => text.startsWith('{"type":"message"'))
      const { ts } = JSON.parse(text) as { ts: number }
      t.equal(text, messageFrame(room, { data: JSON.stringify(data) }, offset, ts), `awkward data #${i}, server publish`)
      const stored = (await a.app.rooms.history(room, offset - 1, 1))?.messages[0]
      t.same(stored, { offset, frame: text }, 'history holds the same bytes')
    }
  }

  zoe.send({ type: 'leave', room, id: 'bye' })
  t.equal(await ada.next((text) => text.includes('"presence"')), encodePresence(room, [], [JSON.stringify(users.zoe as Member)], 1), 'presence leave')
})
