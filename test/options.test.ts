import t from 'tap'
import Fastify from 'fastify'
import rooms from '../src/index.js'

t.test('invalid options fail registration with a sentence naming the option', async (t) => {
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ path: 'ws' }, /options\/path/],
    [{ heartbeatMs: 1 }, /options\/heartbeatMs/],
    [{ maxMessageBytes: 'big' }, /options\/maxMessageBytes/],
    [{ maxMessageBytes: 100, maxFrameBytes: 100 }, /maxFrameBytes must be larger/],
    [{ onJoin: 'yes' }, /onJoin must be a function/],
    [{ demo: 'chat' }, /options\/demo/],
    [{ dataSchema: 5 }, /dataSchema/]
  ]
  for (const [options, message] of cases) {
    const app = Fastify()
    await t.rejects(async () => { await app.register(rooms, options as never).ready() }, message, JSON.stringify(options))
    await app.close().catch(() => {})
  }
})
