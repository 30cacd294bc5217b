import t from 'tap'
import WebSocket from 'ws'
import { connect, type RoomsClientError } from '../src/client/index.js'
import { nextState } from './helpers/client.js'
import { startApp } from './helpers/server.js'

// Between the server's close frame and the `close` event the socket is CLOSING while client.state still says
// `open`. A publish made then is held for the reconnect, as documented, rather than rejected as not sent.

const CLOSING = 2

/** The ws client, telling the test when it read the server's close frame: ws answers it by calling close() itself. */
let onClosing: (() => void) | undefined
class Observed extends WebSocket {
  override close (code?: number, reason?: string | Buffer): void {
    super.close(code, reason)
    const hook = onClosing
    onClosing = undefined
    hook?.()
  }
}

t.test('a publish made while the server\'s close frame is in but the close event is still to come is held and sent after the reconnect', async (t) => {
  const { app, wsUrl } = await startApp(t)
  const client = await connect(wsUrl, { WebSocket: Observed, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const room = await client.join('r')
  const delivered: unknown[] = []
  room.on('message', (m) => delivered.push(m.data))

  const inWindow = new Promise<{ state: string, readyState: number, held: Promise<number>, ephemeral: Promise<unknown> }>((resolve) => {
    onClosing = () => {
      const socket = (client as unknown as { socket: { readyState: number } }).socket
      resolve({ state: client.state, readyState: socket.readyState, held: room.publish('in the window'), ephemeral: room.publish('typing', { ephemeral: true }) })
    }
  })
  const reopened = nextState(client, 'open')
  // The server restarts the connection (1012: reconnect and recover).
  for (const socket of app.websocketServer.clients) socket.close(1012, 'cluster state reset')
  const window = await inWindow
  t.same({ state: window.state, readyState: window.readyState }, { state: 'open', readyState: CLOSING }, 'the window: the client says open, the socket is closing')
  await t.rejects(window.ephemeral, { code: 'DISCONNECTED' }, 'an ephemeral publish is never held')
  await reopened
  t.equal(await window.held.catch((err: RoomsClientError) => `${err.code}: ${err.message}`), 1, 'held, then published once after the rejoin')
  const next = new Promise<void>((resolve) => room.on('message', (m) => { if (m.offset === 2) resolve() }))
  t.equal(await room.publish('after'), 2)
  await next
  t.same(delivered, ['in the window', 'after'])
})
