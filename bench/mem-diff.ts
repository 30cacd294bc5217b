import { spawn, type ChildProcess } from 'node:child_process'
import type { Kind } from './client.js'
import { presenceKinds } from './workloads.js'
const kind = process.argv[2] as Kind
const n = Number(process.argv[3] ?? 10000)
const env = { ...process.env }
function node (args: string[]): ChildProcess {
  return spawn('bash', ['-c', `ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "${process.execPath}" ${args.map((a) => `'${a}'`).join(' ')}`], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'], env })
}
let nextRid = 1
async function call<T> (child: ChildProcess, message: object): Promise<T> {
  const rid = nextRid++
  return await new Promise((resolve) => {
    const on = (reply: T & { rid: number }): void => { if (reply.rid !== rid) return; child.off('message', on); resolve(reply) }
    child.on('message', on)
    child.send({ ...message, rid })
  })
}
const flags = (process.env.SERVER_FLAGS ?? '').split(' ').filter(Boolean)
const server = node([...flags, '--expose-gc', '--import=tsx', 'bench/servers.ts', kind, '', '100'])
const port = await new Promise<number>((resolve) => {
  let out = ''
  server.stdout!.on('data', (c: Buffer) => { out += c.toString(); const m = /^ready \S+ (\d+)$/m.exec(out); if (m !== null && /^ready$/m.test(out)) resolve(Number(m[1])) })
})
const loadgen = node(['--import=tsx', 'bench/loadgen.ts'])
type S = Record<string, number> & { spaces: Record<string, number> }
const before = await call<S>(server, { cmd: 'stats', gc: true, settleMs: Number(process.env.SETTLE_MS ?? 0) })
await call(loadgen, { cmd: 'connect', sid: 'a', kind, ports: [port], prefix: 'm-', from: 0, count: n, rooms: n / 100, concurrency: 200, deadlineMs: 300_000 })
if (presenceKinds.includes(kind)) await call(loadgen, { cmd: 'converge', sid: 'a', expectedCount: 100, deadlineMs: 60_000 })
await new Promise((resolve) => setTimeout(resolve, Number(process.env.IDLE_MS ?? 0)))
const after = await call<S>(server, { cmd: 'stats', gc: true, settleMs: Number(process.env.SETTLE_MS ?? 0) })
const out: string[] = []
for (const k of ['rss', 'heapUsed', 'heapTotal', 'external']) out.push(`${k} ${((after[k]! - before[k]!) / n).toFixed(0)}`)
for (const k of Object.keys(after.spaces)) out.push(`${k} ${((after.spaces[k]! - (before.spaces[k] ?? 0)) / n).toFixed(0)}`)
console.log(`${kind} B/conn: ${out.join(', ')}`)
loadgen.kill(); server.kill()
