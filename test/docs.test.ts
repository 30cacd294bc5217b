import t, { type Test } from 'tap'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { promisify, stripVTControlCharacters } from 'node:util'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'

// Type-checking every example with tsc is CPU-bound: about 100 s of this file on a quiet 2-core
// machine, and past .taprc's 180 s when other work shares the cores (a Node 24 run, 2026-11-27).
// A budget for work, not a wait on an event: the file's own waits keep their guards.
t.setTimeout(600_000)

/**
 * Every ```ts block of plugin.md and README.md named `NAME` is written out,
 * type-checked against the built package (imported by its published name) and
 * run here. A block is named by an HTML comment `<!-- example: NAME -->` on the
 * line before it, which readers never see, or by a first line `// example: NAME`.
 */
const root = fileURLToPath(new URL('..', import.meta.url))
const dir = fileURLToPath(new URL('./output/docs/', import.meta.url))

function examples (file: string): Map<string, string> {
  const found = new Map<string, string>()
  const text = readFileSync(new URL(`../${file}`, import.meta.url), 'utf8')
  for (const match of text.matchAll(/(?:<!-- example: ([\w-]+) -->\n```ts\n|```ts\n\/\/ example: ([\w-]+)\n)([\s\S]*?)```/g)) found.set((match[1] ?? match[2])!, match[3]!)
  return found
}

const all = new Map([...examples('plugin.md'), ...examples('README.md')])
mkdirSync(dir, { recursive: true })
for (const [name, code] of all) writeFileSync(`${dir}${name}.ts`, code)

async function freePort (): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  await new Promise((resolve) => server.close(resolve))
  return port
}

/** Run an example; resolve once it printed `until` (or exited 0 when until is undefined). */
async function run (t: Test, name: string, env: Record<string, string>, until?: string): Promise<{ child: ChildProcess, output: () => string }> {
  const child = spawn(process.execPath, ['--import=tsx', `${dir}${name}.ts`], { cwd: root, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  t.teardown(() => { child.kill() })
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', () => { if (until !== undefined && output.includes(until)) resolve() })
    child.once('exit', (code) => code === 0 && until === undefined ? resolve() : reject(new Error(`example ${name} exited with ${code}: ${output}`)))
  })
  return { child, output: () => output }
}

t.test('the docs have the examples this test knows how to check', async (t) => {
  t.same([...all.keys()].sort(), ['lifecycle-hooks', 'metrics', 'node-client', 'quick-start', 'readme-register', 'signed-token-auth', 'testing-helper', 'two-registrations', 'typed-data'])
})

t.test('every example type-checks against the published types', async (t) => {
  for (const name of all.keys()) {
    // One program per example: typed-data's declaration merging must not leak into the others.
    const tsconfig = `${dir}tsconfig.${name}.json`
    writeFileSync(tsconfig, JSON.stringify({ extends: '../../../tsconfig.json', compilerOptions: { noEmit: true, rootDir: '.', types: ['node'] }, files: [`${name}.ts`], include: [] }))
    const result = await promisify(execFile)(process.execPath, [`${root}node_modules/typescript/bin/tsc`, '-p', tsconfig], { cwd: root }).then(() => '', (err: { stdout: string }) => err.stdout)
    t.equal(result, '', `${name} compiles`)
  }
})

t.test('quick-start: demo page, REST listing, broadcast from a route', async (t) => {
  const port = await freePort()
  await run(t, 'quick-start', { PORT: String(port) }, 'listening')
  const base = `http://127.0.0.1:${port}`
  const a = await TestSocket.open(`ws://127.0.0.1:${port}/ws`)
  t.teardown(() => a.close())
  await a.join('lobby')
  const res = await fetch(`${base}/announce`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"text":"deploy at 5"}' })
  t.same(await res.json(), { offset: 1 })
  t.same((await a.next((f) => f.type === 'message')).data, { text: 'deploy at 5' })
  t.same(await (await fetch(`${base}/rooms`)).json(), { rooms: [{ name: 'lobby', count: 1 }], next: null })
  t.match(await (await fetch(`${base}/`)).text(), /<title>fastify-rooms demo<\/title>/)
})

t.test('readme-register: the README snippet serves rooms and its route broadcasts', async (t) => {
  const port = await freePort()
  await run(t, 'readme-register', { PORT: String(port) }, 'listening')
  const a = await TestSocket.open(`ws://127.0.0.1:${port}/ws`)
  t.teardown(() => a.close())
  await a.join('alerts')
  await fetch(`http://127.0.0.1:${port}/alerts`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"level":"warn"}' })
  t.same((await a.next((f) => f.type === 'message')).data, { level: 'warn' })
})

t.test('two-registrations: both instances answer on their own prefixes', async (t) => {
  const port = await freePort()
  await run(t, 'two-registrations', { PORT: String(port) }, 'listening')
  for (const name of ['support', 'sales']) {
    t.equal((await fetch(`http://127.0.0.1:${port}/${name}/rooms`)).status, 200)
    const s = await TestSocket.open(`ws://127.0.0.1:${port}/${name}/ws`)
    await s.close()
  }
})

t.test('signed-token-auth: tokens in band, REST behind the Bearer token, onJoin and onPublish refusals', async (t) => {
  const port = await freePort()
  await run(t, 'signed-token-auth', { PORT: String(port), TOKEN_SECRET: 'test-secret' }, 'listening')
  const base = `http://127.0.0.1:${port}`
  const ws = `ws://127.0.0.1:${port}/ws`
  const { token } = await (await fetch(`${base}/token/ada`)).json() as { token: string }
  t.equal((await fetch(`${base}/rooms`)).status, 401, 'REST needs the token')
  t.equal((await fetch(`${base}/rooms`, { headers: { authorization: `Bearer ${token}` } })).status, 200)
  const forged = await TestSocket.connect(ws)
  forged.send({ type: 'auth', token: token.replace(/.$/, (c) => c === 'A' ? 'B' : 'A') })
  t.equal((await forged.closed).code, 4001, 'a forged token is refused with 4001')
  const a = await TestSocket.connect(ws)
  t.teardown(() => a.close())
  const welcome = await a.authenticate(token)
  t.same(welcome.user, { id: 'ada', name: 'ada' })
  t.ok((welcome.expiresAt as number) > Date.now(), 'welcome says when the token expires')
  t.match(await a.join('admin:ops'), { code: 'FORBIDDEN' })
  await a.join('general')
  t.match(await a.request({ type: 'publish', room: 'general', data: '<script>x</script>' }), { code: 'FORBIDDEN', message: 'Markup is not allowed in messages.' })
  t.match(await a.request({ type: 'publish', room: 'general', data: 'hello' }), { type: 'ack', offset: 1 })
  const publish = async (token: string): Promise<Response> => await fetch(`${base}/rooms/general/messages`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: '{"data":"from ops"}' })
  t.equal((await publish(token)).status, 403, 'ada is not ops')
  const ops = (await (await fetch(`${base}/token/ops`)).json() as { token: string }).token
  const res = await publish(ops)
  t.equal(res.status, 201)
  t.same(await res.json(), { offset: 2 })
  t.match(await a.next((f) => f.type === 'message' && f.offset === 2), { data: 'from ops' })
})

t.test('metrics: the route behind a scrape token, with the process metrics beside ours', async (t) => {
  const port = await freePort()
  await run(t, 'metrics', { PORT: String(port), SCRAPE_TOKEN: 'scrape-secret' }, 'listening')
  const base = `http://127.0.0.1:${port}`
  t.equal((await fetch(`${base}/metrics`)).status, 401)
  t.equal((await fetch(`${base}/metrics`, { headers: { authorization: 'Bearer undefined' } })).status, 401)
  t.equal((await fetch(`${base}/metrics`, { headers: { authorization: 'Bearer scrape-secre' } })).status, 401)
  const text = await (await fetch(`${base}/metrics`, { headers: { authorization: 'Bearer scrape-secret' } })).text()
  t.match(text, /^fastify_rooms_connections 0$/m)
  t.match(text, /^fastify_rooms_room_members\{room="lobby"\} 0$/m)
  t.match(text, /^process_cpu_user_seconds_total /m)
})

t.test('metrics: without SCRAPE_TOKEN the example refuses to start rather than serve the metrics to anyone', async (t) => {
  const port = await freePort()
  await t.rejects(run(t, 'metrics', { PORT: String(port), SCRAPE_TOKEN: '' }, 'listening'), /Set SCRAPE_TOKEN/)
})

t.test('lifecycle-hooks registers and runs to completion', async (t) => {
  const { output } = await run(t, 'lifecycle-hooks', {})
  t.match(output(), /done/)
})

t.test('typed-data runs to completion', async (t) => {
  const { output } = await run(t, 'typed-data', {})
  t.match(output(), /done/)
})

t.test('testing-helper: the node:test recipe passes without opening a port', async (t) => {
  const { output } = await run(t, 'testing-helper', {})
  // node:test reports in TAP on Node 20 and 22 when its output is not a terminal, and in its spec
  // format on Node 23 and later, coloured when tap passes FORCE_COLOR on (tap run in a terminal).
  const text = stripVTControlCharacters(output())
  t.match(text, /^(?:# |\u2139 )pass 1$/m)
  t.match(text, /^(?:# |\u2139 )fail 0$/m)
})

t.test('node-client: connects, joins, publishes, leaves and closes', async (t) => {
  const { wsUrl, app } = await startApp(t)
  const { output } = await run(t, 'node-client', { ROOMS_URL: wsUrl })
  t.match(output(), /published at offset 1 members: ada/)
  t.equal(await app.rooms.get('lobby'), null, 'it left')
})
