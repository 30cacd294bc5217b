import t from 'tap'
import { redisAdapter } from '../src/index.js'
import { startApp, type Started } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'
import { skipRedis, startRedis } from './helpers/redis.js'

/** A guest's user id on an instance, after connecting with a resume token issued elsewhere. */
async function resumedOn (node: Started, token: string): Promise<string> {
  const socket = await TestSocket.resume(node.wsUrl, token)
  await socket.close()
  return socket.welcome.user.id
}

t.test('after Redis restarts empty, instances started before and after it sign resume tokens with one secret', { skip: skipRedis }, async (t) => {
  const redis = await startRedis(t)
  const lines: Array<Record<string, any>> = []
  const waiters = new Set<() => void>()
  const logger = { level: 'warn', stream: { write: (text: string) => { lines.push(JSON.parse(text)); for (const wake of [...waiters]) wake() } } }
  const adapter = (): ReturnType<typeof redisAdapter> => redisAdapter({ url: redis.url, keyPrefix: 'secret:' })
  const before = await startApp(t, { adapter: adapter() }, undefined, { logger })
  const guest = await TestSocket.open(before.wsUrl)
  await guest.close()
  const token = guest.welcome.resume as string

  await redis.kill()
  const back = new Promise<void>((resolve) => waiters.add(() => { if (lines.some((l) => /link to Redis is back/.test(l.msg))) resolve() }))
  await redis.restart()
  // Renewed its lease (which puts the secret back) and resynchronised: what a load balancer sends to it now works.
  await back

  const after = await startApp(t, { adapter: adapter() })
  t.equal(await resumedOn(after, token), guest.welcome.user.id, 'a guest of the old instance keeps its id on an instance started after the restart')
  const newGuest = await TestSocket.open(after.wsUrl)
  await newGuest.close()
  t.equal(await resumedOn(before, newGuest.welcome.resume as string), newGuest.welcome.user.id, 'and a guest of the new instance keeps its id on the old one')
})
