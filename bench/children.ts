/**
 * The bench's child processes (servers, load generators) and its IPC requests
 * to them, shared by bench/run.ts and bench/heap-diff.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process'

/** Children get the highest file limit allowed: 20,000 sockets need more than the usual default. */
export function node (args: string[]): ChildProcess {
  const command = `ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "${process.execPath}" ${args.map((a) => `'${a}'`).join(' ')}`
  return spawn('bash', ['-c', command], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] })
}

/** One IPC request to a child; replies carry the request's `rid`, so requests may overlap. */
let nextRid = 1
export async function call<T> (child: ChildProcess, message: object): Promise<T> {
  const rid = nextRid++
  return await new Promise((resolve, reject) => {
    const onMessage = (reply: T & { rid: number, error?: string }): void => {
      if (reply.rid !== rid) return
      child.off('message', onMessage)
      child.off('exit', onExit)
      if (reply.error !== undefined) reject(new Error(reply.error))
      else resolve(reply)
    }
    const onExit = (code: number | null): void => { child.off('message', onMessage); reject(new Error(`a bench process exited with ${code}`)) }
    child.on('message', onMessage)
    child.once('exit', onExit)
    child.send({ ...message, rid })
  })
}
