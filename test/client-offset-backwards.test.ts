import t from 'tap'
import WebSocket from 'ws'
import { MemoryAdapter } from '../src/index.js'
import { lowerOnce } from './helpers/held-store.js'
import { connect, type Gap } from '../src/client/index.js'
import { nextEvent } from './helpers/client.js'
import { startApp } from './helpers/server.js'


// A rejoin answered in the same epoch with an offset below the one the handle sent in `since` must not happen
// (the same (epoch, offset) would name two messages). If a store does it, the handle does not lower its offset
// silently: it is told as a reset, a gap that ends the old count (before: null).

t.test('a same-epoch rejoin answered below since: a gap says so, the offset is not lowered silently, later messages arrive', async (t) => {
  const store = lowerOnce(new MemoryAdapter())
  const { app, wsUrl } = await startApp(t, { adapter: store })
  const client = await connect(wsUrl, { WebSocket, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const room = await client.join('r')
  for (let i = 1; i <= 3; i++) await room.publish(i)
  t.equal(room.offset, 3)
  const epoch = room.epoch
  const gaps: Gap[] = []
  room.on('gap', (g) => gaps.push(g))
  store.lower = true
  const rejoined = nextEvent((h) => room.on('joined', h), () => true, client)
  client.reconnect()
  t.same(await rejoined, { recovered: false })
  t.same(gaps, [{ room: 'r', epoch, after: 3, before: null, currentEpoch: epoch }], 'told, not silent')
  const next = nextEvent<{ offset: number }>((h) => room.on('message', h), () => true, client)
  await app.rooms.broadcast('r', 'after')
  t.match(await next, { offset: 4 })
})
