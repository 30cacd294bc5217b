import t from 'tap'
import WebSocket from 'ws'
import { RoomsError } from '../src/index.js'
import { connect, type WebSocketLike } from '../src/client/index.js'
import { gate, nextEvent, nextState } from './helpers/client.js'
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
  private readonly ws: WebSocket
  onopen: ((event: any) => void) | null = null
  onmessage: ((event: any) => void) | null = null
  onclose: ((event: any) => void) | null = null
  onerror: ((event: any) => void) | null = null

  constructor (url: string) {
    this.ws = new WebSocket(url)
    let waiting: Array<{ data: unknown }> | undefined
    this.ws.onopen = (e) => this.onopen?.(e)
    this.ws.onclose = (e) => this.onclose?.(e)
    this.ws.onerror = (e) => this.onerror?.(e)
    this.ws.onmessage = (e) => {
      if (waiting !== undefined) {
        waiting.push({ data: e.data })
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
      }
      Pausing.paused?.()
    }
  }

  get readyState (): number { return this.ws.readyState }
  send (data: string): void { this.ws.send(data) }
  close (code?: number, reason?: string): void { this.ws.close(code, reason) }
}

t.test('a publish held again after a refused rejoin keeps its place before one the app made meanwhile', async (t) => {
  let down = false
  const upgrades = gate()
  const { app, wsUrl } = await startApp(t, {
    onJoin: () => {
      if (down) throw new RoomsError('UNAVAILABLE', 'The message store is unreachable right now: retry in a moment.')
      return true
    }
  }, upgrades.setup)
  const client = await connect(wsUrl, { WebSocket: Pausing, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const room = await client.join('r')
  const delivered: unknown[] = []
  room.on('message', (m) => delivered.push(m.data))

  upgrades.closed = true
  const away = nextState(client, 'reconnecting')
  for (const socket of app.websocketServer.clients) socket.terminate()
  await away
  const p1 = room.publish('p1') // held for the connection
  down = true
  // The rejoin's UNAVAILABLE and p1's NOT_IN_ROOM come back to back: the app publishes p2 between them.
  const paused = new Promise<void>((resolve) => { Pausing.paused = resolve })
  Pausing.pauseAfter = (frame) => frame.includes('"UNAVAILABLE"')
  upgrades.closed = false
  await paused
  // The SDK handles the refusal in promise callbacks: let them run (a macrotask runs after every microtask).
  await new Promise((resolve) => setImmediate(resolve))
  const p2 = room.publish('p2') // held: the room's rejoin is pending
  down = false
  Pausing.resume()
  const both = nextEvent<{ offset: number }>((h) => room.on('message', h), () => delivered.length === 2, client)
  const offsets = await Promise.all([p1, p2])
  t.ok(offsets[0] < offsets[1], `p1 then p2, in the order published (offsets ${offsets.join(', ')})`)
  await both
  t.same(delivered, ['p1', 'p2'])
})
