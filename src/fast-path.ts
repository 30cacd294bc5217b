import type { Writable } from 'node:stream'
import type { WebSocket } from 'ws'
import { textFrame } from './frame.js'

/**
 * The ws internals a direct write relies on. None of them is public API, so
 * each is checked before use, and any mismatch means the public `send`.
 */
interface SenderInternals {
  _queue: unknown[]
  _state: unknown
}

interface SenderClass {
  new (socket: unknown): SenderInternals
  frame: (data: Buffer, options: Record<string, unknown>) => Buffer[]
}

interface WebSocketInternals {
  _socket?: Partial<Writable>
  _sender?: SenderInternals | null
  _extensions?: Record<string, unknown>
}

/** Payload lengths that take each of the three header sizes of a frame. */
const PROBES = [5, 300, 70_000]

/** Verdicts per WebSocket class: ws is checked once, not per connection. */
const verdicts = new WeakMap<object, boolean>()
/** The state of an idle ws Sender (nothing being compressed or read from a Blob), as ws itself sets it. */
let idleState: unknown
let idleKnown = false

/**
 * Whether a ws WebSocket class frames text exactly as `textFrame` does and has
 * the Sender shape `senderIdle` reads: the way socket.io-adapter checks
 * `WebSocket.Sender.frame` before it pre-frames. Cached per class.
 */
function checkClass (wsClass: object): boolean {
  let verdict = verdicts.get(wsClass)
  if (verdict === undefined) {
    verdict = probe((wsClass as { Sender?: unknown }).Sender)
    verdicts.set(wsClass, verdict)
  }
  return verdict
}

function probe (sender: unknown): boolean {
  if (typeof sender !== 'function' || typeof (sender as SenderClass).frame !== 'function') return false
  const Sender = sender as SenderClass
  try {
    for (const length of PROBES) {
      const payload = Buffer.alloc(length, 0x61)
      const framed = Buffer.concat(Sender.frame(payload, { fin: true, opcode: 1, mask: false, readOnly: true, rsv1: false }))
      if (!framed.equals(textFrame(payload))) return false
    }
    const fresh = new Sender(null)
    if (!Array.isArray(fresh._queue) || !('_state' in fresh)) return false
    if (idleKnown && fresh._state !== idleState) return false
    idleState = fresh._state
    idleKnown = true
    return true
  } catch {
    return false
  }
}

/**
 * The TCP socket under a ws WebSocket, when pre-built frames may be written to
 * it directly: ws passed the feature check, no extension was negotiated (with
 * permessage-deflate ws compresses, and queues, every message itself), and the
 * socket is a writable stream that can be corked. Otherwise undefined: send
 * through the public `WebSocket.send`.
 */
export function directSocket (socket: WebSocket): Writable | undefined {
  if (!checkClass(socket.constructor)) return undefined
  const { _socket: raw, _sender: sender, _extensions: extensions } = socket as unknown as WebSocketInternals
  if (extensions === undefined || Object.keys(extensions).length > 0) return undefined
  if (sender === undefined || sender === null || !Array.isArray(sender._queue)) return undefined
  if (raw === undefined || typeof raw.write !== 'function' || typeof raw.cork !== 'function' ||
    typeof raw.uncork !== 'function' || typeof raw.writableCorked !== 'number' || typeof raw.writableLength !== 'number') return undefined
  return raw as Writable
}

/**
 * Whether ws holds nothing back that a direct write would overtake (a Blob
 * being read, and what was sent after it). Only for a socket that
 * `directSocket` accepted. ws queues a send only while its Sender is busy,
 * and empties the queue as soon as it is idle again, so an idle state means
 * an empty queue: this runs for every member of every fan-out, and the queue
 * is one more object to fetch from memory per member.
 */
export function senderIdle (socket: WebSocket): boolean {
  return (socket as unknown as { _sender: SenderInternals })._sender._state === idleState
}
