import t from 'tap'
import WebSocket from 'ws'
import { connect, type RoomMessage } from '../src/client/index.js'
import { startApp } from './helpers/server.js'
import { nextEvent } from './helpers/client.js'

const global = globalThis as { WebSocket?: unknown }

/** Run `fn` with `globalThis.WebSocket` set to `value` (deleted for undefined), restoring it after. */
async function withGlobal (value: unknown, fn: () => Promise<void>): Promise<void> {
  const had = Object.hasOwn(global, 'WebSocket')
  const before = global.WebSocket
  if (value === undefined) delete global.WebSocket
  else global.WebSocket = value
  try {
    await fn()
  } finally {
    if (had) global.WebSocket = before
    else delete global.WebSocket
  }
}

t.test('without the WebSocket option the global WebSocket is used (browsers, Node 22+)', async (t) => {
  const { wsUrl } = await startApp(t)
  // Node 22 and later have their own; Node 20 gets ws as the global, as a polyfill would install it.
  const native = typeof global.WebSocket === 'function'
  await withGlobal(native ? global.WebSocket : WebSocket, async () => {
    const client = await connect(wsUrl, { name: 'ada' })
    t.teardown(() => client.close())
    const room = await client.join('r')
    const got = nextEvent<RoomMessage>((h) => room.on('message', h), undefined, { client, room, what: 'the message' }).then((m) => m.data)
    t.equal(await room.publish({ text: 'hi' }), 1)
    t.same(await got, { text: 'hi' })
    t.equal(client.user?.name, 'ada')
  })
})

t.test('the WebSocket option wins over the global one', async (t) => {
  const { wsUrl } = await startApp(t)
  await withGlobal(class { constructor () { throw new Error('the global was used') } }, async () => {
    const client = await connect(wsUrl, { WebSocket })
    t.teardown(() => client.close())
    t.equal(client.state, 'open')
  })
})

t.test('with neither a global WebSocket nor the option, connect says what to pass', async (t) => {
  await withGlobal(undefined, async () => {
    await t.rejects(connect('ws://127.0.0.1:1/ws'), { name: 'TypeError', message: /no global WebSocket \(Node 20\), so pass options\.WebSocket/ })
  })
})
