import t from 'tap'
import { TestSocket } from './helpers/socket.js'
import { eachAdapter } from './helpers/deployment.js'
import { guard } from './helpers/until.js'

eachAdapter(t, '1,000 rapid publishes from several clients: no loss, no duplicate, no reordering', async (t, deploy) => {
  // Far above the default rate limit, on purpose: this is a stress of ordering, not of limits.
  const d = await deploy({ maxFramesPerSecond: 1e6, frameBurst: 10_000 })
  const publishers = 5
  const perPublisher = 200
  const total = publishers * perPublisher
  // Publishers and listeners alternate between the instances.
  const clients = await Promise.all(Array.from({ length: publishers + 2 }, async (_, i) => await TestSocket.open(d.node(i).wsUrl)))
  t.teardown(() => Promise.all(clients.map(async (c) => await c.close())))
  for (const c of clients) await c.join('busy')

  const received = clients.map(() => [] as Array<{ offset: number, data: { p: number, n: number } }>)
  const done = clients.map((c, i) => new Promise<void>((resolve) => {
    c.ws.on('message', (raw) => {
      const frame = JSON.parse(raw.toString())
      if (frame.type !== 'message') return
      received[i]!.push(frame)
      if (received[i]!.length === total) resolve()
    })
  }))
  // Every publisher fires all its frames at once, without waiting for acks.
  for (let p = 0; p < publishers; p++) {
    for (let n = 0; n < perPublisher; n++) clients[p]!.send({ type: 'publish', room: 'busy', id: `p${p}-${n}`, data: { p, n } })
  }
  await guard(Promise.all(done), `every client to get all ${total} messages`, { ms: 60_000, abort: clients.map((c) => c.closed) })
  // On Redis a publisher's ack (the script's reply) and its message (the pub/sub
  // channel) reach the node apart, in either order: the last ack is its own event.
  await Promise.all(clients.slice(0, publishers).map(async (c, p) => await c.next((f) => f.type === 'ack' && f.id === `p${p}-${perPublisher - 1}`, `publisher ${p}'s last ack`)))

  for (const [i, list] of received.entries()) {
    t.same(list.map((m) => m.offset), Array.from({ length: total }, (_, k) => k + 1), `client ${i}: offsets 1..${total} once each, in order`)
    for (let p = 0; p < publishers; p++) {
      const mine = list.filter((m) => m.data.p === p).map((m) => m.data.n)
      t.same(mine, Array.from({ length: perPublisher }, (_, k) => k), `client ${i}: publisher ${p}'s messages in the order sent`)
    }
  }
  for (let p = 0; p < publishers; p++) {
    // (Its last ack was awaited above.)
    const acks = clients[p]!.frames.filter((f) => f.type === 'ack')
    t.equal(acks.length, perPublisher, `publisher ${p} got one ack per publish`)
    t.ok(acks.every((a, k) => a.id === `p${p}-${k}`), 'acks come in publish order')
  }
})
