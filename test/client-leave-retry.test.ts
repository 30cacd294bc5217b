import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import WebSocket, { type WebSocket as ServerSocket } from 'ws'
import { MemoryAdapter, RoomsError } from '../src/index.js'
import { connect, type PresenceChange, type RoomsClientError, type WebSocketConstructor } from '../src/client/index.js'
import { nextEvent, nextState } from './helpers/client.js'
import { fillWait, LIMITS, slowJoins } from './helpers/refused-leave.js'
import { serverSockets, startApp } from './helpers/server.js'
import { guard } from './helpers/until.js'

// room.leave() refused for a passing reason (here RATE_LIMITED: the leave did not fit behind a slow onJoin) drops
// the handle at once, but the server keeps the connection in the room: present to everyone else, sent the room's
// frames. The SDK sends the leave again, with the rejoin backoff, while no handle has the room. It does so too for
// a leave refused with UNAVAILABLE (a user's adapter whose store is away) and for one that timed out; a new
// connection and close() end the retries.

t.test('a leave the server refused is sent again: the others see the user leave', async (t) => {
  const slow = slowJoins()
  const { app, wsUrl } = await startApp(t, { ...LIMITS, onJoin: slow.onJoin })
  const bob = await connect(wsUrl, { WebSocket, name: 'bob', reconnect: false })
  t.teardown(() => bob.close())
  const rb = await bob.join('lobby')
  const presence = async (match: (change: PresenceChange) => boolean, what: string): Promise<PresenceChange> =>
    await nextEvent<PresenceChange>((h) => rb.on('presence', h), match, { client: bob, room: rb, what })
  const adaIn = presence((c) => c.joins.some((m) => m.name === 'ada'), 'ada joining, in bob\'s presence')

  const ada = await connect(wsUrl, { WebSocket, name: 'ada', reconnect: false })
  t.teardown(() => ada.close())
  const first = await ada.join('lobby')
  await adaIn
  const adaOut = presence((c) => c.leaves.length > 0, 'ada leaving, in bob\'s presence')
  const blocked = ada.join('slow')
  await slow.entered
  fillWait(ada.room('slow'))
  const refused = await first.leave().then(() => undefined, (err: RoomsClientError) => err)
  t.equal(refused?.code, 'RATE_LIMITED', 'the leave was refused, not handled')
  slow.release()
  await blocked

  const change = await adaOut
  t.same(change.leaves.map((m) => m.name), ['ada'], 'bob sees ada leave')
  t.same((await app.rooms.get('lobby'))?.members.map((m) => m.name), ['bob'], 'the server no longer lists her')
})

t.test('a leave the server refused, then the room joined again before the retry is due: the retry is not sent, the user stays', async (t) => {
  const slow = slowJoins()
  const { app, wsUrl } = await startApp(t, { ...LIMITS, onJoin: slow.onJoin })
  // The retry comes within 50 ms of the refusal.
  const ceiling = 50
  const ada = await connect(wsUrl, { WebSocket, name: 'ada', reconnect: { initialDelayMs: ceiling, maxDelayMs: ceiling, maxAttempts: 0 } })
  t.teardown(() => ada.close())
  const [socket] = serverSockets(app)
  let leaves = 0
  // The plugin's listener was added first: when this one runs, the server has refused the leave. Opening the gate
  // here empties the wait before the refusal reaches ada, so that the join she sends on it is not refused too.
  socket?.on('message', (data: Buffer) => {
    if (!data.toString().includes('"type":"leave"')) return
    leaves++
    slow.release()
  })
  const first = await ada.join('lobby')
  const blocked = ada.join('slow')
  await slow.entered
  fillWait(ada.room('slow'))
  const refused = await first.leave().then(() => undefined, (err: RoomsClientError) => err)
  t.equal(refused?.code, 'RATE_LIMITED', 'the leave was refused, not handled')
  // Before any timer runs: the retry is armed, not due.
  const again = ada.join('lobby')
  // Set after the retry's timer, for the backoff's ceiling: Node runs it after that one.
  const due = new Promise((resolve) => setTimeout(resolve, ceiling))
  await blocked
  const room = await again
  await due
  await ada.ping() // handled after anything sent before it
  t.equal(leaves, 1, 'the refused leave only: no retry once the room is joined again')
  t.equal(room.status, 'joined')
  t.same((await app.rooms.get('lobby'))?.members.map((m) => m.name), ['ada'], 'she is still in the room')
})

/** A user's adapter over a store that can be away: while `away`, `leave` rejects with UNAVAILABLE and changes nothing. */
class AwayStore extends MemoryAdapter {
  away = false
  override async leave (...args: Parameters<MemoryAdapter['leave']>): ReturnType<MemoryAdapter['leave']> {
    if (this.away) throw new RoomsError('UNAVAILABLE', 'The message store is unreachable right now: retry in a moment.')
    return await super.leave(...args)
  }
}

/** A user's adapter over a slow store: while `held` is set, each `leave` waits for it before it is done. */
class SlowStore extends MemoryAdapter {
  held: Promise<void> | undefined
  override async leave (...args: Parameters<MemoryAdapter['leave']>): ReturnType<MemoryAdapter['leave']> {
    await this.held
    return await super.leave(...args)
  }
}

/**
 * The `leave` frames of `room` a server-side socket receives: `reached(n)` resolves once the nth came, and fails
 * at once if the socket closes first.
 */
function leavesOf (socket: ServerSocket, room: string): { count: () => number, reached: (n: number, what: string) => Promise<void> } {
  let count = 0
  const waiters = new Set<() => void>()
  socket.on('message', (data: Buffer) => {
    const frame = JSON.parse(data.toString()) as { type?: string, room?: string }
    if (frame.type !== 'leave' || frame.room !== room) return
    count++
    for (const wake of [...waiters]) wake()
  })
  return {
    count: () => count,
    reached: async (n, what) => await guard(new Promise<void>((resolve) => {
      const check = (): void => { if (count >= n) { waiters.delete(check); resolve() } }
      waiters.add(check)
      check()
    }), what, { abort: [once(socket, 'close')] })
  }
}

/** Bob, in `lobby` on his own client: `change(match, what)` is the next change of its presence that matches. */
async function watcher (t: Test, wsUrl: string): Promise<(match: (change: PresenceChange) => boolean, what: string) => Promise<PresenceChange>> {
  const bob = await connect(wsUrl, { WebSocket, name: 'bob', reconnect: false })
  t.teardown(() => bob.close())
  const rb = await bob.join('lobby')
  return async (match, what) => await nextEvent<PresenceChange>((h) => rb.on('presence', h), match, { client: bob, room: rb, what })
}

/** A ws client that also keeps the text of every frame it receives, for the test to read the server's answers. */
function recordingWebSocket (): { WebSocket: WebSocketConstructor, frames: Array<{ type: string, code?: string, room?: string }> } {
  const frames: Array<{ type: string, code?: string, room?: string }> = []
  class Recording extends WebSocket {
    constructor (url: string, protocols?: string[]) {
      super(url, protocols)
      this.on('message', (data: Buffer) => { frames.push(JSON.parse(data.toString())) })
    }
  }
  return { WebSocket: Recording, frames }
}

t.test('a leave refused with UNAVAILABLE (the store away) is sent again; its answer, NOT_IN_ROOM, ends the retries', async (t) => {
  const store = new AwayStore()
  const { app, wsUrl } = await startApp(t, { adapter: store })
  const ceiling = 20
  const recording = recordingWebSocket()
  const ada = await connect(wsUrl, { WebSocket: recording.WebSocket, name: 'ada', reconnect: { initialDelayMs: ceiling, maxDelayMs: ceiling } })
  t.teardown(() => ada.close())
  const [socket] = serverSockets(app)
  if (socket === undefined) throw new Error('no server-side socket for ada')
  const leaves = leavesOf(socket, 'lobby')
  const first = await ada.join('lobby')

  store.away = true
  const refused = await first.leave().then(() => undefined, (err: RoomsClientError) => err)
  t.equal(refused?.code, 'UNAVAILABLE', 'the leave was refused for a passing reason')
  await leaves.reached(2, 'the refused leave sent again')
  store.away = false
  // Handled after the retry, so its answer has come by the pong.
  await ada.ping()
  // The node let go of the membership whatever the store answered (see plugin.md, Adapters): the retry is not in the room.
  t.same(recording.frames.filter((f) => f.type === 'error' && f.room === 'lobby').map((f) => f.code), ['UNAVAILABLE', 'NOT_IN_ROOM'],
    'the first leave refused, the retry answered NOT_IN_ROOM')
  // A third leave would be armed by now, for at most the ceiling; this timer, set after it, runs after it.
  await new Promise((resolve) => setTimeout(resolve, ceiling))
  await ada.ping()
  t.equal(leaves.count(), 2, 'no leave after the NOT_IN_ROOM')
  t.equal(ada.room('lobby'), undefined, 'no handle came back')
})

t.test('a leave that timed out is sent again; once the server answers, the user is out of the room and the retries end', async (t) => {
  const store = new SlowStore()
  const { app, wsUrl } = await startApp(t, { adapter: store })
  const ceiling = 20
  // Long enough for a welcome and a join on a busy machine; the leave held by the store outlasts it.
  const requestTimeoutMs = 1_500
  const ada = await connect(wsUrl, { WebSocket, name: 'ada', requestTimeoutMs, reconnect: { initialDelayMs: ceiling, maxDelayMs: ceiling } })
  t.teardown(() => ada.close())
  const [socket] = serverSockets(app)
  if (socket === undefined) throw new Error('no server-side socket for ada')
  const leaves = leavesOf(socket, 'lobby')
  const presence = await watcher(t, wsUrl)
  const adaIn = presence((c) => c.joins.some((m) => m.name === 'ada'), 'ada joining, in bob\'s presence')
  const first = await ada.join('lobby')
  await adaIn

  let open!: () => void
  store.held = new Promise<void>((resolve) => { open = resolve })
  t.teardown(() => open())
  const refused = await first.leave().then(() => undefined, (err: RoomsClientError) => err)
  t.equal(refused?.code, 'TIMEOUT', 'the leave timed out')
  // The retry waits on the server behind the leave the store holds, which the server has not answered.
  await leaves.reached(2, 'the timed-out leave sent again')
  t.same((await app.rooms.get('lobby'))?.members.map((m) => m.name).sort(), ['ada', 'bob'], 'the store still has her')
  // The store does the leave only once opened: no presence before.
  const adaOut = presence((c) => c.leaves.some((m) => m.name === 'ada'), 'ada leaving, in bob\'s presence')
  open()
  const change = await adaOut
  t.same(change.leaves.map((m) => m.name), ['ada'], 'bob sees ada leave')
  // The retry, handled after the held leave, is answered before this pong: the retries have their answer.
  await ada.ping()
  // A third leave would be armed by now, for at most the ceiling; this timer, set after it, runs after it.
  await new Promise((resolve) => setTimeout(resolve, ceiling))
  await ada.ping()
  t.equal(leaves.count(), 2, 'the leave and one retry: none after its answer')
  t.same((await app.rooms.get('lobby'))?.members.map((m) => m.name), ['bob'], 'the server no longer lists her')
})

t.test('a connection that drops before the leave\'s retry is due: the new connection is in no room, and no stale leave goes out on it', async (t) => {
  const slow = slowJoins()
  const { app, wsUrl } = await startApp(t, { ...LIMITS, onJoin: slow.onJoin })
  t.teardown(() => slow.release())
  // Retries and reconnects within 200 ms: reconnect() below makes the new connection come before most retries
  // would be due, so that a retry the new connection did not stop would go out on it.
  const ceiling = 200
  // The backoff is random up to the ceiling; at its longest, the retry is due well after the new connection
  // (about 10 ms after the refusal here), every run: a shorter one would fire on the dead connection and
  // stop there, and the test would pass whatever the new connection did.
  const random = Math.random
  Math.random = () => 0.999
  t.teardown(() => { Math.random = random })
  const ada = await connect(wsUrl, { WebSocket, name: 'ada', reconnect: { initialDelayMs: ceiling, maxDelayMs: ceiling } })
  t.teardown(() => ada.close())
  const [old] = serverSockets(app)
  if (old === undefined) throw new Error('no server-side socket for ada')
  const presence = await watcher(t, wsUrl)
  // The next connection is ada's new one: its leaves of the room, counted from its start.
  let fresh: ReturnType<typeof leavesOf> | undefined
  app.websocketServer.once('connection', (socket: ServerSocket) => { fresh = leavesOf(socket, 'lobby') })
  const adaIn = presence((c) => c.joins.some((m) => m.name === 'ada'), 'ada joining, in bob\'s presence')
  const first = await ada.join('lobby')
  await adaIn
  const adaOut = presence((c) => c.leaves.some((m) => m.name === 'ada'), 'ada leaving, in bob\'s presence')

  const blocked = ada.join('slow').catch((err: RoomsClientError) => err)
  await slow.entered
  fillWait(ada.room('slow'))
  const dropped = nextState(ada, 'reconnecting')
  // The retry is armed when the refusal is handled, and this runs in the same turn: the drop comes before it is due.
  const refused = await first.leave().then(() => undefined, (err: RoomsClientError) => {
    old.terminate()
    return err
  })
  t.equal(refused?.code, 'RATE_LIMITED', 'the leave was refused, not handled')
  slow.release()
  await dropped
  const reopened = nextState(ada, 'open')
  ada.reconnect()
  await reopened
  // Set after the retry's timer, for the backoff's ceiling: Node runs it after that one.
  await new Promise((resolve) => setTimeout(resolve, ceiling))
  await ada.ping() // handled after anything sent before it
  t.equal(fresh?.count(), 0, 'no leave on the new connection')
  const change = await adaOut
  t.same(change.leaves.map((m) => m.name), ['ada'], 'bob saw the old connection leave with its end')
  t.same((await app.rooms.get('lobby'))?.members.map((m) => m.name), ['bob'], 'the new connection is not in the room')
  t.match(await blocked, { status: 'joined' }, 'the join under way when the connection dropped was sent again')
})

t.test('close() while a refused leave waits for its retry: the retry goes with it, and the Node process can exit', async (t) => {
  const store = new AwayStore()
  store.away = true
  const { wsUrl } = await startApp(t, { adapter: store })
  const script = fileURLToPath(new URL('./fixtures/leave-retry-close.ts', import.meta.url))
  const child = spawn(process.execPath, ['--import=tsx', script], { env: { ...process.env, WS_URL: wsUrl }, stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = once(child, 'exit')
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  // The process starts tsx, connects, joins and leaves: a slow start on a busy machine is not the failure.
  const [code] = await guard(exited, 'the process to exit after close()', { ms: 30_000 })
  t.equal(output, 'refused UNAVAILABLE\n', 'the leave was refused, and its retry armed, before close()')
  t.equal(code, 0, 'it exited by itself, nothing left to do')
})
