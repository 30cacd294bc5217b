import t, { type Test } from 'tap'
import WebSocket from 'ws'
import { RoomsError } from '../src/index.js'
import { connect, type Room, type WebSocketLike } from '../src/client/index.js'
import { gate, nextEvent, nextState } from './helpers/client.js'
import { HeldStore } from './helpers/held-store.js'
import { startApp } from './helpers/server.js'

// A publish held while disconnected goes out after the rejoin; when that rejoin is refused for a passing
// reason (UNAVAILABLE) the server answers the publish NOT_IN_ROOM and the SDK holds it again. A publish the
// app made in between must not overtake it: the order of publish() calls is kept.

/**
 * A real ws client, as the SDK sees it, that can stop handing frames on once a given frame was handed on,
 * until released: the app's code then runs between two frames the server sent back to back.
 */
class Pausing implements WebSocketLike {
  static pauseAfter: ((frame: string) => boolean) | undefined
  static paused: (() => void) | undefined
  static resume: () => void = () => {}
  /** Told of each frame held back while paused. */
  static held: ((frame: string) => void) | undefined
  /** Told when the real socket closed while paused: its close event is held back too, until resumed. */
  static closedWhilePaused: (() => void) | undefined
  private readonly ws: WebSocket
  onopen: ((event: any) => void) | null = null
  onmessage: ((event: any) => void) | null = null
  onclose: ((event: any) => void) | null = null
  onerror: ((event: any) => void) | null = null

  constructor (url: string) {
    this.ws = new WebSocket(url)
    let waiting: Array<{ data: unknown }> | undefined
    let closed: { code: number, reason: string } | undefined
    this.ws.onopen = (e) => this.onopen?.(e)
    this.ws.onclose = (e) => {
      if (waiting === undefined) {
        this.onclose?.(e)
        return
      }
      closed = { code: e.code, reason: e.reason }
      Pausing.closedWhilePaused?.()
    }
    this.ws.onerror = (e) => this.onerror?.(e)
    this.ws.onmessage = (e) => {
      if (waiting !== undefined) {
        waiting.push({ data: e.data })
        Pausing.held?.(String(e.data))
        return
      }
      this.onmessage?.({ data: e.data })
      if (Pausing.pauseAfter?.(String(e.data)) !== true) return
      Pausing.pauseAfter = undefined
      waiting = []
      Pausing.resume = () => {
        const frames = waiting ?? []
        waiting = undefined
        for (const frame of frames) this.onmessage?.(frame)
        if (closed !== undefined) this.onclose?.(closed)
      }
      Pausing.paused?.()
    }
  }

  get readyState (): number { return this.ws.readyState }
  send (data: string): void { this.ws.send(data) }
  close (code?: number, reason?: string): void { this.ws.close(code, reason) }
}

const unavailable = (): RoomsError => new RoomsError('UNAVAILABLE', 'The message store is unreachable right now: retry in a moment.')

/**
 * A client (on Pausing) joined to 'r' whose connection is cut and whose rejoin the server then refuses
 * (UNAVAILABLE). `whileAway` runs while it is disconnected. Resolves once the SDK has handled the refusal,
 * with the frames after it held back; `server.down = false` lets the next rejoin through.
 */
async function refusedRejoin<T> (t: Test, whileAway: (room: Room) => T) {
  const server = { down: false }
  const upgrades = gate()
  const { app, wsUrl } = await startApp(t, {
    onJoin: () => {
      if (server.down) throw unavailable()
      return true
    }
  }, upgrades.setup)
  const client = await connect(wsUrl, { WebSocket: Pausing, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const room = await client.join('r')

  upgrades.closed = true
  const away = nextState(client, 'reconnecting')
  for (const socket of app.websocketServer.clients) socket.terminate()
  await away
  const result = whileAway(room)
  server.down = true
  const paused = new Promise<void>((resolve) => { Pausing.paused = resolve })
  Pausing.pauseAfter = (frame) => frame.includes('"UNAVAILABLE"')
  upgrades.closed = false
  await paused
  // The SDK handles the refusal in promise callbacks: let them run (a macrotask runs after every microtask).
  await new Promise((resolve) => setImmediate(resolve))
  return { app, client, room, server, result }
}

t.test('a publish held again after a refused rejoin keeps its place before one the app made meanwhile', async (t) => {
  // p1 is held for the connection; the rejoin's UNAVAILABLE and p1's NOT_IN_ROOM then come back to back,
  // and the app publishes p2 between them.
  const { client, room, server, result: p1 } = await refusedRejoin(t, (room) => room.publish('p1'))
  const delivered: unknown[] = []
  room.on('message', (m) => delivered.push(m.data))
  const p2 = room.publish('p2') // held: the room's rejoin is pending
  server.down = false
  Pausing.resume()
  const both = nextEvent<{ offset: number }>((h) => room.on('message', h), () => delivered.length === 2, client)
  const offsets = await Promise.all([p1, p2])
  t.ok(offsets[0] < offsets[1], `p1 then p2, in the order published (offsets ${offsets.join(', ')})`)
  await both
  t.same(delivered, ['p1', 'p2'])
})

t.test('publishes held since a refused rejoin go out when a put-in answers it, before those the app makes during the catch-up read', async (t) => {
  let down = false
  let refused = (): void => {}
  const refusal = new Promise<void>((resolve) => { refused = resolve })
  const store = new HeldStore()
  const { app, wsUrl } = await startApp(t, {
    adapter: store,
    onJoin: () => {
      if (!down) return true
      refused()
      throw unavailable()
    }
  })
  // A long backoff: the refused rejoin is not tried again during the test, only the put-in answers it.
  const client = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 60_000, maxDelayMs: 60_000 } })
  t.teardown(() => client.close())
  const room = await client.join('r')
  const delivered: unknown[] = []
  room.on('message', (m) => delivered.push(m.data))

  down = true
  client.reconnect()
  await refusal
  await client.ping() // sent after the rejoin: its reply follows the refusal
  await app.rooms.broadcast('r', 'missed') // offset 1, while the client is out: the put-in's answer lacks it, so the client reads it
  const p1 = room.publish('p1') // held: the room's rejoin was refused
  const read = store.hold('history')
  t.equal(await app.rooms.join(client.connectionId, 'r'), true, 'the put-in answers the waiting rejoin')
  await read.entered // the catch-up read of 'missed' is under way
  const p2 = room.publish('p2') // the membership is live: sent at once
  // The server handles the connection's frames in order: the publishes sent after the read wait for it.
  const all = nextEvent((h) => room.on('message', h), () => delivered.length === 3, client)
  read.release()
  const offsets = await Promise.all([p1, p2])
  await all
  t.ok(offsets[0] < offsets[1], `p1 then p2, in the order published (offsets ${offsets.join(', ')})`)
  t.same(delivered, ['missed', 'p1', 'p2'])
})

t.test('a publish held since a refused rejoin, sent when the rejoin succeeds on a socket already closed, is held again, not failed', async (t) => {
  // Frames after the refusal are held back: the retried rejoin's reply, then the close, reach the SDK later.
  const { app, room, server } = await refusedRejoin(t, () => undefined)
  const p1 = room.publish('p1') // held: the rejoin was refused
  const rejoined = new Promise<void>((resolve) => { Pausing.held = (frame) => { if (frame.includes('"joined"')) resolve() } })
  server.down = false // the retried rejoin succeeds
  await rejoined
  const closed = new Promise<void>((resolve) => { Pausing.closedWhilePaused = resolve })
  for (const socket of app.websocketServer.clients) socket.close(1012, 'restarting')
  await closed
  Pausing.held = undefined
  Pausing.closedWhilePaused = undefined
  // The rejoin's reply comes on a closed socket: p1 cannot be sent on it, so it waits for the next connection.
  Pausing.resume()
  const offset = await p1
  t.equal(typeof offset, 'number', `p1 went out after the reconnect (offset ${offset})`)
  t.equal(room.status, 'joined')
})
