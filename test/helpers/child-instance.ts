import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import type { Test } from 'tap'

/**
 * An app instance in its own process (test/fixtures/node.ts, configured by
 * `env`: REDIS_URL or REDIS_CLUSTER, KEY_PREFIX, LEASE_MS...), so that a test
 * can kill or pause it for real. Killed at the test's teardown.
 */
export async function childInstance (t: Test, env: Record<string, string>): Promise<{ child: ChildProcess, port: number, wsUrl: string }> {
  const child = spawn(process.execPath, ['--import=tsx', 'test/fixtures/node.ts'], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] })
  // Its exit awaited: a dying instance's late writes (its lease) must not land in the next test.
  const exited = once(child, 'exit').catch(() => {})
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGKILL')
    await exited
  })
  const port = await new Promise<number>((resolve, reject) => {
    let out = ''
    child.stdout!.on('data', (chunk: Buffer) => { out += chunk.toString(); const m = /port=(\d+)/.exec(out); if (m !== null) resolve(Number(m[1])) })
    child.once('exit', (code) => reject(new Error(`the instance exited with ${code} before listening: ${out}`)))
  })
  return { child, port, wsUrl: `ws://127.0.0.1:${port}/ws` }
}
