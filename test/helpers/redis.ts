import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'
import { once } from 'node:events'
import { tmpdir } from 'node:os'
import { needs } from './needs.js'

export const REDIS_SERVER = '/usr/bin/redis-server'

/** What `CLIENT LIST` needs of a connection: a Redis, or one node of a cluster. */
interface Lister { call: (command: string, ...args: string[]) => Promise<unknown> }

/**
 * The connections a Redis server lists under a client name (`CLIENT LIST`),
 * each as its fields: `id`, `flags`, `cmd` and the rest.
 */
export async function clientsNamed (redis: Lister, name: string): Promise<Array<Record<string, string>>> {
  const list = String(await redis.call('CLIENT', 'LIST'))
  return list.split('\n').filter((line) => line.includes(` name=${name} `)).map((line) =>
    Object.fromEntries(line.trim().split(' ').map((field) => [field.slice(0, field.indexOf('=')), field.slice(field.indexOf('=') + 1)])))
}
/** Reason to skip outside CI when redis-server is missing (under CI=true a missing binary fails). */
export const skipRedis = needs(REDIS_SERVER, 'apt-get install -y redis-server')

export async function freePort (): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  await new Promise((resolve) => server.close(resolve))
  return port
}

export interface RedisServer {
  port: number
  url: string
  /** SIGKILL the server (no persistence: its data is gone). */
  kill: () => Promise<void>
  /** Start a fresh, empty server on the same port. */
  restart: () => Promise<void>
  /** The server process's pid, while it runs. */
  pid: () => number | undefined
}

export interface RedisServerOptions {
  /** Run it as a replica of the Redis on this port (its RDB goes to the temp dir). */
  replicaOf?: number
}

/** Redis 7 refuses DEBUG (the tests' way to hang it) unless told to allow it; older versions know no such option. */
function debugFlags (): string[] {
  const version = /v=(\d+)/.exec(execFileSync(REDIS_SERVER, ['--version']).toString())
  return Number(version?.[1] ?? 0) >= 7 ? ['--enable-debug-command', 'local'] : []
}

/** Start a real redis-server on a free port for one test file; it is killed at teardown. */
export async function startRedis (t: { teardown: (fn: () => unknown) => void }, options: RedisServerOptions = {}): Promise<RedisServer> {
  const port = await freePort()
  const flags = debugFlags()
  if (options.replicaOf !== undefined) flags.push('--replicaof', '127.0.0.1', String(options.replicaOf), '--dir', tmpdir())
  let child: ChildProcess | undefined
  const launch = async (): Promise<void> => {
    const proc = spawn(REDIS_SERVER, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...flags], { stdio: ['ignore', 'pipe', 'pipe'] })
    child = proc
    let out = ''
    await new Promise<void>((resolve, reject) => {
      proc.stdout?.on('data', (chunk: Buffer) => {
        out += chunk.toString()
        if (out.includes('Ready to accept connections')) resolve()
      })
      proc.once('exit', (code) => reject(new Error(`redis-server exited with ${code}: ${out}`)))
    })
  }
  const kill = async (): Promise<void> => {
    const proc = child
    if (proc === undefined || proc.exitCode !== null) return
    const exited = once(proc, 'exit')
    proc.kill('SIGKILL')
    await exited
  }
  await launch()
  t.teardown(kill)
  return { port, url: `redis://127.0.0.1:${port}`, kill, restart: launch, pid: () => child?.pid }
}

/**
 * Ask Redis until its answer passes `done`; fail after `ms`. Only for states
 * Redis reaches with no event to await: a key's own expiry, a channel's last
 * subscriber gone after a connection closed.
 */
export async function eventually<T> (ask: () => Promise<T>, done: (value: T) => boolean, what: string, ms = 5_000): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    const value = await ask()
    if (done(value)) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}; last answer: ${JSON.stringify(value)}`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}
