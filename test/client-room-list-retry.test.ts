import t from 'tap'
import WebSocket from 'ws'
import { MemoryAdapter, RoomsError } from '../src/index.js'
import { connect, type RoomListChange, type RoomsClientError } from '../src/client/index.js'
import { gate, nextEvent, nextState } from './helpers/client.js'
import { startApp } from './helpers/server.js'

// The live room list is read again after each reconnect. When that read is refused for a passing reason (the
// store away), the SDK says so through `error` and tries again while the connection lasts, rather than leave
// a list that looks live and is not.

class FailingRooms extends MemoryAdapter {
  failures = 0
  override async rooms (...args: Parameters<MemoryAdapter['rooms']>): ReturnType<MemoryAdapter['rooms']> {
    if (this.failures > 0) {
      this.failures--
      throw new RoomsError('UNAVAILABLE', 'The message store is unreachable right now: retry in a moment.')
    }
    return await super.rooms(...args)
  }
}

/** Bounds a wait that fails for want of a retry (none comes): an error rather than the test's timeout. */
async function within<T> (promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const late = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms) })
  try {
    return await Promise.race([promise, late])
  } finally {
    clearTimeout(timer)
  }
}

t.test('a room list subscribe refused after a reconnect is told and tried again: the list is live again', async (t) => {
  const store = new FailingRooms()
  const upgrades = gate()
  const { app, wsUrl } = await startApp(t, { adapter: store }, upgrades.setup)
  const ada = await connect(wsUrl, { WebSocket, name: 'ada', reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
  t.teardown(() => ada.close())
  const watcher = await connect(wsUrl, { WebSocket, name: 'watcher', reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
  t.teardown(() => watcher.close())
  await ada.join('before')
  const list = await watcher.watchRooms()
  t.same(list.list().map((r) => r.name), ['before'])

  upgrades.closed = true
  const away = nextState(watcher, 'reconnecting')
  for (const socket of app.websocketServer.clients) socket.terminate()
  await away
  store.failures = 2 // the resubscribe, and its first retry
  const errors: RoomsClientError[] = []
  watcher.on('error', (err) => errors.push(err))
  const reset = nextEvent<RoomListChange>((h) => list.on('change', h), (c) => c.reset, watcher)
  upgrades.closed = false
  await nextState(watcher, 'open')
  await within(reset, 5000, 'no fresh page: the subscribe was not tried again')
  t.match(errors, [{ code: 'UNAVAILABLE' }, { code: 'UNAVAILABLE' }], 'each refusal told')

  // Live again: a room made now shows.
  const added = nextEvent<RoomListChange>((h) => list.on('change', h), () => list.rooms.has('later'), watcher)
  const bob = await connect(wsUrl, { WebSocket, name: 'bob' })
  t.teardown(() => bob.close())
  await bob.join('later')
  await within(added, 5000, 'the room list is not live')
  t.ok(list.rooms.has('later'))
})
