import t from 'tap'
import { MemoryAdapter, RoomsError, type EncodedPublish } from '../src/index.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { waitUntil } from './helpers/waiters.js'

/** A user-written adapter (through the public interface) whose store fails for one room. */
class FlakyStore extends MemoryAdapter {
  override async publish (room: string, message: EncodedPublish): Promise<number | undefined> {
    if (room === 'broken') throw new Error('store timeout (secret connection string here)')
    return await super.publish(room, message)
  }

  override async join (...args: Parameters<MemoryAdapter['join']>): ReturnType<MemoryAdapter['join']> {
    if (args[0] === 'unjoinable') throw new Error('store refused')
    return await super.join(...args)
  }

  override async history (...args: Parameters<MemoryAdapter['history']>): ReturnType<MemoryAdapter['history']> {
    if (args[0] === 'no-history') throw new Error('store went away between join and history')
    return await super.history(...args)
  }
}

t.test('an adapter that throws gives the client INTERNAL and leaves everyone else unaffected', async (t) => {
  const logged: Array<Record<string, any>> = []
  const { wsUrl, app } = await startApp(t, { adapter: new FlakyStore() }, undefined, {
    logger: { level: 'error', stream: { write: (line: string) => { logged.push(JSON.parse(line)) } } }
  })
  const a = await TestSocket.open(wsUrl)
  const b = await TestSocket.open(wsUrl)
  t.teardown(() => Promise.all([a.close(), b.close()]))
  await a.join('broken')
  await b.join('broken')
  const error = await a.request({ type: 'publish', room: 'broken', data: 1 })
  t.match(error, { type: 'error', code: 'INTERNAL', room: 'broken' })
  t.notMatch(error.message, /secret/)
  t.match(await a.join('unjoinable'), { type: 'error', code: 'INTERNAL', room: 'unjoinable' })
  t.same(await app.rooms.get('unjoinable'), null, 'the failed join left no member')
  t.equal((await a.request({ type: 'leave', room: 'broken' })).type, 'left', 'the connection still works')
  await b.join('fine')
  t.equal((await b.request({ type: 'publish', room: 'fine', data: 2 })).offset, 1, 'other rooms are unaffected')
  t.match(logged.find((l) => l.room === 'broken'), { connectionId: a.welcome.connectionId, err: { message: /store timeout/ } })
  t.match(logged.find((l) => l.room === 'unjoinable'), { err: { message: 'store refused' } })
  await t.rejects(app.rooms.broadcast('broken', 1), /store timeout/, 'the server API passes adapter errors to the app')
})

/** A user-written adapter that refuses a call with UNAUTHORIZED, a code whose contract (a 4001 close) only the plugin can keep. */
class UnauthorizedStore extends MemoryAdapter {
  override async leave (...args: Parameters<MemoryAdapter['leave']>): ReturnType<MemoryAdapter['leave']> {
    if (args[0] === 'guarded') throw new RoomsError('UNAUTHORIZED', 'Your session ended.')
    return await super.leave(...args)
  }

  override async publish (room: string, message: EncodedPublish): Promise<number | undefined> {
    if (room === 'guarded') throw new RoomsError('UNAUTHORIZED', 'Your session ended.')
    return await super.publish(room, message)
  }
}

t.test('an adapter that throws a RoomsError UNAUTHORIZED gives INTERNAL: the contract always closes UNAUTHORIZED with 4001, which an adapter cannot do', async (t) => {
  const { wsUrl } = await startApp(t, { adapter: new UnauthorizedStore() })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  await a.join('guarded')
  t.match(await a.request({ type: 'publish', room: 'guarded', data: 1 }), { type: 'error', code: 'INTERNAL', room: 'guarded' })
  t.match(await a.request({ type: 'leave', room: 'guarded' }), { type: 'error', code: 'INTERNAL', room: 'guarded' })
  t.match(await a.join('other'), { type: 'joined' }, 'the connection is open and goes on')
})

t.test('a join whose replay fails after the store recorded it leaves no member behind', async (t) => {
  const { wsUrl, app } = await startApp(t, { adapter: new FlakyStore() })
  const a = await TestSocket.open(wsUrl)
  t.teardown(() => a.close())
  await app.rooms.broadcast('no-history', 1)
  t.match(await a.join('no-history', { history: 5 }), { type: 'error', code: 'INTERNAL', room: 'no-history' })
  t.same(await app.rooms.get('no-history'), null, 'the store forgot the member too')
  t.match(await a.request({ type: 'publish', room: 'no-history', data: 2 }), { code: 'NOT_IN_ROOM' })
})

/** A user-written adapter whose leave throws at once for one room, rather than return a rejected promise. */
class ThrowingLeave extends MemoryAdapter {
  override leave (...args: Parameters<MemoryAdapter['leave']>): ReturnType<MemoryAdapter['leave']> {
    if (args[0] === 'sticky') throw new Error('store refused the leave')
    return super.leave(...args)
  }
}

t.test('an adapter whose leave throws synchronously is logged like a rejection: no unhandled rejection, the other rooms are still left', async (t) => {
  const unhandled: unknown[] = []
  const onUnhandled = (reason: unknown): void => { unhandled.push(reason) }
  process.on('unhandledRejection', onUnhandled)
  t.teardown(() => { process.off('unhandledRejection', onUnhandled) })
  const logged: Array<Record<string, any>> = []
  const waiters = new Set<() => void>()
  const { wsUrl, app } = await startApp(t, { adapter: new ThrowingLeave() }, undefined, {
    logger: { level: 'error', stream: { write: (line: string) => { logged.push(JSON.parse(line)); for (const w of waiters) w() } } }
  })
  const failedLeaves = (): Array<Record<string, any>> => logged.filter((l) => l.msg === 'fastify-rooms: adapter failed to remove a member')
  const b = await TestSocket.open(wsUrl)
  t.teardown(() => b.close())
  await b.join('other')
  // Closed by the client (1000): its rooms are left at once.
  const a = await TestSocket.open(wsUrl)
  await a.join('sticky')
  await a.join('other')
  await a.close()
  await waitUntil(waiters, () => failedLeaves().length === 1, 10_000, () => `no log of the failed leave: ${JSON.stringify(logged)}`)
  t.match(failedLeaves()[0], { connectionId: a.welcome.connectionId, room: 'sticky', err: { message: 'store refused the leave' } })
  t.match(await app.rooms.get('other'), { count: 1 }, 'the other room was left')
  // Removed from the room by the server, and disconnected by it.
  const c = await TestSocket.open(wsUrl)
  await c.join('sticky')
  t.equal(await app.rooms.removeFromRoom(c.welcome.connectionId, 'sticky'), true)
  await waitUntil(waiters, () => failedLeaves().length === 2, 10_000, () => `no log of the removal's failed leave: ${JSON.stringify(logged)}`)
  await c.join('sticky')
  t.equal(await app.rooms.disconnect(c.welcome.connectionId), true)
  t.equal((await c.closed).code, 4003)
  await waitUntil(waiters, () => failedLeaves().length === 3, 10_000, () => `no log of the disconnect's failed leave: ${JSON.stringify(logged)}`)
  // A round trip: a rejection left unhandled would have been reported by now.
  await b.sync()
  t.same(unhandled, [], 'no unhandled rejection')
})
