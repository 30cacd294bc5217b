import t from 'tap'
import { TestSocket } from './helpers/socket.js'
import { eachAdapter } from './helpers/deployment.js'

eachAdapter(t, 'ephemeral publishes: no offset, not stored, not recovered; acked without an offset', async (t, deploy) => {
  const d = await deploy({ maxMessageBytes: 100 })
  const ada = await TestSocket.open(`${d.node(0).wsUrl}?name=ada`)
  const bob = await TestSocket.open(`${d.node(1).wsUrl}?name=bob`)
  t.teardown(() => Promise.all([ada.close(), bob.close()]))
  await ada.join('r')
  const joined = await bob.join('r')
  const ack = await ada.request({ type: 'publish', room: 'r', data: { typing: true }, ephemeral: true })
  t.same(ack, { type: 'ack', id: ack.id, room: 'r' }, 'no offset in the ack')
  const typing = await bob.next((f) => f.type === 'message')
  t.same(typing, { type: 'message', room: 'r', data: { typing: true }, ts: typing.ts, from: ada.welcome.user, ephemeral: true })
  t.type(typing.ts, 'number')
  t.match(await ada.next((f) => f.type === 'message'), { ephemeral: true }, 'the publisher gets it too')

  const { offset } = await ada.request({ type: 'publish', room: 'r', data: 'kept' })
  t.equal(offset, joined.offset + 1, 'the ephemeral message took no offset')
  t.equal(await d.app.rooms.broadcast('r', 'blink', { ephemeral: true }), undefined)
  t.same(await bob.next((f) => f.type === 'message' && f.data === 'blink'), { type: 'message', room: 'r', data: 'blink', ts: (bob.frames.at(-1) as { ts: number }).ts, ephemeral: true }, 'a server ephemeral has no from')
  const history = await d.node(1).app.rooms.history('r')
  t.same(history?.messages.map((m) => JSON.parse(m.frame).data), ['kept'], 'history holds only the kept message')

  const late = await TestSocket.open(d.node(1).wsUrl)
  t.teardown(() => late.close())
  await late.join('r', { since: { offset: joined.offset, epoch: joined.epoch } })
  const replayed = await late.next((f) => f.type === 'message')
  t.equal(replayed.data, 'kept', 'a resume replays only kept messages')

  t.match(await ada.request({ type: 'publish', room: 'other', data: 1, ephemeral: true }), { type: 'error', code: 'NOT_IN_ROOM' })
  t.match(await ada.request({ type: 'publish', room: 'r', data: 1, ephemeral: 'yes' }), { type: 'error', code: 'INVALID_FRAME' })
  t.match(await ada.request({ type: 'publish', room: 'r', data: 'x'.repeat(200), ephemeral: true }), { type: 'error', code: 'PAYLOAD_TOO_LARGE' })
  const rest = await (await fetch(`${d.node(0).url}/rooms/r/messages`)).json()
  t.same(rest.messages.map((m: { data: unknown }) => m.data), ['kept'], 'REST history too')
})
