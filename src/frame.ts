import type { Writable } from 'node:stream'

/**
 * Build a complete server-to-client WebSocket text frame (FIN, opcode 1,
 * unmasked) around a payload, once, so that a fan-out writes the same bytes to
 * every member instead of framing per socket.
 */
export function textFrame (payload: Buffer): Buffer {
  const length = payload.length
  const header = length < 126 ? 2 : length < 65536 ? 4 : 10
  const frame = Buffer.allocUnsafe(header + length)
  frame[0] = 0x81
  if (length < 126) {
    frame[1] = length
  } else if (length < 65536) {
    frame[1] = 126
    frame.writeUInt16BE(length, 2)
  } else {
    frame[1] = 127
    frame.writeUInt32BE(Math.floor(length / 2 ** 32), 2)
    frame.writeUInt32BE(length >>> 0, 6)
  }
  payload.copy(frame, header)
  return frame
}

/** Sockets corked in this turn of the event loop, uncorked together once it has done its work. */
const corked: Writable[] = []
let flushScheduled = false

function flush (): void {
  flushScheduled = false
  for (const socket of corked) socket.uncork()
  corked.length = 0
}

/**
 * Hold what is written to a socket until the end of this turn of the event
 * loop, then write it all with one writev: several frames for one member
 * cost one system call instead of one each.
 */
export function corkTurn (socket: Writable): void {
  if (socket.writableCorked !== 0) return
  socket.cork()
  corked.push(socket)
  if (!flushScheduled) {
    flushScheduled = true
    setImmediate(flush)
  }
}

/** Write to a socket, coalesced with everything else written to it in this turn of the event loop (`corkTurn`). */
export function writeCoalesced (socket: Writable, bytes: Buffer): void {
  corkTurn(socket)
  socket.write(bytes)
}
