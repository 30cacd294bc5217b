import t from 'tap'
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))

t.test('npm run bench, at tiny sizes, runs every server and finds every delivery correct', async (t) => {
  const { stdout } = await promisify(execFile)(process.execPath, ['--import=tsx', 'bench/run.ts', '--smoke'], { cwd: root, timeout: 240_000 })
  for (const server of ['fastify-rooms (memory)', 'ws, stringify once', 'ws, pre-framed', 'Socket.IO 4']) {
    t.match(stdout, new RegExp(`\\| ${server.replace(/[().,]/g, '\\$&')} \\|`), `${server} was measured`)
  }
  if (process.env.CI === 'true') t.match(stdout, /fastify-rooms \(Redis, 2 instances\)/, 'the Redis adapter was measured')
  t.notMatch(stdout, /\| NO/, 'every member got every message once, in order')
  t.equal(readFileSync(new URL('../bench/results/smoke.md', import.meta.url), 'utf8').trim(), stdout.trim(), 'the report is also written to a file')
})
