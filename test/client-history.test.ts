import t, { type Test } from 'tap'
import WebSocket from 'ws'
import { connect, type HistoryPage, type Room, type RoomsClient, type WebSocketConstructor, type WebSocketLike } from '../src/client/index.js'
import type { RoomsOptions } from '../src/index.js'
import { startApp } from './helpers/server.js'
import { gate, nextEvent, nextState } from './helpers/client.js'
import { connectionOf } from '../src/connection.js'

/**
 * The messages `published` in room r, then a client that joins it with `history`: the room handle as join()
 * resolves, in the turn whose replay is still held for the handlers the test attaches next.
 */
async function joinedWithHistory (t: Test, published: unknown[], history: number, options: RoomsOptions = {}): Promise<{ client: RoomsClient<unknown>, room: Room<unknown> }> {
  const { app, wsUrl } = await startApp(t, options)
  for (const data of published) await app.rooms.broadcast('r', data)
  const client = await connect(wsUrl, { WebSocket })
  t.teardown(() => client.close())
  return { client, room: await client.join('r', { history }) }
}

/** The real ws client, keeping every frame the SDK sends. */
function recording (): { WebSocket: WebSocketConstructor, sent: Array<Record<string, unknown>> } {
  const sent: Array<Record<string, unknown>> = []
  class Recorded extends WebSocket {
    override send (data: unknown, ...rest: unknown[]): void {
      sent.push(JSON.parse(String(data)))
      ;(super.send as (...args: unknown[]) => void)(data, ...rest)
    }
  }
  return { WebSocket: Recorded as unknown as WebSocketConstructor, sent }
}

// Needs `history: n` in the registry (PROTOCOL v2): on a server without it
// nothing is replayed after `joined`.
t.test('join(room, { history }) delivers the last n stored messages through the message handlers; a rejoin uses since, not history', async (t) => {
  const { app, wsUrl } = await startApp(t)
  for (const n of [1, 2, 3, 4, 5]) await app.rooms.broadcast('r', n)
  const { WebSocket: Recorded, sent } = recording()
  const client = await connect(wsUrl, { WebSocket: Recorded, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } })
  t.teardown(() => client.close())

  const room = await client.join('r', { history: 3 })
  // Handlers attached once join() resolved still get the history that came with `joined`.
  const delivered: unknown[] = []
  room.on('message', (m) => delivered.push(m.data))
  await client.ping()
  await app.rooms.broadcast('r', 6)
  await client.ping()
  t.same(delivered, [3, 4, 5, 6], 'the last three, oldest first, then live')

  const rejoined = nextEvent((h) => room.on('joined', h), undefined, { room, what: 'the rejoin' })
  for (const socket of app.websocketServer.clients) socket.terminate()
  t.same(await rejoined, { recovered: true })
  await client.ping()
  t.same(delivered, [3, 4, 5, 6], 'nothing twice after the rejoin')
  const joins = sent.filter((f) => f.type === 'join').map(({ id, ...frame }) => frame)
  t.same(joins, [
    { type: 'join', room: 'r', history: 3 },
    { type: 'join', room: 'r', since: { offset: 6, epoch: room.epoch } }
  ])
})

/**
 * The real ws client, except that the first `joined` is handed to the SDK
 * only together with the frame after it, in one turn: what ws does when both
 * arrive in one TCP read.
 */
function coalescing (): { WebSocket: WebSocketConstructor, joinedHeld: Promise<void> } {
  let onHeld!: () => void
  const joinedHeld = new Promise<void>((resolve) => { onHeld = resolve })
  class Coalescing implements WebSocketLike {
    onopen: ((event: any) => void) | null = null
    onmessage: ((event: any) => void) | null = null
    onclose: ((event: any) => void) | null = null
    onerror: ((event: any) => void) | null = null
    private readonly ws: WebSocket
    constructor (url: string) {
      this.ws = new WebSocket(url)
      let held: string | undefined
      let holding = true
      this.ws.on('message', (raw) => {
        const text = raw.toString()
        if (holding && (JSON.parse(text) as { type: string }).type === 'joined') {
          holding = false
          held = text
          onHeld()
          return
        }
        if (held !== undefined) this.onmessage?.({ data: held })
        held = undefined
        this.onmessage?.({ data: text })
      })
      this.ws.on('close', (code, reason) => this.onclose?.({ code, reason: reason.toString() }))
      this.ws.on('error', (err) => this.onerror?.(err))
    }

    get readyState (): number { return this.ws.readyState }
    send (data: string): void { this.ws.send(data) }
    close (code?: number, reason?: string): void { this.ws.close(code, reason) }
  }
  return { WebSocket: Coalescing, joinedHeld }
}

t.test('the handlers of a new handle, attached once join() resolved, get the messages read in the same turn as joined', async (t) => {
  const { app, wsUrl } = await startApp(t)
  await app.rooms.broadcast('r', 'before')
  const { WebSocket: Coalescing, joinedHeld } = coalescing()
  const client = await connect(wsUrl, { WebSocket: Coalescing })
  t.teardown(() => client.close())
  const joining = client.join('r')
  await joinedHeld
  await app.rooms.broadcast('r', 'same read as joined')
  const room = await joining
  const delivered: unknown[] = []
  room.on('message', (m) => delivered.push(m.data))
  await client.ping()
  t.same(delivered, ['same read as joined'])
  t.equal(room.offset, 2)
})

for (const how of ['room.leave()', 'client.close()']) {
  t.test(`a message handler that calls ${how} during the history replay: nothing after left`, async (t) => {
    const { client, room } = await joinedWithHistory(t, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 10)
    const events: string[] = []
    const left = nextEvent((h) => room.on('left', h))
    room.on('left', (info) => events.push(`left ${info.cause}`))
    room.on('message', (m) => {
      events.push(`msg ${m.offset}`)
      if (m.offset !== 3) return
      if (how === 'room.leave()') room.leave().catch(() => {})
      else client.close()
    })
    // A second handler of the same event: the handle stops receiving at once, not after this message's handlers.
    room.on('message', (m) => events.push(`second ${m.offset}`))
    // Left in the middle of the held messages: their delivery is over by the time this runs.
    await left
    t.same(events, ['msg 1', 'second 1', 'msg 2', 'second 2', 'msg 3', `left ${how === 'room.leave()' ? 'leave' : 'closed'}`])
  })
}

t.test('a message handler that leaves on a live message: the handlers after it do not get that message', async (t) => {
  const { app, wsUrl } = await startApp(t)
  const client = await connect(wsUrl, { WebSocket })
  t.teardown(() => client.close())
  const room = await client.join('r')
  const events: string[] = []
  const left = nextEvent((h) => room.on('left', h))
  room.on('message', (m) => {
    events.push(`first ${String(m.data)}`)
    room.leave().catch(() => {})
  })
  room.on('message', (m) => events.push(`second ${String(m.data)}`))
  room.on('left', () => events.push('left'))
  await app.rooms.broadcast('r', 'live')
  await left
  t.same(events, ['first live', 'left'])
})

t.test('a gap handler that leaves during a rejoin: nothing of the rejoin follows left (no presence, count or joined)', async (t) => {
  const upgrades = gate()
  const { app, wsUrl } = await startApp(t, { historySize: 1 }, upgrades.setup)
  const bob = await connect(wsUrl, { WebSocket, name: 'bob' })
  t.teardown(() => bob.close())
  const bobs = await bob.join('r')
  const ada = await connect(wsUrl, { WebSocket, name: 'ada', reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
  t.teardown(() => ada.close())
  const room = await ada.join('r')
  const log: string[] = []
  room.on('gap', (gap) => {
    log.push(`gap ${gap.after}-${String(gap.before)}`)
    room.leave().catch(() => {})
  })
  room.on('left', (info) => log.push(`left ${info.cause}`))
  room.on('joined', (info) => log.push(`joined ${String(info.recovered)}`))
  room.on('presence', () => log.push('presence'))
  room.on('count', () => log.push('count'))
  room.on('message', (m) => log.push(`msg ${m.offset}`))
  const first = nextEvent((h) => room.on('message', h))
  await app.rooms.broadcast('r', 1)
  await first
  upgrades.closed = true
  const away = nextState(ada, 'reconnecting')
  for (const socket of app.websocketServer.clients) if (connectionOf(socket)?.user.name === 'ada') socket.terminate()
  await away
  // Missed while away: 2-4 (history keeps 1 message, so the rejoin is a gap) and bob's leave (a presence change and a count).
  for (const n of [2, 3, 4]) await app.rooms.broadcast('r', n)
  await bobs.leave()
  const left = nextEvent((h) => room.on('left', h))
  upgrades.closed = false
  await left
  await ada.ping()
  t.same(log, ['msg 1', 'gap 1-5', 'left leave'])
})

t.test('room.history() called as join({ history }) resolves: the page ends where the handlers are, not past the held replay', async (t) => {
  const { client: ada, room } = await joinedWithHistory(t, [1, 2, 3, 4], 2)
  const delivered: number[] = []
  room.on('message', (m) => delivered.push(m.offset))
  // Called in the same turn: 3 and 4 are held for the handlers just attached.
  const page = await room.history({ limit: 10 })
  await ada.ping()
  t.same(page.messages.map((m) => m.offset), [1, 2], 'what the replay delivers is not in the page')
  t.same(delivered, [3, 4])
})

t.test('room.history() called from the first message handler of a join({ history }) replay: the page ends at that message', async (t) => {
  const { client: ada, room } = await joinedWithHistory(t, [1, 2, 3, 4], 3)
  const delivered: number[] = []
  let page: Promise<HistoryPage> | undefined
  // "Load what came before" on the first message: 3 and 4 are still being released to the handlers.
  room.on('message', (m) => {
    delivered.push(m.offset)
    page ??= room.history({ limit: 10 })
  })
  await ada.ping()
  t.same(delivered, [2, 3, 4])
  t.same((await page)?.messages.map((m) => m.offset), [1, 2], 'nothing the handlers are still to get')
})

t.test('room.history() from the handlers of a join({ history }) replay over a hole: each page ends where the handlers are, a held gap included', async (t) => {
  // 2 is over maxHistoryBytes: delivered to the members of the moment, not kept. The replay is 1, a gap 1-3, 3, 4.
  const { client: ada, room } = await joinedWithHistory(t, ['a', 'x'.repeat(9000), 'c', 'd'], 4, { maxHistoryBytes: 8192 })
  const log: string[] = []
  const pages: Array<Promise<HistoryPage>> = []
  room.on('message', (m) => { log.push(`msg ${m.offset}`); pages.push(room.history({ limit: 10 })) })
  room.on('gap', (g) => { log.push(`gap ${g.after}-${String(g.before)}`); pages.push(room.history({ limit: 10 })) })
  await ada.ping()
  t.same(log, ['msg 1', 'gap 1-3', 'msg 3', 'msg 4'])
  t.same((await Promise.all(pages)).map((p) => p.messages.map((m) => m.offset)), [[1], [1], [1, 3], [1, 3, 4]])
})

t.test('a held replay released again from one of its handlers (the SDK\'s own release, as a WebSocket that delivers frames inside send() would cause) is delivered once', async (t) => {
  const { client: ada, room } = await joinedWithHistory(t, [1, 2, 3, 4], 4)
  const log: number[] = []
  room.on('message', (m) => {
    log.push(m.offset)
    if (m.offset === 2) room.release()
  })
  await ada.ping()
  t.same(log, [1, 2, 3, 4], 'each once, in order')
})
