import t from 'tap'
import WebSocket from 'ws'
import type { FastifyInstance } from 'fastify'
import { connect, type LeftInfo, type RoomsClient, type RoomsClientError } from '../src/client/index.js'
import { startApp } from './helpers/server.js'
import { nextEvent } from './helpers/client.js'

/**
 * The server removes the connection from a room: an unsolicited `left`
 * (PROTOCOL v2), written on the server's side of the client's socket. Until
 * the registry has a kick, the frame is written directly; the server itself
 * still counts the connection as a member.
 */
function kick (app: FastifyInstance, room: string, reason?: string): void {
  for (const socket of app.websocketServer.clients) socket.send(JSON.stringify({ type: 'left', room, ...(reason === undefined ? {} : { reason }) }))
}

async function nextLeft (client: RoomsClient, room: string): Promise<LeftInfo> {
  return await nextEvent((h) => client.room(room)!.on('left', h), undefined, { client, what: `room ${room} to be left` })
}

t.test('an unsolicited left: the handle says why, is dropped, rejects publishes with NOT_IN_ROOM, and is not rejoined', async (t) => {
  const { app, wsUrl } = await startApp(t)
  const client = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const room = await client.join('r')
  const other = await client.join('other')
  const delivered: unknown[] = []
  room.on('message', (m) => delivered.push(m.data))

  const left = nextLeft(client, 'r')
  kick(app, 'r', 'kicked by admin')
  t.same(await left, { cause: 'server', reason: 'kicked by admin' })
  t.equal(room.status, 'left')
  t.equal(client.room('r'), undefined)
  t.equal(client.room('other'), other)
  await t.rejects(room.publish('after the kick'), { code: 'NOT_IN_ROOM', room: 'r' })
  await room.leave()

  await app.rooms.broadcast('r', 'not for a left handle')
  await client.ping()
  t.same(delivered, [], 'a left handle receives nothing')

  const rejoined = nextEvent((h) => other.on('joined', h), undefined, { client, room: other, what: "the other room's rejoin" })
  for (const socket of app.websocketServer.clients) socket.terminate()
  await rejoined
  await client.ping()
  const inRoom = async (name: string): Promise<boolean | undefined> => (await app.rooms.get(name))?.members.some((m) => m.id === client.user?.id)
  t.notOk(await inRoom('r'), 'the kicked room is not rejoined')
  t.ok(await inRoom('other'), 'the others are')
})

t.test('a left without a reason, and for a room the client is not in, are handled', async (t) => {
  const { app, wsUrl } = await startApp(t)
  const client = await connect(wsUrl, { WebSocket })
  t.teardown(() => client.close())
  const errors: RoomsClientError[] = []
  client.on('error', (err) => errors.push(err))
  await client.join('r')
  const left = nextLeft(client, 'r')
  kick(app, 'r')
  kick(app, 'never-joined')
  t.same(await left, { cause: 'server', reason: undefined })
  await client.ping()
  t.same(errors, [])
})

t.test('room.leave() tells the handle, once', async (t) => {
  const { wsUrl } = await startApp(t)
  const client = await connect(wsUrl, { WebSocket })
  t.teardown(() => client.close())
  const room = await client.join('r')
  const told: LeftInfo[] = []
  room.on('left', (info) => told.push(info))
  await room.leave()
  await room.leave()
  t.same(told, [{ cause: 'leave', reason: undefined }])
})

t.test('a rejoin refused after a reconnect: the handle is told with the error, the client emits error, queued publishes get the refusal', async (t) => {
  let allowed = true
  const { app, wsUrl } = await startApp(t, { onJoin: () => allowed })
  const client = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const room = await client.join('r')
  const errors: RoomsClientError[] = []
  client.on('error', (err) => errors.push(err))
  let queued: Promise<number> | undefined
  client.on('state', (state) => { if (state === 'reconnecting' && queued === undefined) queued = room.publish('queued') })
  const left = nextLeft(client, 'r')
  allowed = false
  for (const socket of app.websocketServer.clients) socket.terminate()
  const info = await left
  t.match(info, { cause: 'refused', reason: 'You may not join room "r".', error: { code: 'FORBIDDEN' } })
  t.match(errors, [{ code: 'FORBIDDEN', room: 'r' }])
  t.equal(client.room('r'), undefined)
  await t.rejects(queued!, { code: 'NOT_IN_ROOM' }, 'sent after the refused join, refused by the server')
  await t.rejects(room.publish('later'), { code: 'NOT_IN_ROOM' })
})
