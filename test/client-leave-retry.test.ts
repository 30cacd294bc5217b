import t from 'tap'
import WebSocket from 'ws'
import { connect, type PresenceChange, type RoomsClientError } from '../src/client/index.js'
import { nextEvent } from './helpers/client.js'
import { fillWait, LIMITS, slowJoins } from './helpers/refused-leave.js'
import { serverSockets, startApp } from './helpers/server.js'

// room.leave() refused for a passing reason (here RATE_LIMITED: the leave did not fit behind a slow onJoin) drops
// the handle at once, but the server keeps the connection in the room: present to everyone else, sent the room's
// frames. The SDK sends the leave again, with the rejoin backoff, while no handle has the room.

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
