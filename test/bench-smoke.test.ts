import t from 'tap'
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const escape = (text: string): string => text.replace(/[().,+]/g, '\\$&')

t.test('npm run bench, at tiny sizes, runs every workload against every server and finds every delivery correct', async (t) => {
  const { stdout } = await promisify(execFile)(process.execPath, ['--import=tsx', 'bench/run.ts', '--smoke'], { cwd: root, timeout: 240_000 })
  for (const server of ['fastify-rooms (memory)', 'ws, stringify once', 'ws, pre-framed', 'ws, pre-framed and coalesced', 'Socket.IO 4']) {
    t.match(stdout, new RegExp(`\\| ${escape(server)} \\|`), `${server} was measured`)
  }
  if (process.env.CI === 'true') {
    t.match(stdout, /fastify-rooms \(Redis, 2 instances\)/, 'the Redis adapter was measured')
    t.match(stdout, /\| Socket\.IO 4, @socket\.io\/redis-adapter \(2 instances\) \|/, 'Socket.IO on its Redis adapter was measured')
    for (const shape of ['1 x 1,000', '100 x 10']) {
      for (const against of ['fastify-rooms (memory)', 'Socket.IO 4, @socket.io/redis-adapter (2 instances)']) {
        t.match(stdout, new RegExp(`\\| fan-out deliveries per server CPU-s, ${escape(shape)}, window 20 \\| [0-9,]+ \\| ${escape(against)}: [0-9,]+ \\| [0-9.]+x \\| ≥ `), `issue #14's targets table has ${shape} against ${against}, with its goal`)
      }
    }
    // The cluster (it adds about 2 s to this run: it forms while the other servers start).
    t.match(stdout, /\| fastify-rooms \(Redis Cluster of 3 masters \+ 3 replicas, 2 instances\) \|/, 'fastify-rooms on the Redis Cluster was measured')
    const cluster = stdout.slice(stdout.indexOf('## Targets (issue #14): fastify-rooms on a Redis Cluster'))
    for (const shape of ['1 x 1,000', '100 x 10']) {
      for (const against of ['fastify-rooms (memory)', 'Socket.IO 4, @socket.io/redis-adapter (2 instances)']) {
        t.match(cluster, new RegExp(`^\\| fan-out deliveries per server CPU-s, ${escape(shape)}, window 20 \\| [0-9,]+ \\| ${escape(against)}: [0-9,]+ \\| [0-9.]+x \\| ≥ [0-9.]+x \\|`, 'm'), `issue #14's cluster table has ${shape} against ${against}, with its goal`)
      }
    }
    t.match(stdout, /## Sharding: /, 'the sharding workload was run')
    for (const shard of [1, 2, 3]) {
      // At these sizes the one Redis may use less than a clock tick of CPU: no ratio then.
      t.match(stdout, new RegExp(`^\\| cluster master ${shard} \\| [0-9,]+ \\| [0-9,]+ \\| ([0-9.]+x|n/a) \\| ≤ 0\\.45x \\|`, 'm'), `master ${shard}'s CPU is compared with the one Redis's, with the goal`)
      t.match(stdout, new RegExp(`^\\| cluster replica of master ${shard} \\| \\| [0-9,]+ \\| ([0-9.]+x|n/a) \\|`, 'm'), `replica ${shard}'s CPU is reported`)
    }
    t.match(stdout, /## Capacity plan figures/, 'the capacity plan figures are printed')
    for (const server of ['fastify-rooms (memory)', 'fastify-rooms (Redis, 2 instances)', 'fastify-rooms (Redis Cluster of 3 masters + 3 replicas, 2 instances)']) {
      t.match(stdout, new RegExp(`^\\| fanout-100x10 \\| ${escape(server)} \\| [0-9.,]+ \\| [0-9.,]+ \\|`, 'm'), `per-delivery and per-publish server CPU of ${server}`)
    }
    t.match(stdout, /^\| shard-1000 \| fastify-rooms \(Redis, 2 instances\) \|( [^|]* \|){3} [0-9.,]+ \|/m, 'Redis CPU per publish on one Redis')
    t.match(stdout, /^\| shard-1000 \| fastify-rooms \(Redis Cluster[^|]*\|( [^|]* \|){4} ([0-9.,]+|n\/a) \(\+([0-9.,]+|n\/a)\)( \/ ([0-9.,]+|n\/a) \(\+([0-9.,]+|n\/a)\)){2} \|/m, 'Redis CPU per publish on each shard, and its replica')
  }
  for (const workload of ['Fan-out, 1 room x 10 members, window 20', 'Fan-out, 5 rooms x 4 members, window 20', 'Sharding: 20 rooms x 2 members', 'Fan-out, 1 room x 10 members, window 1', 'Connect and join, 20 connections', 'Connect and join, 30 connections', 'idle joined connections', 'Join storm', 'msg/s into one room']) {
    t.match(stdout, new RegExp(`## .*${escape(workload)}`), `${workload} was run`)
  }
  for (const target of ['RSS per idle joined connection', 'connect and join rate, rooms of 100,', 'connect and join rate, rooms of 1,000', 'server CPU per connect and join', 'fan-out deliveries per server CPU-s, 1 x 1,000, window 20', 'fan-out deliveries per server CPU-s, 100 x 10', 'window 1', 'most presence frames one member receives', 'p99 join-to-`joined`']) {
    t.match(stdout, new RegExp(`\\| [^|]*${escape(target)}[^|]*\\| [^|]*\\| (ws, [a-z -]+: [0-9.,]+|\\(absolute\\))`), `the targets table has ${target}, with its baseline named`)
  }
  t.notMatch(stdout, /\| NO/, 'every member got every message once, in order, every join was answered and presence converged')
  t.match(stdout, /correctness in every run.*\| met \|/, 'the targets table says every run was correct')
  t.equal(readFileSync(new URL('../bench/results/smoke.md', import.meta.url), 'utf8').trim(), stdout.trim(), 'the report is also written to a file')
})
