import t from 'tap'
import Fastify from 'fastify'
import rooms from '../src/index.js'
import { eachAdapter } from './helpers/deployment.js'
import { TestSocket } from './helpers/socket.js'
import { firstDiff } from './helpers/presence.js'

const users: Record<string, { id: string, name: string, email: string, role: string }> = {
  ada: { id: 'u-ada', name: 'ada', email: 'ada@example.com', role: 'admin' },
  bob: { id: 'u-bob', name: 'bob', email: 'bob@example.com', role: 'user' }
}
const as = (name: string): { headers: Record<string, string> } => ({ headers: { cookie: `session=${name}` } })
const authenticate = (request: { headers: Record<string, unknown> }): typeof users[string] | undefined => users[String(request.headers.cookie).slice(8)]

eachAdapter(t, 'others see only publicUserFields: joined, presence, message.from and REST; the user and the hooks see everything', async (t, deploy) => {
  const hooked: unknown[] = []
  const { node } = await deploy({
    authenticate,
    onPublish: ({ user }) => { hooked.push(user) }
  })
  const ada = await TestSocket.open(node(0).wsUrl, as('ada'))
  const bob = await TestSocket.open(node(1).wsUrl, as('bob'))
  t.teardown(() => Promise.all([ada.close(), bob.close()]))
  t.same(ada.welcome.user, users.ada, 'welcome shows the full user')
  await ada.join('lobby')
  t.same((await bob.join('lobby')).members, [{ id: 'u-ada', name: 'ada' }, { id: 'u-bob', name: 'bob' }])
  // Ada is her node's first member: its diff of bob may name her own join too (see firstDiff).
  t.same((await firstDiff(ada)).joins, [{ id: 'u-bob', name: 'bob' }])
  await bob.request({ type: 'publish', room: 'lobby', data: 'hi' })
  t.same((await ada.next((f) => f.type === 'message')).from, { id: 'u-bob', name: 'bob' })
  t.same(hooked, [users.bob], 'hooks get the full user')
  const rest = await (await fetch(`${node(0).url}/rooms/lobby`, as('ada'))).json()
  t.same(rest.members, [{ id: 'u-ada', name: 'ada' }, { id: 'u-bob', name: 'bob' }])
  const history = await (await fetch(`${node(1).url}/rooms/lobby/messages`, as('ada'))).json()
  t.same(history.messages[0].from, { id: 'u-bob', name: 'bob' })
})

eachAdapter(t, 'publicUserFields can show more', async (t, deploy) => {
  const { node } = await deploy({ authenticate, publicUserFields: ['id', 'name', 'role'] })
  const ada = await TestSocket.open(node(0).wsUrl, as('ada'))
  const bob = await TestSocket.open(node(1).wsUrl, as('bob'))
  t.teardown(() => Promise.all([ada.close(), bob.close()]))
  await ada.join('lobby')
  t.same((await bob.join('lobby')).members, [{ id: 'u-ada', name: 'ada', role: 'admin' }, { id: 'u-bob', name: 'bob', role: 'user' }])
})

t.test('publicUserFields must keep id and name', async (t) => {
  for (const fields of [['name'], ['id'], []]) {
    const app = Fastify()
    await t.rejects(async () => { await app.register(rooms, { publicUserFields: fields }).ready() }, /publicUserFields must include "id" and "name"/)
    await app.close().catch(() => {})
  }
})
