import t from 'tap'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import WebSocket from 'ws'
import { serverSocketsClosed, startApp } from './helpers/server.js'
import { guard } from './helpers/until.js'

// Same as --expose-gc, for this file only.
setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

function timers (): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length
}

/** One client's whole life: connect, join, publish, see its message, disconnect. */
async function cycle (url: string, n: number): Promise<void> {
  const ws = new WebSocket(url)
  await guard(new Promise<void>((resolve, reject) => {
    ws.on('error', reject)
    // Closed before its own message came: it never will (after the terminate below, this is a no-op).
    ws.on('close', (code) => reject(new Error(`cycle ${n}: closed (${code}) before its message came`)))
    ws.on('message', (raw) => {
      const frame = JSON.parse(raw.toString())
      if (frame.type === 'welcome') {
        ws.send(JSON.stringify({ type: 'join', room: `churn-${n % 50}` }))
        ws.send(JSON.stringify({ type: 'publish', room: `churn-${n % 50}`, data: { n } }))
      } else if (frame.type === 'message' && frame.data.n === n) {
        ws.terminate()
        resolve()
      }
    })
  }), `cycle ${n}'s own message`)
}

t.test('10,000 connect/join/publish/disconnect cycles leave the registry empty, no timers, and bounded heap', async (t) => {
  const { wsUrl, app } = await startApp(t, { historySize: 10 })
  const baselineTimers = timers()
  const run = async (cycles: number, concurrency: number): Promise<void> => {
    let next = 0
    await Promise.all(Array.from({ length: concurrency }, async () => {
      while (next < cycles) await cycle(wsUrl, next++)
    }))
    await serverSocketsClosed(app, 'every connection to go server-side')
  }
  await run(500, 20) // warm up: JIT, pools, buffers
  gc()
  const before = process.memoryUsage().heapUsed
  await run(10_000, 20)
  gc()
  const grown = process.memoryUsage().heapUsed - before

  t.equal(app.rooms.connections, 0)
  t.same(await app.rooms.list(), { rooms: [], next: null }, 'no room has a member left')
  t.equal(timers(), baselineTimers, 'no timer per connection outlives it')
  // 50 rooms keep at most 10 messages of history each (about 10 KB in all); the
  // rest of the bound is generous headroom for V8, not for leaks.
  const bound = 8 * 1024 * 1024
  t.ok(grown < bound, `heap grew ${(grown / 1024).toFixed(0)} KB over 10,000 cycles (bound ${bound / 1024} KB)`)
})
