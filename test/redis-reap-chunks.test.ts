import t from 'tap'
import { Redis } from 'ioredis'
import { redisAdapter } from '../src/index.js'
import { FORGET_CHUNK } from '../src/adapters/redis.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { eventually, monitorRedis, skipRedis, startRedis } from './helpers/redis.js'
import { guard } from './helpers/until.js'
import { childInstance } from './helpers/child-instance.js'

/**
 * A dead instance with more memberships than one 'forget' script call drops
 * (FORGET_CHUNK) is reaped in several calls, so that no one call holds Redis
 * for as long as the instance had members; and every member still leaves.
 */
t.test('a dead instance with many members is reaped in bounded script calls, and every member leaves', { skip: skipRedis }, async (t) => {
  const redis = await startRedis(t)
  // 12 connections in the same 100 rooms: 1200 memberships, 12 members a room.
  const ROOMS = 100
  const SOCKETS = 12
  const rooms = Array.from({ length: ROOMS }, (_, i) => `r${i}`)
  t.ok(ROOMS * SOCKETS > FORGET_CHUNK, `more memberships (${ROOMS * SOCKETS}) than one call drops (${FORGET_CHUNK})`)

  const live = await startApp(t, { adapter: redisAdapter({ url: redis.url, leaseMs: 1000 }) })
  // The doomed instance in its own process (the fixture's default prefix, as the live one's), killed for real.
  // A longer lease than the reaper's: a loaded machine does not get it reaped before the kill.
  const { child, wsUrl } = await childInstance(t, { REDIS_URL: redis.url, LEASE_MS: '3000' })

  const watcher = await TestSocket.open(live.wsUrl)
  t.teardown(() => watcher.close())
  const joined = []
  for (const room of rooms) joined.push((await watcher.join(room)).type)
  t.same(joined, rooms.map(() => 'joined'), 'the watcher is in every room')

  const doomed = await Promise.all(Array.from({ length: SOCKETS }, async () => await TestSocket.open(wsUrl)))
  await Promise.all(doomed.map(async (socket) => {
    for (const room of rooms) {
      const reply = await socket.join(room)
      if (reply.type !== 'joined') throw new Error(`join ${room} answered ${JSON.stringify(reply)}`)
    }
  }))
  const doomedIds = new Set(doomed.map((s) => s.welcome.user.id))
  t.equal(doomedIds.size, SOCKETS, 'one user a connection')
  const before = await Promise.all(rooms.map(async (room) => (await live.app.rooms.get(room))?.count))
  t.same(before, rooms.map(() => SOCKETS + 1), 'every room has every member before the kill')

  // Every leave the watcher hears, by room, from the kill on.
  const left = new Map<string, Set<string>>(rooms.map((room) => [room, new Set()]))
  const lastCount = new Map<string, number>()
  const everyoneLeft = (): boolean => rooms.every((room) => left.get(room)!.size === SOCKETS && lastCount.get(room) === 1)
  let heardAll = (): void => {}
  const allHeard = new Promise<void>((resolve) => { heardAll = resolve })
  watcher.ws.on('message', (raw) => {
    const frame = JSON.parse(raw.toString())
    if (frame.type !== 'presence') return
    for (const member of frame.leaves) left.get(frame.room)?.add(member.id)
    lastCount.set(frame.room, frame.count)
    if (everyoneLeft()) heardAll()
  })

  // The reaper's script calls, as Redis runs them: the monitor is listening before the kill.
  const probe = new Redis(redis.url)
  t.teardown(() => probe.disconnect())
  const monitor = await monitorRedis(t, redis.port)

  child.kill('SIGKILL')
  await guard(allHeard, 'the watcher to hear every doomed member leave every room', { ms: 30_000, abort: [watcher.closed] })
  const heard = rooms.map((room) => [...left.get(room)!].sort())
  t.same(heard, rooms.map(() => [...doomedIds].sort()), 'presence told the watcher of every doomed member\'s leave, in every room')

  // The reaping is over once the dead lease is unlisted (after every partition forgot the node).
  await eventually(async () => await probe.zcard('fastify-rooms:nodes'), (n) => n === 1, 'the dead lease is unlisted', 30_000)
  const member = { id: watcher.welcome.user.id }
  const after = await Promise.all(rooms.map(async (room) => await live.app.rooms.get(room)))
  t.match(after, rooms.map(() => ({ count: 1, members: [member] })), 'every room has the watcher alone, by count and member list')
  t.ok(after.every((info) => info?.members.length === 1), 'no other member listed')
  const listing = await (await fetch(`${live.url}/rooms?limit=1000`)).json() as { rooms: Array<{ name: string, count: number }> }
  t.same(listing.rooms, rooms.map((name) => ({ name, count: 1 })).sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0), 'GET /rooms lists every room with the watcher alone')

  // Several bounded calls, not one: Redis ran other clients' commands between them.
  // Every call Redis ran before this ECHO is on the monitor once the ECHO's line is.
  const done = monitor.seen((args) => args[0]?.toLowerCase() === 'echo' && args[1] === 'reap-chunks-done', 'the calls of the reaping')
  await probe.echo('reap-chunks-done')
  await done
  const forgets = monitor.commands.filter((args) => /^eval(sha)?$/i.test(String(args[0])) && args.includes('forget'))
  const nodes = new Set(forgets.flatMap((args) => args.slice(8)))
  t.equal(nodes.size, 1, 'every forget call was for the dead instance')
  const dead = [...nodes][0]!
  t.equal(await probe.exists(`fastify-rooms:n:${dead}:conns`, `fastify-rooms:n:${dead}:pubs`), 0, 'its connection set and publish ids are gone')
  const sets = await probe.keys('fastify-rooms:n:*:conns')
  t.equal(sets.length, 1, 'the live instance\'s connection set alone is left')
  t.equal(await probe.scard(sets[0]!), ROOMS, 'with the watcher\'s memberships')
  t.ok(forgets.every((args) => Number(args[7]) === FORGET_CHUNK), `every call dropped at most ${FORGET_CHUNK}`)
  t.ok(forgets.length > 1, `the reaping took ${forgets.length} forget calls, more than one`)
  t.ok(forgets.length >= Math.ceil(ROOMS * SOCKETS / FORGET_CHUNK), `at least ${Math.ceil(ROOMS * SOCKETS / FORGET_CHUNK)} calls for ${ROOMS * SOCKETS} memberships`)
})
