import t from 'tap'
import type { Socket } from 'node:net'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { MemoryAdapter, type RoomsOptions } from '../src/index.js'
import type { EncodedPublish } from '../src/protocol.js'

/**
 * Frames that reach the server in one TCP read are handled one after another
 * in the same turn. Without an `onPublish` hook the memory adapter stores and
 * fans out a publish before it returns, so the next frame is handled at once;
 * with one, each publish waits for its hook. Either way the replies and
 * messages come out in frame order, with every message before its ack.
 */
const shapes: Array<[string, RoomsOptions]> = [
  ['without hooks (publishes done at once)', {}],
  ['with an onPublish hook (each publish waits for it)', { onPublish: async () => true }]
]

for (const [name, options] of shapes) {
  t.test(`a burst of frames in one TCP write is answered in frame order, ${name}`, async (t) => {
    const { wsUrl } = await startApp(t, { maxMessageBytes: 64, ...options })
    const ada = await TestSocket.open(wsUrl)
    const bob = await TestSocket.open(wsUrl)
    t.teardown(async () => { await ada.close(); await bob.close() })
    await ada.join('burst')
    await bob.join('burst')
    // Drop the presence frames of the joins: only the burst's frames are compared.
    await ada.sync()
    await bob.sync()
    const seenBefore = { ada: ada.frames.length, bob: bob.frames.length }

    const raw = (ada.ws as unknown as { _socket: Socket })._socket
    raw.cork()
    ada.send({ type: 'publish', room: 'burst', id: 1, data: { n: 1 } })
    ada.send({ type: 'publish', room: 'elsewhere', id: 2, data: { n: 2 } })
    ada.send({ type: 'ping', id: 3 })
    // Not in the encoder's form: encoded again, delivered as JSON.stringify writes it.
    ada.send('{"type":"publish","room":"burst","id":4,"data":{"n":1.50}}')
    ada.send({ type: 'publish', room: 'burst', id: 5, data: 'typing', ephemeral: true })
    ada.send({ type: 'publish', room: 'burst', id: 6, data: 'x'.repeat(100) })
    ada.send({ type: 'publish', room: 'burst', id: 7, data: { n: 3 } })
    raw.uncork()
    await ada.next((f) => f.type === 'ack' && f.id === 7, 'the last ack')
    await bob.sync()

    const shape = (f: Record<string, any>): string => f.type === 'message'
      ? `message ${f.offset ?? 'ephemeral'} ${JSON.stringify(f.data)}`
      : `${f.type as string} ${String(f.id)}${f.code === undefined ? '' : ` ${f.code as string}`}${f.offset === undefined ? '' : ` @${f.offset as number}`}`
    t.same(ada.frames.slice(seenBefore.ada).map(shape), [
      'message 1 {"n":1}', 'ack 1 @1',
      'error 2 NOT_IN_ROOM',
      'pong 3',
      'message 2 {"n":1.5}', 'ack 4 @2',
      'message ephemeral "typing"', 'ack 5',
      'error 6 PAYLOAD_TOO_LARGE',
      'message 3 {"n":3}', 'ack 7 @3'
    ], 'the publisher: each message before its ack, each reply in its frame\'s place')
    t.same(bob.frames.slice(seenBefore.bob).map(shape), [
      'message 1 {"n":1}', 'message 2 {"n":1.5}', 'message ephemeral "typing"', 'message 3 {"n":3}', 'pong 3'
    ], 'another member: the messages in offset order')
  })
}

t.test('a MemoryAdapter subclass that overrides publish still gets every member publish', async (t) => {
  const rooms: string[] = []
  class Counting extends MemoryAdapter {
    override async publish (room: string, message: EncodedPublish): Promise<number | undefined> {
      rooms.push(room)
      return await super.publish(room, message)
    }
  }
  const { wsUrl } = await startApp(t, { adapter: new Counting() })
  const ada = await TestSocket.open(wsUrl)
  t.teardown(async () => await ada.close())
  await ada.join('counted')
  t.match(await ada.request({ type: 'publish', room: 'counted', data: 1 }), { type: 'ack', offset: 1 })
  t.same(rooms, ['counted'], 'the override ran')
})

t.test('a publish that fails at once is answered INTERNAL in its place, and the frames after it are handled', async (t) => {
  class Broken extends MemoryAdapter {
    override publishNow (room: string, message: EncodedPublish): number | undefined {
      if (room === 'broken') throw new Error('store failed')
      return super.publishNow(room, message)
    }
  }
  const { wsUrl } = await startApp(t, { adapter: new Broken() })
  const ada = await TestSocket.open(wsUrl)
  t.teardown(async () => await ada.close())
  await ada.join('broken')
  await ada.join('fine')
  await ada.sync()
  const seen = ada.frames.length
  const raw = (ada.ws as unknown as { _socket: Socket })._socket
  raw.cork()
  ada.send({ type: 'publish', room: 'broken', id: 'a', data: 1 })
  ada.send({ type: 'publish', room: 'fine', id: 'b', data: 2 })
  raw.uncork()
  await ada.next((f) => f.type === 'ack' && f.id === 'b', 'the second ack')
  t.same(ada.frames.slice(seen).map((f) => [f.type, f.id, f.code ?? f.offset]), [
    ['error', 'a', 'INTERNAL'],
    ['message', undefined, 1],
    ['ack', 'b', 1]
  ])
})
