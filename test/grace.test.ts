import t from 'tap'
import { TestSocket } from './helpers/socket.js'
import { eachAdapter } from './helpers/deployment.js'
import { firstDiff } from './helpers/presence.js'
import { startApp } from './helpers/server.js'

const users = new Map([['ada', { id: 'u-ada', name: 'ada' }], ['bob', { id: 'u-bob', name: 'bob' }], ['cy', { id: 'u-cy', name: 'cy' }]])
const auth = {
  authenticate: (request: { headers: Record<string, unknown> }) => users.get(String(request.headers['x-user']))
}
const as = (name: string) => ({ headers: { 'x-user': name } })
const bob = { id: 'u-bob', name: 'bob' }
const cy = { id: 'u-cy', name: 'cy' }

eachAdapter(t, 'a dropped connection that comes back within the grace time shows no leave and no join', async (t, deploy) => {
  const d = await deploy({ ...auth, presenceGraceMs: 60_000 })
  const ada = await TestSocket.open(d.node(0).wsUrl, as('ada'))
  t.teardown(() => ada.close())
  await ada.join('r')
  const b1 = await TestSocket.open(d.node(1).wsUrl, as('bob'))
  await b1.join('r')
  // Ada is her node's first member: its diff of bob may name her own join too (see firstDiff).
  t.same(await firstDiff(ada), { type: 'presence', room: 'r', joins: [bob], leaves: [], count: 2 })
  b1.ws.terminate()
  await b1.closed
  // Back on another node, as after a network blip behind a load balancer.
  const b2 = await TestSocket.open(d.node(0).wsUrl, as('bob'))
  t.teardown(() => b2.close())
  t.match(await b2.join('r'), { count: 2 }, 'still two members: bob never left')
  const c = await TestSocket.open(d.node(1).wsUrl, as('cy'))
  t.teardown(() => c.close())
  await c.join('r')
  t.same(await ada.next((f) => f.type === 'presence'), { type: 'presence', room: 'r', joins: [cy], leaves: [], count: 3 }, 'the next diff is cy alone: no leave or join of bob before it')
})

eachAdapter(t, 'a user back on a new connection ends the grace of the dropped one in that room: a deliberate leave then shows at once', async (t, deploy) => {
  const d = await deploy({ ...auth, presenceGraceMs: 60_000 })
  const ada = await TestSocket.open(d.node(0).wsUrl, as('ada'))
  t.teardown(() => ada.close())
  await ada.join('r')
  await ada.join('s')
  const b1 = await TestSocket.open(d.node(1).wsUrl, as('bob'))
  await b1.join('r')
  await b1.join('s')
  t.same(await firstDiff(ada, 'r'), { type: 'presence', room: 'r', joins: [bob], leaves: [], count: 2 })
  await ada.next((f) => f.type === 'presence' && f.room === 's')
  b1.ws.terminate()
  await b1.closed
  // Back on the other node; the old connection lingers on node 1 (60 s).
  const b2 = await TestSocket.open(d.node(0).wsUrl, as('bob'))
  t.teardown(() => b2.close())
  t.match(await b2.join('r'), { count: 2 })
  t.match(await b2.request({ type: 'leave', room: 'r' }), { type: 'left', room: 'r' })
  t.same(await ada.next((f) => f.type === 'presence' && f.room === 'r'), { type: 'presence', room: 'r', joins: [], leaves: [bob], count: 1 }, 'long before the old 60 s grace')
  t.match(await d.node(1).app.rooms.get('s'), { count: 2 }, 'a room the user did not rejoin keeps the grace')
  // A barrier: cy joins s through node 1, which holds the lingering connection.
  // A wrong end of its grace in s went out with its leave of r (ada has that),
  // so it would come to ada before cy's join, or in one diff with it.
  const c = await TestSocket.open(d.node(1).wsUrl, as('cy'))
  t.teardown(() => c.close())
  await c.join('s')
  t.same(await ada.next((f) => f.type === 'presence' && f.room === 's', 'cy joining s'), { type: 'presence', room: 's', joins: [cy], leaves: [], count: 3 }, 'the next diff of s is cy alone: bob did not leave s')
  await ada.sync()
  t.same(ada.pending('presence'), [], 'no leave or join of bob in s')
})

eachAdapter(t, 'a dropped connection that does not come back leaves once the grace time is over', async (t, deploy) => {
  const graceMs = 300
  const d = await deploy({ ...auth, presenceGraceMs: graceMs })
  const ada = await TestSocket.open(d.node(0).wsUrl, as('ada'))
  const b = await TestSocket.open(d.node(1).wsUrl, as('bob'))
  t.teardown(() => ada.close())
  await ada.join('r')
  await b.join('r')
  await ada.next((f) => f.type === 'presence')
  const dropped = Date.now()
  b.ws.terminate()
  t.same(await ada.next((f) => f.type === 'presence'), { type: 'presence', room: 'r', joins: [], leaves: [bob], count: 1 })
  // A lower bound only: the leave cannot come before the grace time, whatever the machine's speed.
  t.ok(Date.now() - dropped >= graceMs - 2, 'not before the grace time')
  t.equal((await d.node(1).app.rooms.get('r'))?.count, 1)
})

eachAdapter(t, 'a deliberate end has no grace: a client close with 1000, a server disconnect, a server removal', async (t, deploy) => {
  const d = await deploy({ ...auth, presenceGraceMs: 60_000 })
  const ada = await TestSocket.open(d.node(0).wsUrl, as('ada'))
  t.teardown(() => ada.close())
  await ada.join('r')

  const b = await TestSocket.open(d.node(1).wsUrl, as('bob'))
  await b.join('r')
  await ada.next((f) => f.type === 'presence')
  b.ws.close(1000)
  t.same(await ada.next((f) => f.type === 'presence'), { type: 'presence', room: 'r', joins: [], leaves: [bob], count: 1 }, 'client close 1000: a goodbye')

  const b2 = await TestSocket.open(d.node(1).wsUrl, as('bob'))
  await b2.join('r')
  await ada.next((f) => f.type === 'presence')
  await d.node(0).app.rooms.disconnect(b2.welcome.connectionId)
  t.same(await ada.next((f) => f.type === 'presence'), { type: 'presence', room: 'r', joins: [], leaves: [bob], count: 1 }, 'disconnected by the server')

  const b3 = await TestSocket.open(d.node(1).wsUrl, as('bob'))
  await b3.join('r')
  await ada.next((f) => f.type === 'presence')
  b3.ws.terminate()
  await b3.closed
  await d.node(0).app.rooms.removeUserFromRoom('u-bob', 'r')
  t.same(await ada.next((f) => f.type === 'presence'), { type: 'presence', room: 'r', joins: [], leaves: [bob], count: 1 }, 'a user removed from the room leaves now, even while in its grace')
})

eachAdapter(t, 'closing the app does not wait for connections in their grace time', async (t, deploy) => {
  const d = await deploy({ ...auth, presenceGraceMs: 600_000 })
  const b = await TestSocket.open(d.node(0).wsUrl, as('bob'))
  await b.join('r')
  b.ws.terminate()
  await b.closed
  // tap's timeout fails this test long before ten minutes.
  for (const node of d.nodes) await node.app.close()
  t.pass('closed')
})

eachAdapter(t, 'an anonymous user keeps its id across reconnects through the resume token of welcome', async (t, deploy) => {
  const d = await deploy()
  const first = await TestSocket.open(`${d.node(0).wsUrl}?name=ann`)
  const { user, resume } = first.welcome
  t.type(resume, 'string')
  first.ws.terminate()
  await first.closed
  const again = await TestSocket.resume(d.node(1).wsUrl, resume as string)
  t.same(again.welcome.user, user, 'same id and name, on any node')
  t.type(again.welcome.resume, 'string', 'and a fresh token')
  t.equal(again.ws.protocol, 'fastify-rooms', 'the server answers with its own subprotocol, never the token\'s')
  const renamed = await TestSocket.resume(`${d.node(0).wsUrl}?name=annie`, resume as string)
  t.same(renamed.welcome.user, { id: user.id, name: 'annie' }, 'a name given with the token wins; the id stays')
  const forged = (resume as string).replace(/^[^.]+/, Buffer.from('someone-else').toString('base64url'))
  for (const token of [forged, 'garbage', '', 'a.b.c.d', `${resume as string}x`]) {
    const other = await TestSocket.resume(d.node(0).wsUrl, token)
    t.not(other.welcome.user.id, user.id, `a bad token (${token.slice(0, 12)}) gets a new user, not an error`)
    await other.close()
  }
  // In the URL, which access logs keep, a token resumes nobody: the SDK never puts it there.
  const inUrl = await TestSocket.open(`${d.node(0).wsUrl}?resume=${encodeURIComponent(resume as string)}`)
  t.not(inUrl.welcome.user.id, user.id, 'a token in the URL is not read')
  await inUrl.close()
  await Promise.all([again.close(), renamed.close()])
})

eachAdapter(t, 'authenticated connections get no resume token', async (t, deploy) => {
  const d = await deploy(auth)
  const a = await TestSocket.open(d.node(0).wsUrl, as('ada'))
  t.teardown(() => a.close())
  t.equal(a.welcome.resume, undefined)
})

t.test('resumeSecret: a guest keeps its id across a restart of a memory-adapter server; without it, it gets a new one', async (t) => {
  const resumeSecret = 'a-secret-of-sixteen-or-more'
  const first = await startApp(t, { resumeSecret })
  const ann = await TestSocket.open(`${first.wsUrl}?name=ann`)
  const { user, resume } = ann.welcome
  await ann.close()
  await first.app.close()
  const restarted = await startApp(t, { resumeSecret })
  const again = await TestSocket.resume(restarted.wsUrl, resume as string)
  t.same(again.welcome.user, user, 'the same guest after the restart')
  await again.close()
  const other = await startApp(t)
  const stranger = await TestSocket.resume(other.wsUrl, resume as string)
  t.not(stranger.welcome.user.id, user.id, 'another secret: a new guest')
  await stranger.close()
  await t.rejects(startApp(t, { resumeSecret: 'short' }), { code: 'FST_ROOMS_INVALID_OPTION' }, 'a secret under 16 characters is refused')
})
