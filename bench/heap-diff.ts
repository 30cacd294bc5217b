/**
 * Which objects a server holds per idle joined connection: `node --import=tsx
 * bench/heap-diff.ts KIND [N]` starts one bench server (bench/servers.ts),
 * joins N connections (rooms of 100), takes a heap snapshot, joins N more,
 * takes another, and prints the difference grouped by constructor (or
 * closure, or V8's internal kind), in bytes and objects per connection.
 */
import { readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Kind } from './client.js'
import { call, node } from './children.js'
import { presenceKinds } from './workloads.js'

const kind = process.argv[2] as Kind
const n = Number(process.argv[3] ?? 2000)
const members = 100

/** Self size and count of a snapshot's objects, by type and name. */
function groups (path: string): Map<string, { size: number, count: number }> {
  const snap = JSON.parse(readFileSync(path, 'utf8')) as { snapshot: { meta: { node_fields: string[], node_types: [string[]] } }, nodes: number[], strings: string[] }
  const fields = snap.snapshot.meta.node_fields
  const width = fields.length
  const [typeAt, nameAt, sizeAt] = ['type', 'name', 'self_size'].map((f) => fields.indexOf(f)) as [number, number, number]
  const types = snap.snapshot.meta.node_types[0]
  const edgeFields = (snap.snapshot.meta as unknown as { edge_fields: string[], edge_types: [string[]] }).edge_fields
  const edgeTypes = (snap.snapshot.meta as unknown as { edge_types: [string[]] }).edge_types[0]
  const edges = (snap as unknown as { edges: number[] }).edges
  const countAt = fields.indexOf('edge_count')
  const out = new Map<string, { size: number, count: number }>()
  let edge = 0
  for (let i = 0; i < snap.nodes.length; i += width) {
    const type = types[snap.nodes[i + typeAt]!]!
    const rawName = snap.strings[snap.nodes[i + nameAt]!]!
    // Plain objects are told apart by their property names.
    const props: string[] = []
    for (let e = 0; e < snap.nodes[i + countAt]!; e++, edge += edgeFields.length) {
      if (rawName === 'Object' && type === 'object' && edgeTypes[edges[edge]!] === 'property') props.push(snap.strings[edges[edge + 1]!]!)
    }
    const name = type === 'string' || type === 'concatenated string' || type === 'sliced string' ? '' : type === 'number' ? '' : props.length > 0 ? `{${props.join(',')}}`.slice(0, 80) : rawName.slice(0, 60)
    const key = `${type} ${name}`
    const g = out.get(key) ?? { size: 0, count: 0 }
    g.size += snap.nodes[i + sizeAt]!
    g.count++
    out.set(key, g)
  }
  return out
}

const server = node(['--expose-gc', '--import=tsx', 'bench/servers.ts', kind, '', '100'])
const port = await new Promise<number>((resolve) => {
  let out = ''
  server.stdout!.on('data', (c: Buffer) => { out += c.toString(); const m = /^ready \S+ (\d+)$/m.exec(out); if (m !== null && /^ready$/m.test(out)) resolve(Number(m[1])) })
})
const loadgen = node(['--import=tsx', 'bench/loadgen.ts'])
const snapshots: string[] = []
for (const batch of [0, 1]) {
  const sid = `b${batch}`
  const reply = await call<{ failed: number, firstError: string }>(loadgen, { cmd: 'connect', sid, kind, ports: [port], prefix: `heap-${batch}-`, from: 0, count: n, rooms: n / members, concurrency: 200, deadlineMs: 120_000 })
  if (reply.failed > 0) throw new Error(`${reply.failed} did not join: ${reply.firstError}`)
  if (presenceKinds.includes(kind)) await call(loadgen, { cmd: 'converge', sid, expectedCount: members, deadlineMs: 60_000 })
  snapshots.push((await call<{ path: string }>(server, { cmd: 'snapshot', path: join(tmpdir(), `heap-diff-${kind}-${batch}-${process.pid}.heapsnapshot`) })).path)
}
loadgen.kill()
server.kill()
const [a, b] = snapshots.map(groups) as [Map<string, { size: number, count: number }>, Map<string, { size: number, count: number }>]
for (const s of snapshots) rmSync(s)
const rows = [...new Set([...a.keys(), ...b.keys()])].map((key) => {
  const x = a.get(key) ?? { size: 0, count: 0 }
  const y = b.get(key) ?? { size: 0, count: 0 }
  return { key, bytes: (y.size - x.size) / n, objects: (y.count - x.count) / n }
}).filter((r) => Math.abs(r.bytes) >= 1 || Math.abs(r.objects) >= 0.05).sort((p, q) => q.bytes - p.bytes)
console.log(`${kind}: per connection, ${n} -> ${2 * n} idle joined connections (rooms of ${members})`)
for (const r of rows) console.log(`${r.bytes.toFixed(1).padStart(8)} B ${r.objects.toFixed(2).padStart(6)} obj  ${r.key}`)
console.log(`${rows.reduce((s, r) => s + r.bytes, 0).toFixed(1).padStart(8)} B in all`)
