import t from 'tap'
import { execFile } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * The package as a user gets it: `npm pack`, installed from the npm registry
 * into an app of its own at the lowest Fastify it supports, type-checked with
 * strict TypeScript (ESM, nodenext) and run. Never skipped: it needs only npm
 * and the registry, which CI reaches too.
 */
const LOWEST_FASTIFY = '5.0.0'

const root = fileURLToPath(new URL('..', import.meta.url))
const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
  version: string
  files: string[]
  peerDependencies: Record<string, string>
  devDependencies: Record<string, string>
}

interface Ran { stdout: string, stderr: string }

async function run (file: string, args: string[], cwd: string): Promise<Ran> {
  return await new Promise((resolve, reject) => {
    execFile(file, args, { cwd, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(`${file} ${args.join(' ')} failed in ${cwd}: ${err.message}\n${stdout}\n${stderr}`))
      else resolve({ stdout, stderr })
    })
  })
}

const npm = async (args: string[], cwd: string): Promise<Ran> => await run('npm', [...args, '--no-audit', '--no-fund', '--no-update-notifier'], cwd)
const tsc = async (project: string): Promise<Ran> => await run(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', project], root)

t.test('npm pack installs into a strict ESM TypeScript app at the lowest supported Fastify, type-checks and serves a welcome', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fastify-rooms-pack-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })

  // Build into a staging copy rather than ./dist, which other test files read while this one runs.
  const stage = join(dir, 'stage')
  mkdirSync(stage)
  for (const file of ['package.json', ...manifest.files.filter((f) => f !== 'dist')]) {
    if (existsSync(join(root, file))) cpSync(join(root, file), join(stage, file), { recursive: true })
  }
  await run(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', root, '--outDir', join(stage, 'dist')], root)
  const packed = JSON.parse((await npm(['pack', '--ignore-scripts', '--json', '--pack-destination', dir], stage)).stdout) as Array<{ filename: string, files: Array<{ path: string }> }>
  const tarball = join(dir, packed[0]!.filename)
  const files = packed[0]!.files.map((f) => f.path)
  for (const entry of ['package.json', 'README.md', 'LICENSE', 'plugin.md', 'dist/index.js', 'dist/index.d.ts', 'dist/client/index.js', 'dist/client/index.d.ts']) {
    t.ok(files.includes(entry), `the tarball has ${entry}`)
  }
  t.notOk(files.some((f) => f.startsWith('src/') || f.startsWith('test/')), 'no sources or tests in the tarball')

  const app = join(dir, 'app')
  mkdirSync(app)
  for (const file of ['app.ts', 'tsconfig.json']) cpSync(join(root, 'test/fixtures/package-app', file), join(app, file))
  writeFileSync(join(app, 'package.json'), JSON.stringify({
    name: 'fastify-rooms-fixture',
    private: true,
    type: 'module',
    dependencies: {
      'fastify-rooms': `file:${tarball}`,
      fastify: LOWEST_FASTIFY,
      ws: manifest.devDependencies.ws,
      '@types/node': manifest.devDependencies['@types/node'],
      '@types/ws': manifest.devDependencies['@types/ws']
    }
  }, null, 2))
  // The npm cache makes a repeated run offline; --ignore-scripts: nothing in the tree builds on install.
  const installed = await npm(['install', '--prefer-offline', '--ignore-scripts'], app)
  const warnings = installed.stderr
  t.notMatch(warnings, /ERESOLVE|peer dep/i, 'the fastify peer range takes the lowest supported Fastify without conflict')
  t.notMatch(warnings, /EBADENGINE[\s\S]{0,80}fastify-rooms@/, 'our own engines range takes this Node')
  t.notOk(existsSync(join(app, 'node_modules/fastify-rooms/node_modules/fastify')), 'one Fastify: the app\'s, not a second copy under the plugin')
  t.equal((JSON.parse(readFileSync(join(app, 'node_modules/fastify/package.json'), 'utf8')) as { version: string }).version, LOWEST_FASTIFY)

  await tsc(app)

  const { stdout, stderr } = await run(process.execPath, ['app.js'], join(app, 'dist'))
  const line = stdout.split('\n').find((l) => l.startsWith('RESULT '))
  t.ok(line, `the app printed its result: ${stdout}${stderr}`)
  t.same(JSON.parse(line!.slice('RESULT '.length)), {
    fastify: LOWEST_FASTIFY,
    frame: 'welcome',
    user: 'ada',
    protocol: 2,
    page: 200,
    rooms: { rooms: [], next: null },
    clients: 0,
    optionError: 'FST_ROOMS_INVALID_OPTION'
  })
  t.notMatch(stderr, /room names longer than/, 'the top-level maxParamLength of Fastify before 5.5 is read: no false warning')

  // ESM-only, yet a CommonJS app can require() it on the Node versions of `engines` (README).
  const cjs = await run(process.execPath, ['-e', "const m = require('fastify-rooms'); console.log(typeof m.default, typeof m.errorCodes)"], app)
  t.equal(cjs.stdout.trim(), 'function object', 'require() from CommonJS')
})
