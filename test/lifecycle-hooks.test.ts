import t from 'tap'
import type { ConnectContext, DisconnectContext, LeaveContext, RoomsOptions } from '../src/index.js'
import { eachAdapter } from './helpers/deployment.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'

type Call =
  | { hook: 'onConnect', ctx: ConnectContext }
  | { hook: 'onDisconnect', ctx: DisconnectContext }
  | { hook: 'onLeave', ctx: LeaveContext }

/** Every lifecycle hook call, in order, and a wait for the next one that matches. */
class Calls {
  readonly all: Call[] = []
  private readonly waiters = new Set<{ match: (call: Call) => boolean, resolve: (call: Call) => void }>()
  private seen = 0

  hooks (): Pick<RoomsOptions, 'onConnect' | 'onDisconnect' | 'onLeave'> {
    return {
      onConnect: (ctx) => { this.push({ hook: 'onConnect', ctx }) },
      onDisconnect: (ctx) => { this.push({ hook: 'onDisconnect', ctx }) },
      onLeave: (ctx) => { this.push({ hook: 'onLeave', ctx }) }
    }
  }

  push (call: Call): void {
    this.all.push(call)
    for (const waiter of this.waiters) {
      if (waiter.match(call)) {
        this.waiters.delete(waiter)
        waiter.resolve(call)
      }
    }
  }

  /** The first call after the last one waited for that matches (a guard of 10 s, as for frames). */
  async next (match: (call: Call) => boolean, what: string): Promise<Call> {
    const found = this.all.slice(this.seen).find(match)
    if (found !== undefined) {
      this.seen = this.all.indexOf(found) + 1
      return found
    }
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}; calls: ${this.summary().join(', ')}`)), 10_000)
      this.waiters.add({
        match,
        resolve: (call) => {
          clearTimeout(timer)
          this.seen = this.all.indexOf(call) + 1
          resolve(call)
        }
      })
    })
  }

  /** `hook:connectionId:room:cause` of every call, for order assertions. */
  summary (): string[] {
    return this.all.map(({ hook, ctx }) => [hook, ctx.user.id, 'room' in ctx ? ctx.room : '', 'cause' in ctx ? ctx.cause : '', 'code' in ctx ? ctx.code : ''].join(':'))
  }
}

const users = new Map([['ada', { id: 'u-ada', name: 'Ada', role: 'admin' }], ['bob', { id: 'u-bob', name: 'Bob', role: 'guest' }]])
const authenticate = (request: { headers: Record<string, unknown> }): { id: string, name: string, role: string } | undefined => users.get(String(request.headers['x-user']))
const as = (name: string): { headers: Record<string, string> } => ({ headers: { 'x-user': name, 'x-trace': `trace-${name}` } })

t.test('onConnect after welcome, onLeave for a leave and a close, onDisconnect with the close code: full user, request, in order', async (t) => {
  const calls = new Calls()
  const { wsUrl } = await startApp(t, { authenticate, ...calls.hooks() })
  const ada = await TestSocket.open(wsUrl, as('ada'))
  const connected = await calls.next((c) => c.hook === 'onConnect', 'onConnect')
  t.equal(connected.ctx.connectionId, ada.welcome.connectionId)
  t.same(connected.ctx.user, { id: 'u-ada', name: 'Ada', role: 'admin' }, 'the full user, not only the public fields')
  t.equal(connected.ctx.request.headers['x-trace'], 'trace-ada', 'the upgrade request, kept for these hooks alone')
  await ada.join('a')
  await ada.join('b')
  await ada.join('c')
  t.match(await ada.request({ type: 'leave', room: 'a' }), { type: 'left', room: 'a' })
  t.match((await calls.next((c) => c.hook === 'onLeave', 'onLeave a')).ctx, { connectionId: ada.welcome.connectionId, room: 'a', cause: 'leave', user: { role: 'admin' } })
  ada.ws.close(1000, 'bye')
  const disconnected = await calls.next((c) => c.hook === 'onDisconnect', 'onDisconnect')
  t.match(disconnected.ctx, { connectionId: ada.welcome.connectionId, code: 1000, reason: 'bye', user: { id: 'u-ada' } })
  t.equal(disconnected.ctx.request.headers['x-trace'], 'trace-ada')
  const rest = [await calls.next((c) => c.hook === 'onLeave', 'onLeave'), await calls.next((c) => c.hook === 'onLeave', 'onLeave')]
  t.same(rest.map((c) => [(c.ctx as LeaveContext).room, (c.ctx as LeaveContext).cause]).sort(), [['b', 'closed'], ['c', 'closed']], 'a goodbye leaves every room at once')
  t.same(calls.summary().slice(0, 3), ['onConnect:u-ada:::', 'onLeave:u-ada:a:leave:', 'onDisconnect:u-ada:::1000'], 'onConnect first, onDisconnect before the leaves of the close')
  t.equal(calls.all.length, 5)
})

t.test('a dropped connection: onDisconnect at once, onLeave when its grace time ends', async (t) => {
  const calls = new Calls()
  const { wsUrl } = await startApp(t, { authenticate, presenceGraceMs: 200, ...calls.hooks() })
  const bob = await TestSocket.open(wsUrl, as('bob'))
  await bob.join('r')
  bob.ws.terminate()
  const disconnected = await calls.next((c) => c.hook === 'onDisconnect', 'onDisconnect')
  const dropped = Date.now()
  t.equal((disconnected.ctx as DisconnectContext).code, 1006, 'a cut without a close frame')
  t.equal(calls.all.filter((c) => c.hook === 'onLeave').length, 0, 'still a member during its grace')
  t.match((await calls.next((c) => c.hook === 'onLeave', 'onLeave')).ctx, { room: 'r', cause: 'closed', connectionId: bob.welcome.connectionId })
  t.ok(Date.now() - dropped >= 150, 'not before the grace time')
})

t.test('a throwing or rejecting hook is logged, and blocks neither the connection nor the next hooks', async (t) => {
  const logged: Array<Record<string, any>> = []
  const stream = { write: (line: string) => { logged.push(JSON.parse(line)) } }
  const calls = new Calls()
  const { wsUrl } = await startApp(t, {
    authenticate,
    onConnect: () => { throw new Error('connect failed') },
    onLeave: async (ctx) => { calls.push({ hook: 'onLeave', ctx }); throw new Error('leave failed') },
    onDisconnect: (ctx) => { calls.push({ hook: 'onDisconnect', ctx }) }
  }, undefined, { logger: { level: 'error', stream } })
  const ada = await TestSocket.open(wsUrl, as('ada'))
  await ada.join('r')
  t.match(await ada.request({ type: 'publish', room: 'r', data: 1 }), { type: 'ack', offset: 1 })
  await ada.request({ type: 'leave', room: 'r' })
  await calls.next((c) => c.hook === 'onLeave', 'onLeave')
  t.match(await ada.join('r'), { type: 'joined' }, 'the connection goes on')
  await ada.close()
  await calls.next((c) => c.hook === 'onDisconnect', 'onDisconnect after a failed onConnect')
  await calls.next((c) => c.hook === 'onLeave', 'onLeave after a failed onLeave')
  const failures = logged.filter((l) => l.msg === 'fastify-rooms: a hook failed')
  t.match(failures[0], { hook: 'onConnect', connectionId: ada.welcome.connectionId, err: { message: 'connect failed' } })
  t.match(failures[1], { hook: 'onLeave', room: 'r', err: { message: 'leave failed' } })
})

t.test('a slow hook holds back only the later hooks of its connection, never its frames', async (t) => {
  let release!: () => void
  const gate = new Promise<void>((resolve) => { release = resolve })
  const calls = new Calls()
  const { wsUrl } = await startApp(t, {
    authenticate,
    onConnect: async (ctx) => { calls.push({ hook: 'onConnect', ctx }); if (ctx.user.id === 'u-ada') await gate },
    onLeave: (ctx) => { calls.push({ hook: 'onLeave', ctx }) },
    onDisconnect: (ctx) => { calls.push({ hook: 'onDisconnect', ctx }) }
  })
  const ada = await TestSocket.open(wsUrl, as('ada'))
  const bob = await TestSocket.open(wsUrl, as('bob'))
  t.teardown(() => bob.close())
  await ada.join('r')
  await ada.request({ type: 'leave', room: 'r' })
  await ada.join('r')
  t.match(await ada.request({ type: 'publish', room: 'r', data: 'x' }), { type: 'ack' }, 'frames flow while onConnect is pending')
  await bob.join('r')
  await bob.request({ type: 'leave', room: 'r' })
  await calls.next((c) => c.hook === 'onLeave' && c.ctx.user.id === 'u-bob', "bob's onLeave waits for bob's hooks only")
  t.equal(calls.all.filter((c) => c.ctx.user.id === 'u-ada' && c.hook !== 'onConnect').length, 0, "ada's onLeave waits for ada's onConnect")
  release()
  await calls.next((c) => c.hook === 'onLeave' && c.ctx.user.id === 'u-ada', "ada's onLeave")
})

t.test('a connection refused before welcome calls no hook', async (t) => {
  const calls = new Calls()
  const { wsUrl } = await startApp(t, { verifyToken: async (token) => { if (token !== 'good') throw new Error('bad'); return { user: { id: 'u-t', name: 't' } } }, ...calls.hooks() })
  const refused = await TestSocket.connect(wsUrl)
  refused.send({ type: 'auth', token: 'bad' })
  t.equal((await refused.closed).code, 4001)
  const ok = await TestSocket.connect(wsUrl)
  await ok.authenticate('good')
  await calls.next((c) => c.hook === 'onConnect', 'onConnect after the in-band auth')
  await ok.close()
  await calls.next((c) => c.hook === 'onDisconnect', 'onDisconnect')
  t.same(calls.all.map((c) => [c.hook, c.ctx.user.id]), [['onConnect', 'u-t'], ['onDisconnect', 'u-t']])
})

eachAdapter(t, 'onLeave on the node that holds the connection: a removal from any node, and the end of a grace cut short by the user\'s return', async (t, deploy) => {
  const calls = new Calls()
  const d = await deploy({ authenticate, presenceGraceMs: 60_000, ...calls.hooks() })
  const ada = await TestSocket.open(d.node(1).wsUrl, as('ada'))
  t.teardown(() => ada.close())
  await ada.join('r')
  await d.app.rooms.removeFromRoom(ada.welcome.connectionId, 'r', 'out')
  t.match((await calls.next((c) => c.hook === 'onLeave', 'onLeave')).ctx, { connectionId: ada.welcome.connectionId, room: 'r', cause: 'removed' })
  const b1 = await TestSocket.open(d.node(1).wsUrl, as('bob'))
  await b1.join('r')
  b1.ws.terminate()
  await calls.next((c) => c.hook === 'onDisconnect', 'onDisconnect of the drop')
  const b2 = await TestSocket.open(d.node(0).wsUrl, as('bob'))
  t.teardown(() => b2.close())
  await b2.join('r')
  t.match((await calls.next((c) => c.hook === 'onLeave', 'onLeave of the dropped connection')).ctx, { connectionId: b1.welcome.connectionId, room: 'r', cause: 'closed' }, 'long before its 60 s grace')
})
