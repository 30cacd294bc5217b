import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { connect, createServer } from 'node:net'
import { once } from 'node:events'
import { tmpdir } from 'node:os'
import { readFileSync } from 'node:fs'
import { needs } from './needs.js'
import { guard } from './until.js'

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

/** The ports outgoing connections take theirs from (Linux's ip_local_port_range). */
function ephemeralPorts (): [number, number] {
  try {
    const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number)
    if (Number.isInteger(low) && Number.isInteger(high)) return [low!, high!]
  } catch {}
  return [32768, 60999]
}

async function canBind (port: number): Promise<boolean> {
  const server = createServer()
  return await new Promise((resolve) => {
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}

/**
 * A port free now, below the range outgoing connections take their ports
 * from: between this check and redis-server binding it (and while a killed
 * server is restarted on it), no client connection of this or a parallel test
 * file can take it, however many connections they make. Another file picking
 * the same port at the same moment is left to startRedis's retry.
 */
export async function freePort (): Promise<number> {
  const [low] = ephemeralPorts()
  const floor = 10_000
  if (low - floor >= 1000) {
    for (let attempt = 0; attempt < 50; attempt++) {
      const port = floor + Math.floor(Math.random() * (low - floor))
      if (await canBind(port)) return port
    }
  }
  const server = createServer().listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  await new Promise((resolve) => server.close(resolve))
  return port
}

const inUse = (err: unknown): boolean => /Address already in use/i.test((err as Error).message)

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
  let port = await freePort()
  const flags = debugFlags()
  if (options.replicaOf !== undefined) flags.push('--replicaof', '127.0.0.1', String(options.replicaOf), '--dir', tmpdir())
  let child: ChildProcess | undefined
  const spawnOnce = async (): Promise<void> => {
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
  // Taken meanwhile (by another test file): the first start moves to another port.
  for (let attempt = 1; ; attempt++) {
    try {
      await spawnOnce()
      break
    } catch (err) {
      if (!inUse(err) || attempt >= 5) throw err
      port = await freePort()
    }
  }
  // A restart must keep its port (that is the scenario): a bind refused while the
  // killed server's socket is still being released is tried again, briefly.
  const restart = async (): Promise<void> => {
    for (let attempt = 1; ; attempt++) {
      try {
        await spawnOnce()
        return
      } catch (err) {
        if (!inUse(err) || attempt >= 20) throw err
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    }
  }
  t.teardown(kill)
  return { port, url: `redis://127.0.0.1:${port}`, kill, restart, pid: () => child?.pid }
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

export interface RedisMonitor {
  /** Every command Redis ran since the monitor started, as its arguments, in the order Redis ran them. */
  readonly commands: string[][]
  /** The first command (run since the monitor started) that matches, once Redis has run it; fails after 10 s. */
  seen: (match: (args: string[]) => boolean, what: string) => Promise<string[]>
}

/** One argument list of a MONITOR line, `"SET" "k" "v\\x00"`: Redis quotes each one and escapes it as sdscatrepr does. */
function monitorArgs (text: string): string[] {
  const args: string[] = []
  let at = text.indexOf('"')
  while (at !== -1 && at < text.length) {
    let arg = ''
    let i = at + 1
    for (; i < text.length && text[i] !== '"'; i++) {
      if (text[i] !== '\\') {
        arg += text[i]
        continue
      }
      const next = text[++i]
      if (next === 'x') {
        arg += String.fromCharCode(parseInt(text.slice(i + 1, i + 3), 16))
        i += 2
      } else {
        arg += ({ n: '\n', r: '\r', t: '\t', a: '\x07', b: '\b' } as Record<string, string>)[next as string] ?? next
      }
    }
    args.push(arg)
    at = text.indexOf('"', i + 1)
  }
  return args
}

/**
 * Watch what a Redis runs (MONITOR), on a raw connection closed at teardown.
 * Not ioredis's monitor(): it enters monitoring mode a microtask after
 * MONITOR's +OK, so a command line that comes in the same read is taken for
 * the reply to a command it never sent, and it throws "Command queue state
 * error" out of band (seen in redis-reap-chunks on a busy Redis). Resolves
 * once Redis has answered MONITOR: everything it runs from then on is seen.
 * A MONITOR connection is of type normal: CLIENT KILL TYPE normal cuts it.
 */
export async function monitorRedis (t: { teardown: (fn: () => unknown) => void }, port: number): Promise<RedisMonitor> {
  const socket = connect(port, '127.0.0.1')
  t.teardown(() => socket.destroy())
  const commands: string[][] = []
  const waiters = new Set<() => void>()
  let buffered = ''
  let started: (() => void) | undefined
  let failed: ((err: Error) => void) | undefined
  const ready = new Promise<void>((resolve, reject) => { started = resolve; failed = reject })
  socket.on('error', (err) => failed?.(err))
  socket.on('data', (chunk: Buffer) => {
    buffered += chunk.toString('latin1')
    let end: number
    while ((end = buffered.indexOf('\r\n')) !== -1) {
      const line = buffered.slice(0, end)
      buffered = buffered.slice(end + 2)
      if (started !== undefined) {
        if (line !== '+OK') failed?.(new Error(`MONITOR answered ${line}`))
        else started()
        started = undefined
        continue
      }
      // +<time> [<db> <source>] "arg" ...
      commands.push(monitorArgs(line.slice(line.indexOf('] ') + 2)))
    }
    for (const wake of [...waiters]) wake()
  })
  socket.write('MONITOR\r\n')
  await guard(ready, 'Redis to answer MONITOR')
  failed = undefined
  const seen = async (match: (args: string[]) => boolean, what: string): Promise<string[]> => {
    const find = (): string[] | undefined => commands.find(match)
    const found = find()
    if (found !== undefined) return found
    let wake = (): void => {}
    try {
      return await guard(new Promise<string[]>((resolve) => {
        wake = () => { const args = find(); if (args !== undefined) resolve(args) }
        waiters.add(wake)
      }), `the monitor to show ${what}`)
    } finally {
      waiters.delete(wake)
    }
  }
  return { commands, seen }
}
