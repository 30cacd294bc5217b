/**
 * The one client implementation the load generator uses for every server, so
 * the client's cost is the same for all. It speaks the fastify-rooms frames
 * (also spoken by the plain ws baselines) or Socket.IO's engine.io v4 frames,
 * over the same ws client. Frames are told apart by their first bytes and the
 * few numbers the load generator needs are read from the text: only an `error`
 * is parsed as JSON. `presence` frames are counted, whatever their shape (one
 * join per frame, or batched diffs), and the last one is kept to read its count.
 */
import WebSocket from 'ws'

export type Kind = 'rooms' | 'rooms-quiet' | 'rooms-nohistory' | 'rooms-redis' | 'rooms-cluster' | 'ws-stringify' | 'ws-preframed' | 'ws-coalesced' | 'ws-coalesced-from' | 'fastify-websocket' | 'fastify-coalesced' | 'socketio' | 'socketio-redis'

export interface BenchClient {
  /** Join a room; resolves when the server confirmed it (`joined`, or the Socket.IO ack). */
  join: (room: string) => Promise<void>
  /** Publish `data` (already JSON) and resolve with the offset from the ack. */
  publish: (room: string, data: string) => Promise<number>
  /** Every `message` frame's text (for Socket.IO, the engine.io packet). */
  onMessage: (text: string) => void
  /** Presence frames received since the counter was last reset. */
  presenceFrames: number
  /** The latest `joined` or `presence` frame, whose member count `lastCount` reads lazily. */
  lastCountFrame: string | Buffer
  /** `lastCountFrame`'s count, read once per frame. */
  countOf: string | Buffer
  count: number
  /** A client that keeps no frame (bench/lean-client.ts) reads its count itself. */
  readCount?: () => number
  /** Set by the load generator once the join was answered. */
  joined: boolean
  /** Whether the server closed this connection (a slow-consumer close, a crash). */
  closed: boolean
  close: () => void
}

export function wsUrl (kind: Kind, port: number): string {
  if (kind.startsWith('socketio')) return `ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`
  return kind.startsWith('rooms') ? `ws://127.0.0.1:${port}/ws` : `ws://127.0.0.1:${port}/`
}

/** A client that has done nothing yet; its opener fills in `join` and `publish`. */
export function blankClient (close: () => void): BenchClient {
  return { join: async () => {}, publish: async () => 0, onMessage: () => {}, presenceFrames: 0, lastCountFrame: '', countOf: '', count: NaN, joined: false, closed: false, close }
}

const startsWith = (text: string, prefix: string): boolean => text.startsWith(prefix)

export async function open (kind: Kind, url: string): Promise<BenchClient> {
  const ws = new WebSocket(url, { perMessageDeflate: false })
  const pending = new Map<number, { resolve: (value: number) => void, reject: (err: Error) => void }>()
  let joining: { resolve: () => void, reject: (err: Error) => void } | undefined
  let nextId = 1
  let terminated = false
  const client = blankClient(() => { terminated = true; ws.terminate() })
  let opened: () => void
  const ready = new Promise<void>((resolve, reject) => {
    opened = resolve
    ws.once('error', reject)
  })
  ws.on('error', () => {}) // after the open, a close reports the failure
  ws.once('close', () => {
    if (!terminated) client.closed = true
    const err = new Error('the server closed the connection')
    joining?.reject(err)
    for (const p of pending.values()) p.reject(err)
    pending.clear()
  })

  if (kind.startsWith('socketio')) {
    ws.on('message', (raw) => {
      const text = raw.toString()
      const c0 = text.charCodeAt(0)
      if (c0 === 52 && text.charCodeAt(1) === 50) { client.onMessage(text); return } // 42["message",...]
      if (c0 === 48) { ws.send('40'); return } // engine.io open: connect to namespace "/"
      if (c0 === 50) { ws.send('3'); return } // ping
      if (startsWith(text, '40')) { opened(); return }
      if (startsWith(text, '43')) { // ack: 43<id>[...]
        const bracket = text.indexOf('[')
        const id = Number(text.slice(2, bracket))
        pending.get(id)?.resolve(numberAfter(text, '[') || 0)
        pending.delete(id)
      }
    })
    const emit = async (args: string): Promise<number> => {
      const id = nextId++
      return await new Promise((resolve, reject) => { pending.set(id, { resolve, reject }); ws.send(`42${id}${args}`) })
    }
    client.join = async (room) => { await emit(`["join",${JSON.stringify(room)}]`) }
    client.publish = async (room, data) => await emit(`["publish",${JSON.stringify(room)},${data}]`)
  } else {
    ws.on('message', (raw: Buffer) => {
      // Every server writes `type` first: `{"type":"presence"` is told by two bytes and kept undecoded,
      // copied: `raw` may be a view of a large read buffer, which 10,000 clients must not each pin.
      if (raw[9] === 0x70 && raw[10] === 0x72) {
        client.presenceFrames++
        client.lastCountFrame = Buffer.from(raw)
        return
      }
      const text = raw.toString()
      if (startsWith(text, '{"type":"message"')) { client.onMessage(text); return }
      if (startsWith(text, '{"type":"ack"')) {
        const id = numberAfter(text, '"id":')
        pending.get(id)?.resolve(numberAfter(text, '"offset":'))
        pending.delete(id)
        return
      }
      if (startsWith(text, '{"type":"joined"')) {
        client.lastCountFrame = text
        const j = joining
        joining = undefined
        j?.resolve()
        return
      }
      if (startsWith(text, '{"type":"welcome"')) { opened(); return }
      if (startsWith(text, '{"type":"error"')) {
        const frame = JSON.parse(text) as { id?: number, code: string, message: string }
        const err = new Error(`${frame.code}: ${frame.message}`)
        if (frame.id !== undefined && pending.has(frame.id)) {
          pending.get(frame.id)?.reject(err)
          pending.delete(frame.id)
        } else if (joining !== undefined) {
          joining.reject(err)
          joining = undefined
        }
      }
    })
    client.join = async (room) => {
      // One join at a time per connection: its reply is the next `joined` (or `error`).
      await new Promise<void>((resolve, reject) => {
        joining = { resolve, reject }
        ws.send(`{"type":"join","room":${JSON.stringify(room)}}`)
      })
    }
    client.publish = async (room, data) => {
      const id = nextId++
      return await new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject })
        ws.send(`{"type":"publish","room":${JSON.stringify(room)},"data":${data},"id":${id}}`)
      })
    }
  }
  await ready
  return client
}

/** The member count a client last heard of: from its latest `presence` or `joined` frame. */
export function lastCount (client: BenchClient): number {
  if (client.readCount !== undefined) return client.readCount()
  if (client.lastCountFrame === client.countOf) return client.count
  client.countOf = client.lastCountFrame
  const text = client.lastCountFrame.toString()
  // `count` follows the member lists in a presence diff, and precedes them in `joined`.
  client.count = startsWith(text, '{"type":"presence"')
    ? numberAfter(text, '"count":', text.lastIndexOf('"count":'))
    : numberAfter(text, '"count":')
  return client.count
}

/** Read a number that follows `key` in a message's text (at `at`, when known), without parsing the JSON. */
export function numberAfter (text: string, key: string, at = text.indexOf(key)): number {
  if (at === -1) return NaN
  let end = at + key.length
  while (end < text.length) {
    const c = text.charCodeAt(end)
    if ((c < 48 || c > 57) && c !== 46) break
    end++
  }
  return Number(text.slice(at + key.length, end))
}
