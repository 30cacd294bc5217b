import { monitorEventLoopDelay } from 'node:perf_hooks'
import t from 'tap'
import WebSocket from 'ws'
import { connect, type RoomListChange } from '../src/client/index.js'
import { eachAdapter } from './helpers/deployment.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { gate, nextEvent } from './helpers/client.js'

type Frame = Record<string, any>

/** The next `counts` frame that mentions `room`, and the count it gives. */
async function countOf (s: TestSocket, room: string): Promise<number> {
  const frame = await s.next((f) => f.type === 'counts' && f.rooms.some((r: { name: string }) => r.name === room), `counts of ${room}`)
  return (frame.rooms as Array<{ name: string, count: number }>).find((r) => r.name === room)?.count as number
}

eachAdapter(t, 'a rooms subscription answers a page, then pushes every member count change of the cluster', async (t, deploy) => {
  const d = await deploy({ roomListIntervalMs: 20 })
  const watcher = await TestSocket.open(d.node(0).wsUrl)
  const ada = await TestSocket.open(d.node(1).wsUrl)
  const bob = await TestSocket.open(d.node(0).wsUrl)
  t.teardown(() => Promise.all([watcher.close(), ada.close(), bob.close()]))
  await ada.join('alpha')

  const page = await watcher.request({ type: 'rooms', subscribe: true })
  t.same(page, { type: 'rooms', id: page.id, rooms: [{ name: 'alpha', count: 1 }], next: null, subscribed: true })

  // Another node's member creates a room: the watcher hears of it, with no polling.
  await ada.join('beta')
  t.equal(await countOf(watcher, 'beta'), 1, 'a new room')
  await bob.join('beta')
  t.equal(await countOf(watcher, 'beta'), 2, 'a second member')
  await ada.request({ type: 'leave', room: 'beta' })
  t.equal(await countOf(watcher, 'beta'), 1, 'a member left')
  await bob.close()
  t.equal(await countOf(watcher, 'beta'), 0, 'the last member left: count 0, the room is gone')

  // Stop: no more updates, though a second watcher (which shares the flush) gets one.
  const other = await TestSocket.open(d.node(0).wsUrl)
  t.teardown(() => other.close())
  t.match(await other.request({ type: 'rooms', subscribe: true }), { type: 'rooms', subscribed: true })
  t.match(await watcher.request({ type: 'rooms', subscribe: false }), { type: 'rooms', subscribed: false, rooms: [{ name: 'alpha', count: 1 }] })
  await ada.join('gamma')
  t.equal(await countOf(other, 'gamma'), 1)
  await watcher.sync()
  t.same(watcher.pending('counts'), [], 'an unsubscribed connection gets no counts')
})

eachAdapter(t, 'a subscription with a prefix hears only its rooms; pages follow after and limit', async (t, deploy) => {
  const d = await deploy({ roomListIntervalMs: 20 })
  const watcher = await TestSocket.open(d.node(0).wsUrl)
  const ada = await TestSocket.open(d.node(1).wsUrl)
  t.teardown(() => Promise.all([watcher.close(), ada.close()]))
  for (const room of ['chat:c', 'chat:a', 'chat:b', 'other']) await ada.join(room)

  const first = await watcher.request({ type: 'rooms', subscribe: true, prefix: 'chat:', limit: 2 })
  t.same(first.rooms, [{ name: 'chat:a', count: 1 }, { name: 'chat:b', count: 1 }])
  t.equal(first.next, 'chat:b')
  const second = await watcher.request({ type: 'rooms', prefix: 'chat:', after: first.next, limit: 2 })
  t.same(second, { type: 'rooms', id: second.id, rooms: [{ name: 'chat:c', count: 1 }], next: null, subscribed: true }, 'a page without subscribe keeps the subscription')

  await ada.join('zzz')
  await ada.join('chat:d')
  const update = await watcher.next((f) => f.type === 'counts')
  t.same(update.rooms, [{ name: 'chat:d', count: 1 }], 'the other room is not mentioned')
  await ada.request({ type: 'leave', room: 'chat:c' })
  t.equal(await countOf(watcher, 'chat:c'), 0, 'a room beyond the first page is followed too')
})

eachAdapter(t, 'updates are coalesced: one frame per interval at most, the latest count per room', async (t, deploy) => {
  const interval = 150
  const d = await deploy({ roomListIntervalMs: interval })
  const watcher = await TestSocket.open(d.node(0).wsUrl)
  t.teardown(() => watcher.close())
  await watcher.request({ type: 'rooms', subscribe: true })
  // The server sends a frame an interval after the last at the earliest; this process (server and
  // clients alike) reads each one late by up to its longest event-loop stall, so two arrivals may
  // stand closer by that much: a busy turn delays the first read and not the second.
  const stalls = monitorEventLoopDelay({ resolution: 1 })
  stalls.enable()
  t.teardown(() => stalls.disable())
  const times: number[] = []
  const latest = new Map<string, number>()
  const counts: Frame[] = []
  watcher.ws.on('message', (data) => {
    const frame = JSON.parse(data.toString()) as Frame
    if (frame.type !== 'counts') return
    times.push(Date.now())
    counts.push(frame)
    for (const { name, count } of frame.rooms) latest.set(name, count)
  })

  // 30 people join and leave three rooms as fast as they can.
  const sockets = await Promise.all(Array.from({ length: 30 }, async (_, i) => await TestSocket.open(d.node(i).wsUrl)))
  t.teardown(() => Promise.all(sockets.map(async (s) => await s.close())))
  await Promise.all(sockets.map(async (s, i) => { await s.join(`busy-${i % 3}`) }))
  await Promise.all(sockets.slice(0, 15).map(async (s, i) => { await s.request({ type: 'leave', room: `busy-${i % 3}` }) }))
  // Waits on the event: the frame that brings every room to its final count.
  const expected = await d.app.rooms.list({ prefix: 'busy-' })
  while (!expected.rooms.every(({ name, count }) => latest.get(name) === count)) await watcher.next((f) => f.type === 'counts')
  t.same(expected.rooms.map((r) => r.count), [5, 5, 5])
  t.ok(counts.length < 60, `${counts.length} frames for 90 changes`)
  const slack = 5 + stalls.max / 1e6
  // A stall as long as the interval would make the bound say nothing: then the gaps are not judged.
  if (slack >= interval) {
    t.comment(`the gaps are not judged: the process stalled for ${Math.round(slack)} ms`)
  } else {
    for (let i = 1; i < times.length; i++) {
      const gap = (times[i] as number) - (times[i - 1] as number)
      t.ok(gap >= interval - slack, `frames ${i - 1} and ${i} are an interval apart (${gap} ms; reads late by up to ${Math.round(slack)} ms)`)
    }
  }
  for (const frame of counts) {
    const names = frame.rooms.map((r: { name: string }) => r.name)
    t.equal(new Set(names).size, names.length, 'one entry per room in a frame')
  }
})

t.test('a frame carries at most 1000 rooms; the rest follow in the next interval', async (t) => {
  const { wsUrl } = await startApp(t, { roomListIntervalMs: 1000, maxRoomsPerConnection: 2000, maxFramesPerSecond: 10_000, frameBurst: 2000 })
  const watcher = await TestSocket.open(wsUrl)
  const ada = await TestSocket.open(wsUrl)
  t.teardown(() => Promise.all([watcher.close(), ada.close()]))
  await watcher.request({ type: 'rooms', subscribe: true })
  const names = Array.from({ length: 1001 }, (_, i) => `r${i}`)
  await Promise.all(names.map(async (room) => await ada.join(room)))
  const seen = new Set<string>()
  while (seen.size < names.length) {
    const frame = await watcher.next((f) => f.type === 'counts')
    t.ok(frame.rooms.length <= 1000, `a frame of ${frame.rooms.length as number} rooms`)
    for (const room of frame.rooms) seen.add(room.name)
  }
  t.equal(seen.size, 1001)
})

t.test('bad rooms frames get INVALID_FRAME and the connection stays', async (t) => {
  const { wsUrl } = await startApp(t)
  const s = await TestSocket.open(wsUrl)
  t.teardown(() => s.close())
  for (const frame of [
    { type: 'rooms', limit: 0 },
    { type: 'rooms', limit: 1001 },
    { type: 'rooms', prefix: 'x'.repeat(129) },
    { type: 'rooms', subscribe: 'yes' },
    { type: 'rooms', after: 5 }
  ]) {
    const reply = await s.request(frame)
    t.match(reply, { type: 'error', code: 'INVALID_FRAME', message: /Invalid "rooms" frame/ }, JSON.stringify(frame))
  }
  t.match(await s.request({ type: 'rooms' }), { type: 'rooms', rooms: [], next: null, subscribed: false })
})

t.test('the room list follows rest: off with rest:false unless roomList:true; FORBIDDEN with a sentence', async (t) => {
  const off = await startApp(t, { rest: false })
  const s = await TestSocket.open(off.wsUrl)
  t.teardown(() => s.close())
  t.match(await s.request({ type: 'rooms', subscribe: true }), { type: 'error', code: 'FORBIDDEN', message: 'This server does not offer its room list.' })
  t.match(await s.request({ type: 'rooms' }), { type: 'error', code: 'FORBIDDEN' })
  t.equal((await s.join('a')).type, 'joined', 'the connection stays')

  const on = await startApp(t, { rest: false, roomList: true })
  const w = await TestSocket.open(on.wsUrl)
  t.teardown(() => w.close())
  t.match(await w.request({ type: 'rooms', subscribe: true }), { type: 'rooms', subscribed: true })
})

t.test('with token auth, a rooms frame before auth is refused with 4001 like any other', async (t) => {
  const { wsUrl } = await startApp(t, { verifyToken: async (token) => { if (token !== 'good') throw new Error('no'); return { user: { id: 'u1', name: 'ada' } } } })
  const s = await TestSocket.connect(wsUrl)
  s.send({ type: 'rooms', subscribe: true, id: 1 })
  const closed = await s.closed
  t.match(s.frames, [{ type: 'error', code: 'UNAUTHORIZED', id: 1 }])
  t.equal(closed.code, 4001)
  const ok = await TestSocket.connect(wsUrl)
  t.teardown(() => ok.close())
  await ok.authenticate('good')
  t.match(await ok.request({ type: 'rooms', subscribe: true }), { type: 'rooms', subscribed: true })
})

eachAdapter(t, 'client.watchRooms(): a live list kept by updates, read again after a reconnect', async (t, deploy) => {
  const g = gate()
  const d = await deploy({ roomListIntervalMs: 20 }, (app) => g.setup(app))
  const watcher = await connect(d.node(0).wsUrl, { WebSocket, name: 'w', reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
  const ada = await connect(d.node(1).wsUrl, { WebSocket, name: 'ada' })
  t.teardown(() => { watcher.close(); ada.close() })
  await ada.join('lobby')
  const list = await watcher.watchRooms()
  t.same(list.list(), [{ name: 'lobby', count: 1 }])

  const created = nextEvent<RoomListChange>((h) => list.on('change', h), (c) => c.changed.some((r) => r.name === 'new-room'), watcher)
  await ada.join('new-room')
  t.same(await created, { changed: [{ name: 'new-room', count: 1 }], reset: false })
  t.same(list.list(), [{ name: 'lobby', count: 1 }, { name: 'new-room', count: 1 }])

  const gone = nextEvent<RoomListChange>((h) => list.on('change', h), (c) => c.changed.some((r) => r.name === 'lobby'), watcher)
  await ada.room('lobby')?.leave()
  await gone
  t.same(list.list(), [{ name: 'new-room', count: 1 }], 'a room with no members leaves the list')

  // While the watcher is away a room appears; the fresh page after the reconnect has it.
  const reset = nextEvent<RoomListChange>((h) => list.on('change', h), (c) => c.reset, watcher)
  g.closed = true
  watcher.reconnect()
  await ada.join('while-away')
  g.closed = false
  await reset
  t.same(list.list().map((r) => r.name), ['new-room', 'while-away'])

  list.stop()
  await watcher.ping()
})

t.test('client.watchRooms() rejects with FORBIDDEN when the server does not offer the list', async (t) => {
  const { wsUrl } = await startApp(t, { rest: false })
  const client = await connect(wsUrl, { WebSocket })
  t.teardown(() => client.close())
  await t.rejects(client.watchRooms(), { code: 'FORBIDDEN' })
})
