import t from 'tap'
import { MemoryAdapter } from '../src/index.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'

const KB = 1024

t.test('maxHistoryBytes bounds all retained history; the least recently published rooms give theirs up first', async (t) => {
  const adapter = new MemoryAdapter()
  const budget = 64 * KB
  const { url, app } = await startApp(t, { adapter, maxHistoryBytes: budget, historySize: 100 })
  const big = 'x'.repeat(4 * KB)
  for (let room = 0; room < 20; room++) {
    for (let i = 0; i < 5; i++) await app.rooms.broadcast(`r${room}`, big)
    t.ok(adapter.stats().retainedBytes <= budget, `after room ${room}: ${adapter.stats().retainedBytes} bytes retained, within ${budget}`)
  }
  const stats = adapter.stats()
  t.ok(stats.retainedBytes > budget / 2, `the budget is used, not wasted (${stats.retainedBytes} bytes)`)
  t.equal((await fetch(`${url}/rooms/r0/messages`)).status, 404, 'the oldest room\'s history is gone')
  const newest = await (await fetch(`${url}/rooms/r19/messages`)).json() as { messages: unknown[] }
  t.equal(newest.messages.length, 5, 'the newest room keeps all of its history')
  t.equal(stats.rooms, stats.roomsWithHistory, 'rooms that lost their history and have no members are forgotten')
})

t.test('one room alone over the budget gives up its own oldest messages', async (t) => {
  const adapter = new MemoryAdapter()
  const { url, app } = await startApp(t, { adapter, maxHistoryBytes: 10 * KB, historySize: 100 })
  for (let i = 1; i <= 10; i++) await app.rooms.broadcast('r', { i, pad: 'y'.repeat(2 * KB) })
  const { messages } = await (await fetch(`${url}/rooms/r/messages`)).json() as { messages: Array<{ offset: number }> }
  // A ring in the budget's buffer: message 10, two bytes longer, needs 7's place as well as 6's.
  t.same(messages.map((m) => m.offset), [8, 9, 10], 'the newest messages that fit')
  t.ok(adapter.stats().retainedBytes <= 10 * KB)
})

t.test('a message larger than the whole budget is delivered but not retained', async (t) => {
  const adapter = new MemoryAdapter()
  const { wsUrl, app } = await startApp(t, { adapter, maxHistoryBytes: 1 * KB })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  await a.join('r')
  t.equal(await app.rooms.broadcast('r', 'z'.repeat(2 * KB)), 1)
  t.match(await a.next((f) => f.type === 'message'), { offset: 1 })
  t.same(adapter.stats(), { rooms: 1, roomsWithHistory: 0, retainedMessages: 0, retainedBytes: 0 })
})

t.test('historySize 0: broadcasts to rooms without members leave nothing behind', async (t) => {
  const adapter = new MemoryAdapter()
  const { app } = await startApp(t, { adapter, historySize: 0 })
  for (let i = 0; i < 10_000; i++) await app.rooms.broadcast(`empty-${i}`, i)
  t.same(adapter.stats(), { rooms: 0, roomsWithHistory: 0, retainedMessages: 0, retainedBytes: 0 })
  t.equal(await app.rooms.history('empty-1'), null)
})

t.test('history that expires or is evicted gives its bytes back', async (t) => {
  let now = 1_000_000
  const adapter = new MemoryAdapter({ now: () => now })
  const { app } = await startApp(t, { adapter, historyTtlMs: 1000, maxHistoryRooms: 2 })
  await app.rooms.broadcast('a', 1)
  await app.rooms.broadcast('b', 2)
  await app.rooms.broadcast('c', 3)
  t.equal(adapter.stats().roomsWithHistory, 2)
  now += 1000
  t.equal(await app.rooms.history('b'), null, 'expired on read')
  t.equal(await app.rooms.history('c'), null)
  t.same(adapter.stats(), { rooms: 0, roomsWithHistory: 0, retainedMessages: 0, retainedBytes: 0 })
})

t.test('a maxHistoryBytes too small to keep a message is warned about at registration', async (t) => {
  const warnings = async (options: { maxHistoryBytes: number, historySize?: number }): Promise<unknown[]> => {
    const logged: Array<{ msg: string }> = []
    const stream = { write: (line: string) => { logged.push(JSON.parse(line)) } }
    await startApp(t, { adapter: new MemoryAdapter(), ...options }, undefined, { logger: { level: 'warn', stream } })
    return logged.filter((l) => l.msg.includes('maxHistoryBytes')).map(({ level, maxHistoryBytes }: Record<string, unknown>) => ({ level, maxHistoryBytes }))
  }
  t.same(await warnings({ maxHistoryBytes: 1500 }), [{ level: 40, maxHistoryBytes: 1500 }])
  t.same(await warnings({ maxHistoryBytes: 2048 }), [], 'a room named "r" keeps a message of up to about 900 bytes')
  t.same(await warnings({ maxHistoryBytes: 0 }), [], '0 says no history plainly')
  t.same(await warnings({ maxHistoryBytes: 1500, historySize: 0 }), [], 'nor with historySize 0')
})
