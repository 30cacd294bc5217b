import t from 'tap'
import { TestSocket } from './helpers/socket.js'
import { eachAdapter } from './helpers/deployment.js'

const users = new Map([['tok-ada', { id: 'u-ada', name: 'ada' }], ['tok-bob', { id: 'u-bob', name: 'bob' }], ['tok-cy', { id: 'u-cy', name: 'cy' }]])
const options = {
  authenticate: (request: { headers: Record<string, unknown> }) => users.get(String(request.headers['x-token']))
}
const as = (token: string) => ({ headers: { 'x-token': token } })

eachAdapter(t, 'presence join and leave across two users, with counts', async (t, deploy) => {
  const d = await deploy(options)
  const ada = await TestSocket.open(d.node(0).wsUrl, as('tok-ada'))
  const bob = await TestSocket.open(d.node(1).wsUrl, as('tok-bob'))
  t.teardown(() => Promise.all([ada.close(), bob.close()]))
  await ada.join('r')
  const joined = await bob.join('r')
  t.same(joined.members, [{ id: 'u-ada', name: 'ada' }, { id: 'u-bob', name: 'bob' }])
  t.same(await ada.next((f) => f.type === 'presence'), { type: 'presence', room: 'r', event: 'join', member: { id: 'u-bob', name: 'bob' }, count: 2 })
  // A later message of the room is the barrier: bob's own join would have come before it.
  await d.app.rooms.broadcast('r', 'barrier')
  await bob.next((f) => f.type === 'message')
  t.equal(bob.pending('presence').length, 0, 'the joiner is not told of its own join')
  await bob.request({ type: 'leave', room: 'r' })
  t.same(await ada.next((f) => f.type === 'presence'), { type: 'presence', room: 'r', event: 'leave', member: { id: 'u-bob', name: 'bob' }, count: 1 })
})

eachAdapter(t, 'two tabs of one user are one member: join on the first, leave on the last', async (t, deploy) => {
  const d = await deploy(options)
  const ada = await TestSocket.open(d.node(0).wsUrl, as('tok-ada'))
  const bob1 = await TestSocket.open(d.node(1).wsUrl, as('tok-bob'))
  const bob2 = await TestSocket.open(d.node(0).wsUrl, as('tok-bob'))
  t.teardown(() => Promise.all([ada.close(), bob1.close(), bob2.close()]))
  await ada.join('r')
  await bob1.join('r')
  t.match(await ada.next((f) => f.type === 'presence'), { event: 'join', member: { id: 'u-bob' }, count: 2 })
  const second = await bob2.join('r')
  t.equal(second.members.length, 2, 'the second tab sees two members, not three')
  // A later message of the room is the barrier: a presence for the second tab would have come before it.
  await d.node(1).app.rooms.broadcast('r', 'barrier')
  await ada.next((f) => f.type === 'message')
  await bob1.next((f) => f.type === 'message')
  t.equal(ada.pending('presence').length, 0, 'no presence for the second tab')
  t.equal(bob1.pending('presence').length, 0, 'the first tab is not told of the second')
  t.equal((await d.node(1).app.rooms.get('r'))?.count, 2)

  await bob1.close()
  // No frame tells that the cluster has forgotten bob's first tab: wait for that, then publish after it.
  await d.gone(bob1)
  await bob2.request({ type: 'publish', room: 'r', data: 'still here' })
  await ada.next((f) => f.type === 'message' && f.data === 'still here')
  t.equal(ada.pending('presence').length, 0, 'closing one tab is not a leave')

  await bob2.close()
  t.same(await ada.next((f) => f.type === 'presence'), { type: 'presence', room: 'r', event: 'leave', member: { id: 'u-bob', name: 'bob' }, count: 1 })
  t.same((await d.node(1).app.rooms.get('r'))?.members, [{ id: 'u-ada', name: 'ada' }])
})

eachAdapter(t, 'a connection that dies leaves every room it was in', async (t, deploy) => {
  const d = await deploy(options)
  const ada = await TestSocket.open(d.node(0).wsUrl, as('tok-ada'))
  const bob = await TestSocket.open(d.node(1).wsUrl, as('tok-bob'))
  t.teardown(() => ada.close())
  await ada.join('a')
  await ada.join('b')
  await bob.join('a')
  await bob.join('b')
  await ada.next((f) => f.type === 'presence' && f.room === 'a')
  await ada.next((f) => f.type === 'presence' && f.room === 'b')
  bob.ws.terminate()
  const leaves = [await ada.next((f) => f.type === 'presence'), await ada.next((f) => f.type === 'presence')]
  t.same(leaves.map((f) => [f.room, f.event, f.member.id, f.count]).sort(), [['a', 'leave', 'u-bob', 1], ['b', 'leave', 'u-bob', 1]])
  t.equal((await d.node(1).app.rooms.get('a'))?.count, 1)
})

eachAdapter(t, 'presence reaches only members of that room', async (t, deploy) => {
  const d = await deploy(options)
  const ada = await TestSocket.open(d.node(0).wsUrl, as('tok-ada'))
  const bob = await TestSocket.open(d.node(1).wsUrl, as('tok-bob'))
  // A witness in room "two" on ada's node, so that on Redis that node gets the room's presence and must route it.
  const witness = await TestSocket.open(d.node(0).wsUrl, as('tok-cy'))
  t.teardown(() => Promise.all([ada.close(), bob.close(), witness.close()]))
  await ada.join('one')
  await witness.join('two')
  await bob.join('two')
  // The witness got bob's join: ada's node has fanned it out, so a round trip on ada shows whatever it wrote to her.
  t.match(await witness.next((f) => f.type === 'presence'), { room: 'two', event: 'join', member: { id: 'u-bob' } })
  await ada.sync()
  t.equal(ada.pending('presence').length, 0)
})

eachAdapter(t, 'presenceEvents: false sends no presence frames, but joined and REST still list members', async (t, deploy) => {
  const d = await deploy({ ...options, presenceEvents: false })
  const ada = await TestSocket.open(d.node(0).wsUrl, as('tok-ada'))
  const bob = await TestSocket.open(d.node(1).wsUrl, as('tok-bob'))
  t.teardown(() => Promise.all([ada.close(), bob.close()]))
  await ada.join('big')
  t.same((await bob.join('big')).members.map((m: { id: string }) => m.id), ['u-ada', 'u-bob'])
  await bob.close()
  // No frame tells that the cluster has forgotten bob: wait for that; ada's message is then the barrier.
  await d.gone(bob)
  await ada.request({ type: 'publish', room: 'big', data: 'after bob left' })
  await ada.next((f) => f.type === 'message')
  t.equal(ada.frames.filter((f) => f.type === 'presence').length, 0, 'no join or leave frames')
  t.same((await (await fetch(`${d.node(1).url}/rooms/big`, as('tok-ada'))).json()).members.map((m: { id: string }) => m.id), ['u-ada'])
})

eachAdapter(t, 'presence after joined tells only of changes since the joined snapshot, while others join and leave at the same time', async (t, deploy) => {
  const d = await deploy()
  const z = await TestSocket.open(d.node(0).wsUrl)
  t.teardown(() => z.close())
  // Every interleaving is valid; what a joiner builds from joined + presence must always be the truth.
  for (let round = 0; round < 20; round++) {
    const room = `busy-${round}`
    const w = await TestSocket.open(d.node(0).wsUrl)
    await z.join(room)
    await w.join(room)
    const x = await TestSocket.open(d.node(1).wsUrl)
    const y = await TestSocket.open(d.node(0).wsUrl)
    const [joined] = await Promise.all([x.join(room), y.join(room), w.request({ type: 'leave', room })])
    // Every join and leave above is done: anything about them reaches x before this message.
    await d.app.rooms.broadcast(room, 'barrier')
    await x.next((f) => f.type === 'message' && f.room === room)
    const members = new Set<string>(joined.members.map((m: { id: string }) => m.id))
    const problems: string[] = []
    for (const p of x.take('presence')) {
      const id = p.member.id as string
      if (p.event === 'join' && members.has(id)) problems.push(`join of ${id}, already a member`)
      if (p.event === 'leave' && !members.has(id)) problems.push(`leave of ${id}, not a member`)
      if (p.event === 'join') members.add(id)
      else members.delete(id)
      if (p.count !== members.size) problems.push(`count ${p.count as number} where the list has ${members.size}`)
    }
    t.same(problems, [], `round ${round}: joined, then presence, are consistent`)
    t.same([...members].sort(), [z, x, y].map((s) => s.welcome.user.id).sort(), `round ${round}: x ends with the room's real members`)
    await Promise.all([x.close(), y.close(), w.close()])
  }
})
