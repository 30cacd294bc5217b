import t, { type Test } from 'tap'
import Fastify from 'fastify'
import { MemoryAdapter, RedisAdapter, type AdapterListener, type EncodedPublish, type PublishReceipt } from '../src/index.js'
import { startApp } from './helpers/server.js'
import { TestSocket, writeAtOnce } from './helpers/socket.js'
import { skipRedis, startRedis } from './helpers/redis.js'

/**
 * One member publishes to `room`, to `refused` (which its adapter refuses)
 * and to `room` again, in one TCP write: the replies come in frame order,
 * each with its own outcome, and a frame after them waits for them.
 */
async function repliesInFrameOrder (t: Test, wsUrl: string, room: string, refused: string): Promise<void> {
  const ada = await TestSocket.open(wsUrl)
  t.teardown(() => ada.close())
  await ada.join(room)
  await ada.join(refused)
  const replies: Array<Record<string, unknown>> = []
  const all = ada.next((f) => { if (f.id !== undefined) replies.push(f); return replies.length === 3 }, 'three replies')
  writeAtOnce(ada.ws, [
    { type: 'publish', room, id: 1, data: 'a' },
    { type: 'publish', room: refused, id: 2, data: 'b' },
    { type: 'publish', room, id: 3, data: 'c' }
  ])
  await all
  t.match(replies, [
    { type: 'ack', id: 1, room, offset: 1 },
    { type: 'error', id: 2, room: refused, code: 'INTERNAL' },
    { type: 'ack', id: 3, room, offset: 2 }
  ], 'acks and the error in the order of the frames, each with its own outcome')
  t.equal((await ada.request({ type: 'leave', room })).type, 'left', 'a frame after them is handled once they are answered')
}

/**
 * A user-written adapter that applies publishes in call order (so it declares
 * `orderedPublishes`) but answers them in reverse, the last first, once three
 * are out; it has no `publishTo`, so the plugin settles them from promises.
 */
class ReversingStore extends MemoryAdapter {
  readonly orderedPublishes = true
  private held: Array<() => void> = []

  override async publish (room: string, message: EncodedPublish): Promise<number | undefined> {
    const stored = super.publish(room, message)
    await new Promise<void>((resolve) => {
      this.held.push(resolve)
      if (this.held.length === 3) for (const answer of this.held.splice(0).reverse()) answer()
    })
    if (room === 'refused') throw new Error('store refused')
    return await stored
  }
}

t.test('an adapter without publishTo that answers publishes out of order: the replies still go out in frame order', async (t) => {
  const { wsUrl } = await startApp(t, { adapter: new ReversingStore() })
  await repliesInFrameOrder(t, wsUrl, 'r', 'refused')
})

t.test('the Redis adapter answers every publish of a call even when one receipt throws, and logs it', { skip: skipRedis }, async (t) => {
  const redis = await startRedis(t)
  const logged: Array<Record<string, any>> = []
  const app = Fastify({ logger: { level: 'error', stream: { write: (line: string) => { logged.push(JSON.parse(line)) } } } })
  t.teardown(() => app.close())
  // Driven through the adapter interface: the plugin's own receipts do not throw.
  const adapter = new RedisAdapter({ url: redis.url, keyPrefix: 'receipts:', leaseMs: 600_000 })
  const listener: AdapterListener = { message () {}, messages () {}, presence () {}, direct: () => false, reset () {}, control: () => 0 }
  await adapter.start(listener, {
    log: app.log, nodeId: 'n1', maxMembersPerRoom: 100, historySize: 10, historyTtlMs: 60_000, maxHistoryRooms: 100, maxHistoryBytes: 1_000_000, membersPageSize: 100, presenceEvents: true
  })
  t.teardown(() => adapter.close())
  const answers: Array<{ offset?: number | undefined, err?: Error }> = []
  const message = (data: string): EncodedPublish => ({ data, from: '{"id":"u1"}', ephemeral: false })
  await new Promise<void>((resolve, reject) => {
    // A guard, not a synchronisation: an adapter that answers neither way would leave nothing to wait for.
    const guard = setTimeout(() => { reject(new Error(`${answers.length} of 2 publishes answered`)) }, 10_000)
    const receipt = (throws: boolean): PublishReceipt => ({
      published (offset) {
        answers.push({ offset })
        if (answers.length === 2) { clearTimeout(guard); resolve() }
        if (throws) throw new Error('a receipt that throws')
      },
      failed (err) {
        answers.push({ err })
        if (answers.length === 2) { clearTimeout(guard); resolve() }
      }
    })
    // One turn: one call to Redis, answered together.
    adapter.publishTo('room', message('"a"'), receipt(true))
    adapter.publishTo('room', message('"b"'), receipt(false))
  })
  t.same(answers, [{ offset: 1 }, { offset: 2 }], 'the publish after the throwing receipt got its offset')
  t.match(logged, [{ msg: 'fastify-rooms: answering a publish failed', err: { message: 'a receipt that throws' } }])
  t.equal((await adapter.history('room', 0, 10))?.messages.length, 2, 'both are stored')
})

/** A user's subclass of the Redis adapter that sees, and may refuse, every publish. */
class AuditedRedis extends RedisAdapter {
  readonly seen: string[] = []

  override async publish (room: string, message: EncodedPublish): Promise<number | undefined> {
    this.seen.push(message.data)
    if (room === 'closed') throw new Error('closed for audit')
    return await super.publish(room, message)
  }
}

t.test('a subclass of the Redis adapter that overrides publish still sees every member publish', { skip: skipRedis }, async (t) => {
  const redis = await startRedis(t)
  const adapter = new AuditedRedis({ url: redis.url, keyPrefix: 'audited:', leaseMs: 600_000 })
  const { wsUrl } = await startApp(t, { adapter }, undefined, { logger: false })
  await repliesInFrameOrder(t, wsUrl, 'open', 'closed')
  t.same(adapter.seen, ['"a"', '"b"', '"c"'], 'the override saw each publish')
})
