import type { Writable } from 'node:stream'

/**
 * Build a complete server-to-client WebSocket text frame (FIN, opcode 1,
 * unmasked) around a payload, once, so that a fan-out writes the same bytes to
 * every member instead of framing per socket.
 */
export function textFrame (payload: Buffer): Buffer {
  const length = payload.length
  const header = headerSize(length)
  const frame = Buffer.allocUnsafe(header + length)
  writeHeader(frame, length)
  payload.copy(frame, header)
  return frame
}

function headerSize (length: number): number {
  return length < 126 ? 2 : length < 65536 ? 4 : 10
}

function writeHeader (frame: Buffer, length: number): void {
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
}

/** Payloads from this size on are written after their header rather than copied into one buffer with it. */
const COPY_LIMIT = 16 * 1024

/**
 * Frame a payload for one socket and write it as `writeCoalesced` does: one
 * buffer for a small payload, the header then the payload itself for a large
 * one (no copy).
 */
export function writeText (socket: Writable, payload: Buffer): void {
  if (payload.length < COPY_LIMIT) {
    writeCoalesced(socket, textFrame(payload))
    return
  }
  const header = Buffer.allocUnsafe(headerSize(payload.length))
  writeHeader(header, payload.length)
  writeCoalesced(socket, header)
  writeCoalesced(socket, payload)
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
 * Write to a socket, coalescing everything written to it during this turn of
 * the event loop into one writev: several messages for one member cost one
 * system call instead of one each.
 */
export function writeCoalesced (socket: Writable, bytes: Buffer): void {
  if (socket.writableCorked === 0) {
    socket.cork()
    corked.push(socket)
    if (!flushScheduled) {
      flushScheduled = true
      setImmediate(flush)
    }
  }
  socket.write(bytes)
}
