import t from 'tap'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'

/** Wait for `n` pings to reach the socket; a close before that fails the wait at once. */
async function pings (socket: TestSocket, n: number, what = ''): Promise<void> {
  let count = 0
  await new Promise<void>((resolve, reject) => {
    socket.ws.on('ping', () => { if (++count === n) resolve() })
    void socket.closed.then(({ code }) => reject(new Error(`closed with ${code} after ${count} pings${what}`)))
  })
}

t.test('a peer that stops answering pings is terminated and leaves every room', async (t) => {
  const { wsUrl, app } = await startApp(t, { heartbeatMs: 50, authenticate: (r) => ({ id: String(r.headers['x-user']), name: String(r.headers['x-user']) }) })
  const watcher = await TestSocket.open(wsUrl, { headers: { 'x-user': 'watcher' } })
  t.teardown(() => watcher.close())
  // autoPong: false makes this client keep its socket open but never answer a ping, like a dead peer behind a NAT.
  // It answers by hand until it has joined, so that a slow machine cannot cut it before that.
  // Answering from the moment the socket opens, before welcome: a ping can come first on a slow machine.
  const silent = await TestSocket.connect(wsUrl, { headers: { 'x-user': 'silent' }, autoPong: false })
  const answer = (): void => silent.ws.pong()
  silent.ws.on('ping', answer)
  silent.welcome = await silent.next((f) => f.type === 'welcome', 'welcome') as typeof silent.welcome
  await watcher.join('r')
  await silent.join('r')
  await silent.join('s')
  await watcher.next((f) => f.type === 'presence' && f.joins.length > 0)
  silent.ws.off('ping', answer)
  const pinged = new Promise<void>((resolve) => silent.ws.once('ping', () => resolve()))
  await pinged
  t.same(await watcher.next((f) => f.type === 'presence' && f.leaves.length > 0), { type: 'presence', room: 'r', joins: [], leaves: [{ id: 'silent', name: 'silent' }], count: 1 })
  t.equal((await silent.closed).code, 1006, 'terminated, not closed politely')
  t.equal(await app.rooms.get('s'), null, 'gone from every room')
  t.equal(app.rooms.connections, 1)
})

t.test('a peer that answers pings stays, even when it sends nothing else', async (t) => {
  const { wsUrl, app } = await startApp(t, { heartbeatMs: 100 })
  const quiet = await TestSocket.open(wsUrl)
  t.teardown(() => quiet.close())
  await quiet.join('r')
  // Five heartbeat rounds, counted by the pings that arrive.
  await pings(quiet, 5)
  t.equal(quiet.ws.readyState, quiet.ws.OPEN)
  t.equal((await app.rooms.get('r'))?.count, 1)
})

t.test('where the TCP socket counts no bytes read, pongs are listened for instead: a silent peer goes, an answering one stays', async (t) => {
  // The heartbeat counts any byte from the peer (a pong too) by the TCP
  // socket's bytesRead; a socket without that count falls back to a 'pong' listener.
  const { wsUrl, app } = await startApp(t, { heartbeatMs: 50 }, (app) => {
    app.server.on('connection', (socket) => Object.defineProperty(socket, 'bytesRead', { value: undefined }))
  })
  const quiet = await TestSocket.open(wsUrl)
  const silent = await TestSocket.open(wsUrl, { autoPong: false })
  t.teardown(() => quiet.close())
  await quiet.join('r')
  const answer = (): void => silent.ws.pong()
  silent.ws.on('ping', answer)
  await silent.join('r')
  silent.ws.off('ping', answer)
  t.equal((await silent.closed).code, 1006, 'the silent peer is terminated')
  await pings(quiet, 5)
  t.equal((await app.rooms.get('r'))?.count, 1, 'the answering peer stays')
})

t.test('a busy process does not cut a peer whose pong is waiting unread: the verdict comes after the sockets are read', async (t) => {
  const { wsUrl, app } = await startApp(t, { heartbeatMs: 50 })
  const peer = await TestSocket.open(wsUrl)
  t.teardown(() => peer.close())
  await peer.join('r')
  // Created after the app's heartbeat timer with the same period, so it runs right after each round, in
  // the same turn: the ping is sent, the process is then busy for three periods, and the next round is
  // due before the loop has read anything, as after a long GC pause or a slow synchronous handler.
  let stalls = 0
  const stall = setInterval(() => {
    const until = Date.now() + 150
    while (Date.now() < until) { /* busy */ }
    stalls++
  }, 50)
  t.teardown(() => clearInterval(stall))
  await pings(peer, 6, ' (the process stalled after each round)')
  clearInterval(stall)
  t.ok(stalls >= 5, `${stalls} stalls`)
  t.equal(peer.ws.readyState, peer.ws.OPEN)
  t.equal((await app.rooms.get('r'))?.count, 1)
})
