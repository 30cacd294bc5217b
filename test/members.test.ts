import t from 'tap'
import { TestSocket } from './helpers/socket.js'
import { eachAdapter } from './helpers/deployment.js'
import { startApp } from './helpers/server.js'
import { MemoryAdapter } from '../src/index.js'

const PAGE = 3

/** Ten users with ids that sort in a known order. */
const users = Array.from({ length: 10 }, (_, i) => ({ id: `u${String(i).padStart(2, '0')}`, name: `user ${i}` }))
const options = {
  membersPageSize: PAGE,
  authenticate: (request: { headers: Record<string, unknown> }) => users.find((u) => u.id === request.headers['x-user'])
}
const as = (id: string) => ({ headers: { 'x-user': id } })

eachAdapter(t, 'joined carries count and the first page of members by id; members frames page the rest; no reply exceeds its page', async (t, deploy) => {
  const d = await deploy(options)
  // Joined in an order other than by id, on both nodes.
  const order = [7, 2, 9, 0, 5, 3, 8, 1, 6, 4]
  const sockets: TestSocket[] = []
  t.teardown(() => Promise.all(sockets.map(async (s) => await s.close())))
  for (const [n, i] of order.entries()) {
    const s = await TestSocket.open(d.node(n).wsUrl, as(users[i]!.id))
    sockets.push(s)
    const joined = await s.join('big')
    t.equal(joined.count, n + 1)
    t.ok(joined.members.length <= PAGE, `joined #${n + 1} carries at most a page`)
  }
  const last = sockets[sockets.length - 1]!
  const joined = await last.join('big')
  t.same(joined.members, users.slice(0, PAGE), 'joined again: the first page, by id')
  t.equal(joined.membersNext, users[PAGE - 1]!.id)

  const all = [...joined.members]
  let after: string | null = joined.membersNext
  while (after !== null) {
    const page = await last.request({ type: 'members', room: 'big', after })
    t.match(page, { type: 'members', room: 'big' })
    t.ok(page.members.length <= PAGE, 'a members reply carries at most a page')
    all.push(...page.members)
    after = page.next
  }
  t.same(all, users, 'the pages hold every member once, in id order')

  const small = await last.request({ type: 'members', room: 'big', limit: 4, after: 'u03' })
  t.same(small.members.map((m: { id: string }) => m.id), ['u04', 'u05', 'u06', 'u07'])
  t.equal(small.next, 'u07')
  const end = await last.request({ type: 'members', room: 'big', after: 'u09' })
  t.same(end, { type: 'members', id: end.id, room: 'big', members: [], next: null }, 'after the last member: an empty page')
  const between = await last.request({ type: 'members', room: 'big', after: 'u055', limit: 2 })
  t.same(between.members.map((m: { id: string }) => m.id), ['u06', 'u07'], 'a cursor that is no member (it left) still pages on')

  const rest = await (await fetch(`${d.node(1).url}/rooms/big`, as('u00'))).json()
  t.match(rest, { name: 'big', count: 10, membersNext: 'u02' })
  t.equal(rest.members.length, PAGE, 'REST: the first page by default')
  const restPage = await (await fetch(`${d.node(0).url}/rooms/big?membersAfter=u02&membersLimit=5`, as('u00'))).json()
  t.same(restPage.members.map((m: { id: string }) => m.id), ['u03', 'u04', 'u05', 'u06', 'u07'])
  t.equal(restPage.membersNext, 'u07')
  const restEnd = await (await fetch(`${d.node(0).url}/rooms/big?membersAfter=u07&membersLimit=5`, as('u00'))).json()
  t.same(restEnd.members.map((m: { id: string }) => m.id), ['u08', 'u09'])
  t.equal(restEnd.membersNext, null)
  t.match(await d.app.rooms.get('big', { membersAfter: 'u08' }), { count: 10, members: [{ id: 'u09' }], membersNext: null })
})

eachAdapter(t, 'members: bad requests get clear errors and the connection stays', async (t, deploy) => {
  const d = await deploy(options)
  const a = await TestSocket.open(d.node(0).wsUrl, as('u00'))
  t.teardown(() => a.close())
  t.match(await a.request({ type: 'members', room: 'nowhere' }), { type: 'error', code: 'NOT_IN_ROOM', room: 'nowhere' })
  await a.join('r')
  for (const bad of [{ limit: 0 }, { limit: 1001 }, { limit: 1.5 }, { after: '' }, { after: 5 }]) {
    t.match(await a.request({ type: 'members', room: 'r', ...bad }), { type: 'error', code: 'INVALID_FRAME' }, JSON.stringify(bad).slice(0, 40))
  }
  t.match(await a.request({ type: 'members', room: 'bad room' }), { type: 'error', code: 'INVALID_ROOM' })
  // 1.5, 1e2, 0x10: TypeBox's query conversion would take them as 1, 100 and 16.
  for (const query of ['membersLimit=0', 'membersLimit=1001', 'membersLimit=x', 'membersAfter=', 'membersLimit=1.5', 'membersLimit=1e2', 'membersLimit=0x10', 'membersLimit=%207']) {
    const response = await fetch(`${d.node(0).url}/rooms/r?${query}`, as('u00'))
    t.equal(response.status, 400, query)
    t.match(await response.json(), { statusCode: 400, code: 'FST_ERR_VALIDATION' }, query)
  }
  t.match(await a.request({ type: 'members', room: 'r', limit: 1000 }), { type: 'members', members: [{ id: 'u00' }], next: null })
})

eachAdapter(t, 'each joined carries the first page as it is then, in a room larger than a page, through joins and leaves inside and past it', async (t, deploy) => {
  const d = await deploy(options)
  const sockets = new Map<string, TestSocket>()
  t.teardown(() => Promise.all([...sockets.values(), ...tabs].map(async (s) => await s.close())))
  const tabs: TestSocket[] = []
  const present = new Set<string>()
  const check = (joined: Record<string, any>, what: string): void => {
    const ids = [...present].sort()
    t.same(joined.members.map((m: { id: string }) => m.id), ids.slice(0, PAGE), `${what}: the first page`)
    t.equal(joined.membersNext, ids.length > PAGE ? ids[PAGE - 1] : null, `${what}: its cursor`)
    t.equal(joined.count, ids.length, `${what}: the count`)
  }
  const join = async (id: string): Promise<void> => {
    const s = await TestSocket.open(d.node(sockets.size % 2).wsUrl, as(id))
    sockets.set(id, s)
    present.add(id)
    check(await s.join('big'), `${id} joins`)
  }
  const leave = async (id: string): Promise<void> => {
    await sockets.get(id)!.request({ type: 'leave', room: 'big' })
    present.delete(id)
  }
  /** Another tab of a member joins: nothing changes, and its joined shows the page as it is. */
  const look = async (id: string, what: string): Promise<void> => {
    const tab = await TestSocket.open(d.node(tabs.length % 2).wsUrl, as(id))
    tabs.push(tab)
    check(await tab.join('big'), what)
  }
  for (const id of ['u07', 'u02', 'u09', 'u00']) await join(id)
  await join('u08')
  await join('u05')
  await leave('u00')
  await look('u09', 'after a member of the first page left')
  await leave('u08')
  await look('u07', 'after a member past the first page left')
  await leave('u05')
  await look('u02', 'after the room shrank to one page')
})

eachAdapter(t, 'joined pages stay right through a long run of joins and leaves in every part of the room', async (t, deploy) => {
  const d = await deploy(options)
  const open = new Map<string, TestSocket>()
  t.teardown(() => Promise.all([...open.values()].map(async (s) => await s.close())))
  const present = new Set<string>()
  const expected = (): { ids: string[], next: string | null } => {
    const ids = [...present].sort()
    return { ids: ids.slice(0, PAGE), next: ids.length > PAGE ? ids[PAGE - 1]! : null }
  }
  // A fixed sequence (the MINSTD generator: exact in doubles), so that a failure repeats.
  let seed = 7
  const pick = (): string => {
    seed = (seed * 48271) % 2147483647
    return users[seed % users.length]!.id
  }
  for (let step = 0; step < 60; step++) {
    const id = pick()
    const socket = open.get(id)
    if (socket === undefined) {
      const s = await TestSocket.open(d.node(step % 2).wsUrl, as(id))
      open.set(id, s)
      present.add(id)
      const joined = await s.join('churn')
      t.same({ ids: joined.members.map((m: { id: string }) => m.id), next: joined.membersNext }, expected(), `step ${step}: ${id} joins`)
      t.same(joined.members, joined.members.map((m: { id: string }) => users.find((u) => u.id === m.id)), `step ${step}: whole members`)
    } else {
      t.match(await socket.request({ type: 'leave', room: 'churn' }), { type: 'left' })
      present.delete(id)
      open.delete(id)
      await socket.close()
      const [other] = present
      if (other === undefined) continue
      // Another tab of a member joins: nothing changes, and its joined shows the page as it is now.
      const tab = await TestSocket.open(d.node(step % 2).wsUrl, as(other))
      const joined = await tab.join('churn')
      await tab.close()
      t.same({ ids: joined.members.map((m: { id: string }) => m.id), next: joined.membersNext }, expected(), `step ${step}: after ${id} left`)
    }
  }
})

/** A user-written adapter that shows only first names in joined pages. */
class FirstNames extends MemoryAdapter {
  override async join (...args: Parameters<MemoryAdapter['join']>): ReturnType<MemoryAdapter['join']> {
    const result = await super.join(...args)
    return { ...result, members: result.members.map((m) => ({ id: m.id, name: m.name.split(' ')[0]! })) }
  }
}

t.test('a subclass that rewrites join\'s members page has its page written, in a room larger than a page too', async (t) => {
  const { wsUrl } = await startApp(t, { ...options, adapter: new FirstNames() })
  const sockets: TestSocket[] = []
  t.teardown(() => Promise.all(sockets.map(async (s) => await s.close())))
  for (const user of users.slice(0, PAGE + 2)) {
    const s = await TestSocket.open(wsUrl, as(user.id))
    sockets.push(s)
    const joined = await s.join('big')
    t.same(joined.members.map((m: { name: string }) => m.name), Array.from({ length: Math.min(PAGE, sockets.length) }, () => 'user'), `${user.id}'s joined`)
  }
})

eachAdapter(t, 'member ids are ordered by code point (UTF-8 bytes), the same on every adapter', async (t, deploy) => {
  // JavaScript's < puts the emoji (a surrogate pair, 0xD83D...) before U+FF01; by code point it comes after.
  const ids = ['a', 'z', '\uFF01', '\u{1F600}']
  const d = await deploy({
    membersPageSize: 2,
    authenticate: (request: { query: unknown }) => ({ id: (request.query as { u: string }).u, name: 'n' })
  })
  const sockets = await Promise.all(ids.map(async (id) => await TestSocket.open(`${d.node(0).wsUrl}?u=${encodeURIComponent(id)}`)))
  t.teardown(() => Promise.all(sockets.map(async (s) => await s.close())))
  for (const s of sockets) await s.join('r')
  const joined = await sockets[0]!.join('r')
  t.same(joined.members.map((m: { id: string }) => m.id), ['a', 'z'])
  const rest = await sockets[0]!.request({ type: 'members', room: 'r', after: joined.membersNext })
  t.same(rest.members.map((m: { id: string }) => m.id), ['\uFF01', '\u{1F600}'], 'then U+FF01, then the emoji')
  const after = encodeURIComponent('\uFF01')
  const page = await (await fetch(`${d.node(0).url}/rooms/r?u=a&membersAfter=${after}`, { signal: AbortSignal.timeout(10_000) })).json()
  t.same(page.members.map((m: { id: string }) => m.id), ['\u{1F600}'], 'REST pages the same way')
})
