import { once } from 'node:events'
import { connect as connectTcp, createServer, type Socket } from 'node:net'
import t, { type Test } from 'tap'
import WebSocket from 'ws'
import { connect, type CloseInfo, type RoomsClient, type StateChange, type WebSocketConstructor } from '../src/client/index.js'
import { startApp } from './helpers/server.js'

/** Every state change of a client, in order. */
function record (client: RoomsClient): StateChange[] {
  const changes: StateChange[] = []
  client.on('state', (state, change) => {
    if (state !== change.state) throw new Error(`state ${state} came with a change of ${change.state}`)
    changes.push(change)
  })
  return changes
}

async function nextState (client: RoomsClient, state: StateChange['state']): Promise<StateChange> {
  return await new Promise((resolve) => {
    const off = client.on('state', (_state, change) => { if (change.state === state) { off(); resolve(change) } })
  })
}

/** What an app writes to show the state: it compiles only if the change narrows on its state. */
function describe (change: StateChange): string {
  switch (change.state) {
    case 'open': return `open as ${change.welcome.connectionId}`
    case 'reconnecting': return `reconnecting (attempt ${change.attempt}) after ${change.code} ${change.reason}`
    case 'closed': return `closed: ${change.code} ${change.reason}${change.byClient ? ' (by this client)' : ''}`
  }
}

t.test('a server shutting down is told as 1001 "Server shutting down": reconnecting, or closed without reconnect', async (t) => {
  const { wsUrl, app } = await startApp(t)
  const stays = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 50 } })
  const once = await connect(wsUrl, { WebSocket, reconnect: false })
  t.teardown(() => { stays.close(); once.close() })
  const reconnecting = nextState(stays, 'reconnecting')
  const closed = nextState(once, 'closed')
  await app.close()
  const expected: CloseInfo = { code: 1001, reason: 'Server shutting down', byClient: false }
  t.match(await reconnecting, { state: 'reconnecting', ...expected, attempt: 1 })
  t.same(await closed, { state: 'closed', ...expected })
  t.same(once.lastClose, expected)
  t.match(describe(await closed), 'closed: 1001 Server shutting down')
  await t.rejects(once.join('r'), { code: 'CLOSED', close: expected }, 'later calls say why the client closed')
})

t.test('a close with 4003 and a reason (disconnected by the server) ends the client for good with that reason', async (t) => {
  const { wsUrl, app } = await startApp(t)
  const client = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
  const changes = record(client)
  const closed = nextState(client, 'closed')
  for (const socket of app.websocketServer.clients) socket.close(4003, 'kicked by admin')
  t.same(await closed, { state: 'closed', code: 4003, reason: 'kicked by admin', byClient: false })
  t.same(changes.map((c) => c.state), ['closed'], 'no reconnect after the server said go')
})

t.test('1012 (state reset) reconnects; reconnecting says why, open carries the welcome', async (t) => {
  const { wsUrl, app } = await startApp(t)
  const client = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const changes = record(client)
  const open = nextState(client, 'open')
  for (const socket of app.websocketServer.clients) socket.close(1012, 'Room state was reset: reconnect and rejoin')
  const opened = await open
  t.equal(changes.length, 2)
  t.match(changes[0], { state: 'reconnecting', code: 1012, reason: 'Room state was reset: reconnect and rejoin', byClient: false, attempt: 1 })
  t.ok((changes[0] as { delayMs: number }).delayMs >= 0 && (changes[0] as { delayMs: number }).delayMs < 10)
  t.match(opened, { state: 'open', welcome: { type: 'welcome', connectionId: client.connectionId } })
  t.same(client.lastClose, { code: 1012, reason: 'Room state was reset: reconnect and rejoin', byClient: false })
})

t.test('close() and reconnect() are told as the client\'s own, with code 1000', async (t) => {
  const { wsUrl } = await startApp(t)
  const client = await connect(wsUrl, { WebSocket })
  const changes = record(client)
  const open = nextState(client, 'open')
  client.reconnect()
  await open
  client.close()
  t.match(changes, [
    { state: 'reconnecting', code: 1000, reason: 'reconnect() was called', byClient: true, attempt: 0, delayMs: 0 },
    { state: 'open' },
    { state: 'closed', code: 1000, reason: 'client closed', byClient: true }
  ])
  client.close()
  t.equal(changes.length, 3, 'closing twice is told once')
})

t.test('after maxAttempts failed attempts the client closes with the last close, and waiting calls reject with CLOSED', async (t) => {
  const { wsUrl, app } = await startApp(t)
  const client = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 1, maxDelayMs: 5, maxAttempts: 2 } })
  const changes = record(client)
  const room = await client.join('r')
  const closed = nextState(client, 'closed')
  await app.close()
  const queued = room.publish('never sent')
  const waiting = client.join('other')
  const last = await closed
  t.match(changes.map((c) => c.state), ['reconnecting', 'reconnecting', 'closed'])
  t.match(last, { state: 'closed', code: 1006, byClient: false }, 'the refused attempt, not the shutdown')
  await t.rejects(queued, { code: 'CLOSED', close: { code: 1006 } })
  await t.rejects(waiting, { code: 'CLOSED', room: 'other' })
})

t.test('a first connection that is refused rejects with CONNECT_FAILED and the close it got', async (t) => {
  const { wsUrl } = await startApp(t, { authenticate: () => undefined })
  await t.rejects(connect(wsUrl, { WebSocket }), { code: 'CONNECT_FAILED', message: /close code 1006/, close: { code: 1006, byClient: false } })
})

t.test('a URL the WebSocket implementation refuses rejects with CONNECT_FAILED', async (t) => {
  await t.rejects(connect('not a url', { WebSocket }), { code: 'CONNECT_FAILED', message: /Could not connect to not a url/ })
})

/** `ws` counting the sockets the client makes: a client that reopened after close() would make one more. */
function countingWebSocket (): { Impl: WebSocketConstructor, made: () => number } {
  let made = 0
  class Counting extends WebSocket {
    constructor (url: string) {
      super(url)
      made++
    }
  }
  return { Impl: Counting, made: () => made }
}

t.test('close() from a state handler on reconnecting stops the client: no new socket, no open, after reconnect() or a drop', async (t) => {
  const { wsUrl, app } = await startApp(t)
  for (const how of ['reconnect()', 'a drop'] as const) {
    await t.test(how, async (t) => {
      const { Impl, made } = countingWebSocket()
      // A retry delay of at most 1 ms: a timer the reopen would use fires before the 1 ms one below.
      const client = await connect(wsUrl, { WebSocket: Impl, reconnect: { initialDelayMs: 1, maxDelayMs: 1 } })
      t.teardown(() => client.close())
      const changes = record(client)
      client.on('state', (state) => { if (state === 'reconnecting') client.close() })
      const closed = nextState(client, 'closed')
      if (how === 'reconnect()') client.reconnect()
      else for (const socket of app.websocketServer.clients) socket.close(1012, 'Room state was reset: reconnect and rejoin')
      await closed
      await new Promise((resolve) => setTimeout(resolve, 1))
      t.equal(made(), 1, 'no second socket')
      t.equal(client.state, 'closed')
      t.same(changes.map((c) => c.state), ['reconnecting', 'closed'])
      await t.rejects(client.join('r'), { code: 'CLOSED' })
    })
  }
})

t.test('a stalled process does not drop a healthy quiet connection: the client judges by its unanswered ping, after reading what waits', async (t) => {
  // heartbeatMs 50: the client pings after 50 ms of quiet and checks every 25 ms.
  const { wsUrl } = await startApp(t, { heartbeatMs: 50 })
  const client = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 1, maxDelayMs: 1 } })
  t.teardown(() => client.close())
  await client.join('quiet')
  const changes = record(client)
  const id = client.connectionId
  // Created after the client's watchdog with its period, so each stall follows a tick in the same turn:
  // 150 ms (three heartbeats by the clock) pass with the server's answer to the ping unread, as after a
  // long GC pause, or as between the ticks of a hidden browser tab's throttled timers.
  let stalls = 0
  let stall: ReturnType<typeof setInterval> | undefined
  const stalled = new Promise<void>((resolve) => {
    stall = setInterval(() => {
      const until = Date.now() + 150
      while (Date.now() < until) { /* busy */ }
      if (++stalls === 6) resolve()
    }, 25)
  })
  t.teardown(() => clearInterval(stall))
  await stalled
  clearInterval(stall)
  // A round trip after the stalls: a verdict taken during them has had its turn by now.
  await client.ping()
  t.same(changes, [], 'no reconnect')
  t.equal(client.connectionId, id, 'the same connection')
})

/**
 * A TCP proxy to `target` that can freeze: then nothing passes either way and
 * neither side is told, as when a link dies without a reset.
 */
async function freezableProxy (t: Test, target: number): Promise<{ port: number, freeze: () => void }> {
  const pairs: Array<[Socket, Socket]> = []
  const server = createServer((inbound) => {
    const outbound = connectTcp(target, '127.0.0.1')
    inbound.pipe(outbound)
    outbound.pipe(inbound)
    for (const socket of [inbound, outbound]) socket.on('error', () => {})
    pairs.push([inbound, outbound])
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => {
    for (const pair of pairs) for (const socket of pair) socket.destroy()
    await new Promise((resolve) => server.close(resolve))
  })
  const freeze = (): void => {
    for (const [inbound, outbound] of pairs) {
      inbound.unpipe(outbound)
      outbound.unpipe(inbound)
      inbound.pause()
      outbound.pause()
    }
  }
  return { port: (server.address() as { port: number }).port, freeze }
}

t.test('a link that dies without a word is left: the unanswered ping ends in reconnecting with "No traffic from the server"', async (t) => {
  const { app } = await startApp(t, { heartbeatMs: 50 })
  const proxy = await freezableProxy(t, (app.server.address() as { port: number }).port)
  const client = await connect(`ws://127.0.0.1:${proxy.port}/ws`, { WebSocket, reconnect: { initialDelayMs: 1, maxDelayMs: 1 } })
  t.teardown(() => client.close())
  const reconnecting = nextState(client, 'reconnecting')
  proxy.freeze()
  // A guard, not a wait: if the watchdog never fires, fail after 100 heartbeats rather than hang.
  let guard: ReturnType<typeof setTimeout> | undefined
  const never = new Promise<never>((_resolve, reject) => { guard = setTimeout(() => reject(new Error('not left within 5 s')), 5000) })
  t.teardown(() => clearTimeout(guard))
  t.match(await Promise.race([reconnecting, never]), { state: 'reconnecting', code: 1006, reason: 'No traffic from the server', byClient: true })
})

t.test('reconnect() from a state handler on reconnecting: one new socket, no ghost connection left on the server', async (t) => {
  const { wsUrl, app } = await startApp(t)
  const { Impl, made } = countingWebSocket()
  const client = await connect(wsUrl, { WebSocket: Impl, reconnect: { initialDelayMs: 1, maxDelayMs: 1 } })
  t.teardown(() => client.close())
  let again = true
  client.on('state', (state) => {
    if (state === 'reconnecting' && again) {
      again = false
      client.reconnect()
    }
  })
  const open = nextState(client, 'open')
  for (const socket of app.websocketServer.clients) socket.close(1012, 'Room state was reset: reconnect and rejoin')
  await open
  // Past the retry delay: a timer of the interrupted attempt would have opened its socket by now.
  await new Promise((resolve) => setTimeout(resolve, 1))
  await client.ping()
  t.equal(made(), 2, 'the first socket and one more')
  t.equal(app.rooms.connections, 1, 'no orphaned socket on the server')
  t.equal(client.state, 'open')
})
