import type { Socket } from 'node:net'
import WebSocket from 'ws'
import type { ServerFrame, WelcomeFrame } from '../../src/protocol.js'
import { RESUME_PROTOCOL, SUBPROTOCOL } from '../../src/client/subprotocol.js'

export type Frame = ServerFrame & Record<string, any>

/** A client's frames in one TCP write (masked, as a client must), so the server reads them all in one turn of its event loop. */
export function writeAtOnce (ws: WebSocket, frames: unknown[]): void {
  const { Sender } = WebSocket as unknown as { Sender: { frame: (data: Buffer, options: object) => Buffer[] } }
  const bytes = frames.flatMap((frame) => Sender.frame(Buffer.isBuffer(frame) ? frame : Buffer.from(JSON.stringify(frame)), { fin: true, opcode: 1, mask: true, readOnly: false, rsv1: false }))
  ;(ws as unknown as { _socket: Socket })._socket.write(Buffer.concat(bytes))
}

/** How long a wait for a frame may take before the test fails (a guard, not a synchronisation). */
const WAIT_MS = 10_000

interface Waiter {
  what: string
  match: (frame: Frame) => boolean
  resolve: (frame: Frame) => void
  reject: (err: Error) => void
  timer: NodeJS.Timeout
}

/**
 * A raw protocol client for tests: every frame received is kept, and `next`
 * waits for the first unread frame matching a predicate. A wait fails at once
 * when the socket closes, with the close code and reason, rather than timing
 * out later with nothing to say.
 */
export class TestSocket {
  readonly ws: WebSocket
  readonly frames: Frame[] = []
  welcome!: WelcomeFrame
  closed: Promise<{ code: number, reason: string }>
  /** Set once the socket has closed. */
  closedWith: { code: number, reason: string } | undefined
  private unread: Frame[] = []
  private readonly waiters: Waiter[] = []
  private nextId = 1

  private constructor (ws: WebSocket) {
    this.ws = ws
    ws.on('message', (data, isBinary) => {
      const frame = JSON.parse(data.toString()) as Frame
      if (isBinary) throw new Error('server sent a binary frame')
      this.frames.push(frame)
      const i = this.waiters.findIndex((w) => w.match(frame))
      if (i === -1) {
        this.unread.push(frame)
        return
      }
      const [waiter] = this.waiters.splice(i, 1) as [Waiter]
      clearTimeout(waiter.timer)
      waiter.resolve(frame)
    })
    this.closed = new Promise((resolve) => ws.on('close', (code, reason) => {
      const closed = { code, reason: reason.toString() }
      this.closedWith = closed
      for (const waiter of this.waiters.splice(0)) {
        clearTimeout(waiter.timer)
        waiter.reject(new Error(`socket closed (${code}${closed.reason === '' ? '' : ` ${closed.reason}`}) while waiting for ${waiter.what}; unread: ${JSON.stringify(this.unread).slice(0, 300)}`))
      }
      resolve(closed)
    }))
  }

  /** Connect as the SDK reconnects a guest: offering its resume token as a subprotocol. */
  static async resume (url: string, token: string): Promise<TestSocket> {
    return await TestSocket.open(url, {}, [SUBPROTOCOL, RESUME_PROTOCOL + token])
  }

  /** Connect without waiting for `welcome`: for connections that must authenticate in band first. */
  static async connect (url: string, options: WebSocket.ClientOptions = {}, protocols?: string[]): Promise<TestSocket> {
    const ws = protocols === undefined ? new WebSocket(url, options) : new WebSocket(url, protocols, options)
    const socket = new TestSocket(ws)
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve())
      ws.once('error', reject)
      ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused with ${res.statusCode}`)))
    })
    return socket
  }

  /** Send `auth` as the first frame and wait for its `welcome`. */
  async authenticate (token: string): Promise<WelcomeFrame> {
    this.send({ type: 'auth', token })
    this.welcome = await this.next((f) => f.type === 'welcome', 'welcome') as WelcomeFrame
    return this.welcome
  }

  /** Connect and wait for `welcome`. */
  static async open (url: string, options: WebSocket.ClientOptions = {}, protocols?: string[]): Promise<TestSocket> {
    const socket = await TestSocket.connect(url, options, protocols)
    socket.welcome = await socket.next((f) => f.type === 'welcome', 'welcome') as WelcomeFrame
    return socket
  }

  /** Resolve with the HTTP status an upgrade is refused with. */
  static async refused (url: string, options: WebSocket.ClientOptions = {}): Promise<{ status: number, body: any }> {
    const ws = new WebSocket(url, options)
    return await new Promise((resolve, reject) => {
      ws.once('open', () => { ws.close(); reject(new Error('upgrade was accepted')) })
      // A socket ended without an HTTP answer: settle rather than wait for ever.
      ws.once('error', (err) => reject(new Error(`upgrade failed without an HTTP answer: ${err.message}`)))
      ws.once('unexpected-response', (_req, res) => {
        let body = ''
        res.on('data', (chunk: Buffer) => { body += chunk.toString() })
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: body === '' ? undefined : JSON.parse(body) }))
      })
    })
  }

  send (frame: unknown): void {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame))
  }

  /** Wait for the first unread frame that matches; fail after `ms`. */
  async next (match: (frame: Frame) => boolean = () => true, what = 'a frame', ms = WAIT_MS): Promise<Frame> {
    const i = this.unread.findIndex(match)
    if (i !== -1) return (this.unread.splice(i, 1) as [Frame])[0]
    if (this.closedWith !== undefined) {
      throw new Error(`socket closed (${this.closedWith.code} ${this.closedWith.reason}) before ${what} came; unread: ${JSON.stringify(this.unread).slice(0, 300)}`)
    }
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1)
        reject(new Error(`timed out waiting for ${what}; unread: ${JSON.stringify(this.unread).slice(0, 500)}`))
      }, ms)
      const waiter: Waiter = { what, match, resolve, reject, timer }
      this.waiters.push(waiter)
    })
  }

  /** Send a frame with a fresh id and wait for the reply carrying it, at most `ms`. */
  async request (frame: Record<string, unknown>, ms = WAIT_MS): Promise<Frame> {
    const id = this.nextId++
    this.send({ ...frame, id })
    return await this.next((f) => 'id' in f && f.id === id, `the reply to ${JSON.stringify(frame).slice(0, 80)}`, ms)
  }

  async join (room: string, extra: Record<string, unknown> = {}): Promise<Frame> {
    return await this.request({ type: 'join', room, ...extra })
  }

  /**
   * A round trip: every frame the server wrote to this socket before it
   * answered is now in `frames`. Used to assert that something did not come.
   */
  async sync (): Promise<void> {
    const reply = await this.request({ type: 'ping' })
    if (reply.type !== 'pong') throw new Error(`expected pong, got ${JSON.stringify(reply)}`)
  }

  /** Frames received and not yet consumed by `next`, optionally of one type. */
  pending (type?: string): Frame[] {
    return this.unread.filter((f) => type === undefined || f.type === type)
  }

  /** Consume and return every unread frame of a type. */
  take (type: string): Frame[] {
    const taken = this.unread.filter((f) => f.type === type)
    this.unread = this.unread.filter((f) => f.type !== type)
    return taken
  }

  /** Stop reading from the socket, like a peer that never reads (its TCP window fills up). */
  stopReading (): void {
    (this.ws as unknown as { _socket: { pause: () => void } })._socket.pause()
  }

  /** Read again after stopReading(). */
  resumeReading (): void {
    (this.ws as unknown as { _socket: { resume: () => void } })._socket.resume()
  }

  async close (): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return
    this.ws.close()
    await this.closed
  }
}
