import type { Writable } from 'node:stream'

/**
 * Build a complete server-to-client WebSocket text frame (FIN, opcode 1,
 * unmasked) around a payload, once, so that a fan-out writes the same bytes to
 * every member instead of framing per socket.
 */
export function textFrame (payload: Buffer): Buffer {
  const frame = Buffer.allocUnsafe(headerSize(payload.length) + payload.length)
  payload.copy(frame, writeHeader(frame, 0, payload.length))
  return frame
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
  writeHeader(header, 0, payload.length)
  writeCoalesced(socket, header)
  writeCoalesced(socket, payload)
}

/**
 * `writeText` for a payload that is still a string (a reply, `welcome`,
 * `joined`): encoded straight into its frame, one buffer and one copy rather
 * than a Buffer of the text and then the frame around it.
 * @returns the payload's size in bytes
 */
export function writeTextString (socket: Writable, payload: string): number {
  const length = Buffer.byteLength(payload)
  if (length >= COPY_LIMIT) {
    writeText(socket, Buffer.from(payload))
    return length
  }
  const frame = Buffer.allocUnsafe(headerSize(length) + length)
  frame.write(payload, writeHeader(frame, 0, length))
  writeCoalesced(socket, frame)
  return length
}

/**
 * Frame several payloads back to back in one buffer, once for every member:
 * a member that gets them all gets them with one write. `eachFrame` cuts out
 * one of them.
 */
export function textFrames (payloads: readonly Buffer[]): Buffer {
  let size = 0
  for (const payload of payloads) size += headerSize(payload.length) + payload.length
  const frames = Buffer.allocUnsafe(size)
  let at = 0
  for (const payload of payloads) {
    at = writeHeader(frames, at, payload.length)
    at += payload.copy(frames, at)
  }
  return frames
}

/** The frames of `textFrames(payloads)`, one by one, as views of it (no copy). */
export function eachFrame (frames: Buffer, payloads: readonly Buffer[]): Buffer[] {
  const each: Buffer[] = []
  let at = 0
  for (const payload of payloads) {
    const end = at + headerSize(payload.length) + payload.length
    each.push(frames.subarray(at, end))
    at = end
  }
  return each
}

function headerSize (length: number): number {
  return length < 126 ? 2 : length < 65536 ? 4 : 10
}

/** Write a text frame's header (FIN, opcode 1, unmasked) for a payload of `length` bytes at `at`; returns where the payload goes. */
function writeHeader (frame: Buffer, at: number, length: number): number {
  frame[at] = 0x81
  if (length < 126) {
    frame[at + 1] = length
    return at + 2
  }
  if (length < 65536) {
    frame[at + 1] = 126
    frame.writeUInt16BE(length, at + 2)
    return at + 4
  }
  frame[at + 1] = 127
  frame.writeUInt32BE(Math.floor(length / 2 ** 32), at + 2)
  frame.writeUInt32BE(length >>> 0, at + 6)
  return at + 10
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
