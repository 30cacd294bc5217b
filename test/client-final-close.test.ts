import t from 'tap'
import WebSocket from 'ws'
import { connect, type LeftInfo, type Room, type RoomsClient, type RoomsClientError } from '../src/client/index.js'
import { UNAUTHORIZED_REASONS } from '../src/index.js'
import { ADA, scripted, startTokenApp, token } from './fixtures/token-auth.js'
import { startApp, type Started } from './helpers/server.js'

// A final close (the server's 4003, a 4001 the client does not retry, close()) while a publish is in flight: it was sent, so it may or may not
// have been applied. It rejects with the code that says why the client stopped (CLOSED), and a sentence that
// says it may have been applied; the room handles end with `left` { cause: 'closed' }.

/** An onPublish hook that holds each publish until released: the publish is in flight, its reply not yet sent. */
function heldPublishes (): { hook: () => Promise<boolean>, entered: Promise<void>, release: () => void } {
  let entered = (): void => {}
  let release = (): void => {}
  const reached = new Promise<void>((resolve) => { entered = resolve })
  const released = new Promise<void>((resolve) => { release = resolve })
  return { hook: async () => { entered(); await released; return true }, entered: reached, release }
}

/** Join room 'r' and publish into it; resolves once the hook holds the publish: it is in flight. */
async function publishInFlight (client: RoomsClient, held: { entered: Promise<void> }): Promise<{ room: Room, lefts: LeftInfo[], inFlight: Promise<unknown> }> {
  const room = await client.join('r')
  const lefts: LeftInfo[] = []
  room.on('left', (info) => lefts.push(info))
  const inFlight = room.publish('sent').catch((err: RoomsClientError) => err)
  await held.entered
  return { room, lefts, inFlight }
}

t.test('4003 while a publish is in flight: CLOSED, "may or may not have been applied"; the handle ends with cause closed', async (t) => {
  const held = heldPublishes()
  const { app, wsUrl } = await startApp(t, { onPublish: held.hook })
  t.teardown(() => held.release())
  const client = await connect(wsUrl, { WebSocket })
  t.teardown(() => client.close())
  const { room, lefts, inFlight } = await publishInFlight(client, held)
  await app.rooms.disconnect(client.connectionId, 'kicked by admin')
  t.match(await inFlight, {
    code: 'CLOSED',
    room: 'r',
    message: /disconnected this client.*may or may not have been applied/,
    close: { code: 4003, reason: 'kicked by admin', byClient: false }
  })
  t.match(lefts, [{ cause: 'closed', reason: 'kicked by admin', error: { code: 'CLOSED' } }], 'left once, told with the state')
  t.equal(room.status, 'left')
  t.equal(client.room('r'), undefined, 'no longer the client\'s handle')
  await t.rejects(room.loadMoreMembers(), { code: 'CLOSED', close: { code: 4003 } }, 'calls on it say why')
  await t.rejects(room.history(), { code: 'CLOSED' })
})

t.test('close() while a publish is in flight: CLOSED, "may or may not have been applied"; the handle ends with cause closed', async (t) => {
  const held = heldPublishes()
  const { wsUrl } = await startApp(t, { onPublish: held.hook })
  t.teardown(() => held.release())
  const client = await connect(wsUrl, { WebSocket })
  const { room, lefts, inFlight } = await publishInFlight(client, held)
  client.close()
  t.match(await inFlight, { code: 'CLOSED', room: 'r', message: 'The client was closed. The request had been sent: it may or may not have been applied.' })
  t.match(lefts, [{ cause: 'closed', reason: 'client closed' }], 'left once')
  t.equal(room.status, 'left')
})

t.test('a final 4001 (token expired, refresh failed, no reconnect) while a publish is in flight: UNAUTHORIZED, "may or may not have been applied"', async (t) => {
  const held = heldPublishes()
  const { wsUrl } = await startTokenApp(t, { onPublish: held.hook })
  t.teardown(() => held.release())
  // Long enough to join and publish before it expires; the refresh fails, so the server closes 4001 at expiry.
  const { getToken } = scripted(() => token(ADA.id, Date.now() + 3000), () => { throw new Error('token service down') })
  const client = await connect(wsUrl, { WebSocket, getToken, reconnect: false })
  t.teardown(() => client.close())
  const { room, lefts, inFlight } = await publishInFlight(client, held)
  t.match(await inFlight, {
    code: 'UNAUTHORIZED',
    room: 'r',
    message: /refused the credentials.*may or may not have been applied/,
    close: { code: 4001, reason: UNAUTHORIZED_REASONS.expired, byClient: false }
  })
  t.match(lefts, [{ cause: 'closed', error: { code: 'UNAUTHORIZED' } }], 'left once, with the reason')
  t.equal(room.status, 'left')
  t.equal(client.state, 'closed')
})

// plugin.md: room.leave() resolves when the server confirmed or the connection is gone; it rejects only with TIMEOUT or a
// refusal. A leave sent behind the held publish is in flight, unanswered, when the client stops for good.
for (const { end, stop } of [
  { end: 'close()', stop: async (client: RoomsClient) => { client.close() } },
  { end: 'a 4003', stop: async (client: RoomsClient, app: Started['app']) => { await app.rooms.disconnect(client.connectionId, 'kicked by admin') } },
  { end: 'a final 4001', stop: async () => {} }
]) {
  t.test(`${end} while room.leave() is in flight: leave() resolves, the connection is gone`, async (t) => {
    const held = heldPublishes()
    const tokens = end === 'a final 4001'
    const { app, wsUrl } = tokens ? await startTokenApp(t, { onPublish: held.hook }) : await startApp(t, { onPublish: held.hook })
    t.teardown(() => held.release())
    // With tokens: long enough to join and publish before it expires; the refresh fails, so the server closes 4001 at expiry.
    const { getToken } = scripted(() => token(ADA.id, Date.now() + 3000), () => { throw new Error('token service down') })
    const client = await connect(wsUrl, { WebSocket, reconnect: false, ...(tokens ? { getToken } : {}) })
    t.teardown(() => client.close())
    const { room, lefts, inFlight } = await publishInFlight(client, held)
    const leaving = room.leave().then(() => 'resolved', (err: RoomsClientError) => `rejected ${err.code}: ${err.message}`)
    await stop(client, app)
    t.equal(await leaving, 'resolved')
    t.match(await inFlight, { code: tokens ? 'UNAUTHORIZED' : 'CLOSED' }, 'the publish in flight rejects as before')
    t.equal(client.state, 'closed')
    t.match(lefts, [{ cause: 'leave' }], 'left once, by the leave')
  })
}
