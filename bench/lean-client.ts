/**
 * A lean WebSocket client for the join storm, used for every server kind
 * alike. In a storm every member must receive every join once: about 3 GB of
 * presence frames for a full storm, some 100,000 frames a second spread over
 * 15,000 sockets. The server writes the same bytes whatever reads them, so a
 * member's cost belongs to the member's machine, not to the server. With
 * `ws` (a Buffer per read, frames concatenated, UTF-8 validated, an event per
 * frame) the load generators took 70% of this 2-core machine in a scaled
 * storm and the storm could not run at its rate. This client does the
 * RFC 6455 client handshake itself on a raw `net` socket, sends masked text
 * frames, reads every socket into one shared buffer (`onread`), parses frame
 * headers only and skips presence payloads, keeping their last bytes, where
 * `count` is, to read the count lazily. Other frames (`welcome`, `joined`,
 * `error`, a rare control frame) are collected whole and read as text.
 * It only joins: it cannot publish.
 */
import { createHash, randomBytes } from 'node:crypto'
import { connect } from 'node:net'
import { blankClient, numberAfter, type BenchClient, type Kind } from './client.js'

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'
/** Every lean socket reads into this one buffer: each read is parsed before the next one starts. */
const READ_BUFFER = Buffer.allocUnsafe(256 * 1024)
/** `{"type":"presence"` is told by bytes 9 and 10 (`pr`), as bench/client.ts does. */
const CLASSIFY_BYTES = 11
/** A presence diff ends with `"count":N}`: its last bytes are enough to read the count. */
const TAIL_BYTES = 32
/** A message other than presence may not exceed this: the storm's are `welcome`, `joined` (a page of 100 members) and `error`. */
const MAX_COLLECTED = 1024 * 1024

/** A masked client frame (RFC 6455 5.3) of `opcode` around `payload`. */
export function maskedFrame (opcode: number, payload: Buffer): Buffer {
  const length = payload.length
  const header = length < 126 ? 2 : length < 65536 ? 4 : 10
  const frame = Buffer.allocUnsafe(header + 4 + length)
  frame[0] = 0x80 | opcode
  if (length < 126) {
    frame[1] = 0x80 | length
  } else if (length < 65536) {
    frame[1] = 0x80 | 126
    frame.writeUInt16BE(length, 2)
  } else {
    frame[1] = 0x80 | 127
    frame.writeUInt32BE(Math.floor(length / 2 ** 32), 2)
    frame.writeUInt32BE(length >>> 0, 6)
  }
  const mask = randomBytes(4)
  mask.copy(frame, header)
  for (let i = 0; i < length; i++) frame[header + 4 + i] = payload[i]! ^ mask[i & 3]!
  return frame
}

/** The frame parser's callbacks: a complete non-presence message, a presence message, a control frame. */
export interface FrameSink {
  message: (payload: Buffer) => void
  /** A presence message ended; `tail` holds its last `tailLength` bytes. */
  presence: (tail: Buffer, tailLength: number) => void
  control: (opcode: number, payload: Buffer) => void
  fail: (reason: string) => void
}

/**
 * Parses server frames from reads of any size: headers of 2, 4 or 10 bytes,
 * fragmented messages, control frames between fragments. Presence payloads are
 * skipped but for their last bytes; everything else is copied out whole.
 */
export class FrameParser {
  private readonly header = Buffer.allocUnsafe(10)
  private headerHave = 0
  private headerNeed = 2
  private payloadLeft = 0
  private inPayload = false
  private opcode = 0
  private fin = false
  /** The current data message: undecided until CLASSIFY_BYTES arrived, then presence or not. */
  private messageOpen = false
  private presence = false
  private decided = false
  private readonly prefix = Buffer.allocUnsafe(CLASSIFY_BYTES)
  private prefixLength = 0
  private parts: Buffer[] = []
  private collected = 0
  private readonly tail = Buffer.allocUnsafe(TAIL_BYTES)
  private tailLength = 0
  private control: Buffer[] = []
  private failed = false

  constructor (private readonly sink: FrameSink) {}

  /** Feed `length` bytes of `buffer` from `start`; nothing of `buffer` is kept after the call. */
  push (buffer: Buffer, start: number, end: number): void {
    let i = start
    while (i < end && !this.failed) {
      if (!this.inPayload) {
        this.header[this.headerHave++] = buffer[i++]!
        if (this.headerHave === 2) {
          const b0 = this.header[0]!
          const b1 = this.header[1]!
          if ((b0 & 0x70) !== 0) return this.fail('a frame with RSV bits set (no extension was negotiated)')
          if ((b1 & 0x80) !== 0) return this.fail('a masked frame from the server')
          const len7 = b1 & 0x7f
          this.headerNeed = len7 === 126 ? 4 : len7 === 127 ? 10 : 2
        }
        if (this.headerHave < this.headerNeed) continue
        this.startFrame()
        continue
      }
      const n = Math.min(this.payloadLeft, end - i)
      this.payload(buffer, i, i + n)
      i += n
      this.payloadLeft -= n
      if (this.payloadLeft === 0) this.endFrame()
    }
  }

  private fail (reason: string): void {
    this.failed = true
    this.sink.fail(reason)
  }

  private startFrame (): void {
    const h = this.header
    this.fin = (h[0]! & 0x80) !== 0
    this.opcode = h[0]! & 0x0f
    const len7 = h[1]! & 0x7f
    this.payloadLeft = len7 === 126 ? h.readUInt16BE(2) : len7 === 127 ? h.readUInt32BE(2) * 2 ** 32 + h.readUInt32BE(6) : len7
    this.headerHave = 0
    this.headerNeed = 2
    if (this.opcode >= 8) {
      if (!this.fin || this.payloadLeft > 125) return this.fail('a fragmented or long control frame')
    } else if (this.opcode === 0) {
      if (!this.messageOpen) return this.fail('a continuation frame outside a message')
    } else if (this.opcode === 1 || this.opcode === 2) {
      if (this.messageOpen) return this.fail('a new message inside a fragmented one')
      this.messageOpen = true
      this.presence = false
      this.decided = false
      this.prefixLength = 0
      this.parts = []
      this.collected = 0
      this.tailLength = 0
    } else {
      return this.fail(`a frame of unknown opcode ${this.opcode}`)
    }
    this.inPayload = true
    if (this.payloadLeft === 0) this.endFrame()
  }

  private payload (buffer: Buffer, start: number, end: number): void {
    if (this.opcode >= 8) { this.control.push(Buffer.from(buffer.subarray(start, end))); return }
    if (!this.decided) {
      // The first bytes go to `prefix`, which tells presence; the payload itself is not copied for that.
      const before = this.prefixLength
      const take = Math.min(CLASSIFY_BYTES - before, end - start)
      buffer.copy(this.prefix, before, start, start + take)
      this.prefixLength += take
      if (this.prefixLength < CLASSIFY_BYTES) return
      this.decided = true
      this.presence = this.prefix[9] === 0x70 && this.prefix[10] === 0x72
      if (this.presence) this.keepTail(this.prefix, 0, before)
      else if (before > 0) this.collect(this.prefix, 0, before)
    }
    if (this.presence) this.keepTail(buffer, start, end)
    else this.collect(buffer, start, end)
  }

  private collect (buffer: Buffer, start: number, end: number): void {
    this.collected += end - start
    if (this.collected > MAX_COLLECTED) return this.fail(`a message of more than ${MAX_COLLECTED} bytes that is not presence`)
    this.parts.push(Buffer.from(buffer.subarray(start, end)))
  }

  /** Keep the last TAIL_BYTES bytes seen of a presence message. */
  private keepTail (buffer: Buffer, start: number, end: number): void {
    const n = end - start
    if (n >= TAIL_BYTES) {
      buffer.copy(this.tail, 0, end - TAIL_BYTES, end)
      this.tailLength = TAIL_BYTES
      return
    }
    const keep = Math.min(this.tailLength, TAIL_BYTES - n)
    this.tail.copyWithin(0, this.tailLength - keep, this.tailLength)
    buffer.copy(this.tail, keep, start, end)
    this.tailLength = keep + n
  }

  private endFrame (): void {
    this.inPayload = false
    if (this.opcode >= 8) {
      const payload = this.control.length === 1 ? this.control[0]! : Buffer.concat(this.control)
      this.control = []
      this.sink.control(this.opcode, payload)
      return
    }
    if (!this.fin) return
    this.messageOpen = false
    if (this.decided && this.presence) {
      this.sink.presence(this.tail, this.tailLength)
      return
    }
    // A message shorter than CLASSIFY_BYTES is all in `prefix`.
    const payload = !this.decided ? Buffer.from(this.prefix.subarray(0, this.prefixLength)) : this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts)
    this.parts = []
    this.sink.message(payload)
  }
}

/** Open a lean client to a fastify-rooms-dialect server (not Socket.IO) and resolve once `welcome` arrived. */
export async function openLean (kind: Kind, url: string): Promise<BenchClient> {
  if (kind.startsWith('socketio')) throw new Error('the lean client speaks the fastify-rooms dialect only')
  const { hostname, port, pathname } = new URL(url)
  const key = randomBytes(16).toString('base64')
  const accept = createHash('sha1').update(key + GUID).digest('base64')
  let upgraded = false
  let response = ''
  let terminated = false
  let joining: { resolve: () => void, reject: (err: Error) => void } | undefined
  let opened: () => void = () => {}
  let refused: (err: Error) => void = () => {}
  const ready = new Promise<void>((resolve, reject) => { opened = resolve; refused = reject })
  // The last presence diff's last bytes, copied (the parser reuses its own), read only when a count is asked for.
  const presenceTail = Buffer.allocUnsafe(TAIL_BYTES)
  let presenceTailLength = 0
  let countDirty = false

  const client: BenchClient = {
    ...blankClient(() => { terminated = true; socket.destroy() }),
    publish: async () => { throw new Error('the lean client cannot publish') },
    readCount: () => {
      if (countDirty) {
        countDirty = false
        const text = presenceTail.toString('latin1', 0, presenceTailLength)
        client.count = numberAfter(text, '"count":', text.lastIndexOf('"count":'))
      }
      return client.count
    }
  }

  const parser = new FrameParser({
    message: (payload) => {
      const text = payload.toString()
      if (text.startsWith('{"type":"joined"')) {
        client.count = numberAfter(text, '"count":')
        countDirty = false
        const j = joining
        joining = undefined
        j?.resolve()
      } else if (text.startsWith('{"type":"welcome"')) {
        opened()
      } else if (text.startsWith('{"type":"message"')) {
        client.onMessage(text)
      } else if (text.startsWith('{"type":"error"')) {
        const frame = JSON.parse(text) as { code: string, message: string }
        const j = joining
        joining = undefined
        j?.reject(new Error(`${frame.code}: ${frame.message}`))
      }
    },
    presence: (tail, length) => {
      client.presenceFrames++
      tail.copy(presenceTail, 0, 0, length)
      presenceTailLength = length
      countDirty = true
    },
    control: (opcode, payload) => {
      if (opcode === 9) socket.write(maskedFrame(0xa, payload))
      else if (opcode === 8) {
        socket.end(maskedFrame(0x8, payload.subarray(0, 2)))
      }
    },
    fail: (reason) => {
      socket.destroy(new Error(`bad frame from the server: ${reason}`))
    }
  })

  const socket = connect({
    host: hostname,
    port: Number(port),
    noDelay: true,
    onread: {
      buffer: READ_BUFFER,
      callback: (nread) => {
        const buffer = READ_BUFFER
        if (upgraded) {
          parser.push(buffer, 0, nread)
          return true
        }
        // The handshake's reply is ASCII; the first frames may follow it in the same read.
        response += buffer.toString('latin1', 0, nread)
        const end = response.indexOf('\r\n\r\n')
        if (end === -1) {
          if (response.length > 16_384) socket.destroy(new Error('no end to the handshake reply'))
          return true
        }
        const head = response.slice(0, end)
        const rest = Buffer.from(response.slice(end + 4), 'latin1')
        response = ''
        if (!/^HTTP\/1\.1 101 /.test(head)) {
          socket.destroy(new Error(`the server refused the upgrade: ${head.split('\r\n')[0]}`))
          return true
        }
        const got = /\r\nsec-websocket-accept:\s*(\S+)/i.exec(head)?.[1]
        if (got !== accept) {
          socket.destroy(new Error(`wrong Sec-WebSocket-Accept: ${got ?? 'none'}`))
          return true
        }
        upgraded = true
        if (rest.length > 0) parser.push(rest, 0, rest.length)
        return true
      }
    }
  })
  socket.once('connect', () => {
    socket.write(`GET ${pathname} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`)
  })
  socket.on('error', (err) => { refused(err) })
  socket.once('close', () => {
    if (!terminated) client.closed = true
    refused(new Error('the connection closed before welcome'))
    const j = joining
    joining = undefined
    j?.reject(new Error('the server closed the connection'))
  })

  client.join = async (room) => {
    // One join at a time per connection: its reply is the next `joined` (or `error`).
    await new Promise<void>((resolve, reject) => {
      if (socket.destroyed) { reject(new Error('the connection is closed')); return }
      joining = { resolve, reject }
      socket.write(maskedFrame(1, Buffer.from(`{"type":"join","room":${JSON.stringify(room)}}`)))
    })
  }
  await ready
  return client
}
