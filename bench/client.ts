/**
 * The one client implementation the load generator uses for every server, so
 * the client's cost is the same for all. It speaks the fastify-rooms frames
 * (also spoken by the plain ws baselines) or Socket.IO's engine.io v4 frames,
 * over the same ws client. Messages are not parsed as JSON: the load generator
 * reads the two numbers it needs from the text.
 */
import WebSocket from 'ws'

export type Kind = 'rooms' | 'rooms-quiet' | 'rooms-redis' | 'ws-stringify' | 'ws-preframed' | 'fastify-websocket' | 'socketio'

export interface BenchClient {
  join: (room: string) => Promise<void>
  /** Publish `data` (already JSON) and resolve with the offset from the ack. */
  publish: (room: string, data: string) => Promise<number>
  /** Every `message` frame's text (for Socket.IO, the engine.io packet). */
  onMessage: (text: string) => void
  close: () => void
}

export function wsUrl (kind: Kind, port: number): string {
  if (kind === 'socketio') return `ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`
  return kind.startsWith('rooms') ? `ws://127.0.0.1:${port}/ws` : `ws://127.0.0.1:${port}/`
}

export async function open (kind: Kind, url: string): Promise<BenchClient> {
  const ws = new WebSocket(url, { perMessageDeflate: false })
  const pending = new Map<number, (value: number) => void>()
  let nextId = 1
  const client: BenchClient = {
    join: async () => {},
    publish: async () => 0,
    onMessage: () => {},
    close: () => ws.terminate()
  }
  let opened: () => void
  const ready = new Promise<void>((resolve, reject) => {
    opened = resolve
    ws.once('error', reject)
  })

  if (kind === 'socketio') {
    ws.on('message', (raw) => {
      const text = raw.toString()
      const c0 = text.charCodeAt(0)
      if (c0 === 52 && text.charCodeAt(1) === 50) { client.onMessage(text); return } // 42["message",...]
      if (c0 === 48) { ws.send('40'); return } // engine.io open: connect to namespace "/"
      if (c0 === 50) { ws.send('3'); return } // ping
      if (text.startsWith('40')) { opened(); return }
      if (text.startsWith('43')) { // ack: 43<id>[...]
        const bracket = text.indexOf('[')
        const id = Number(text.slice(2, bracket))
        const args = JSON.parse(text.slice(bracket)) as unknown[]
        pending.get(id)?.(typeof args[0] === 'number' ? args[0] : 0)
        pending.delete(id)
      }
    })
    const emit = async (args: string): Promise<number> => {
      const id = nextId++
      return await new Promise((resolve) => { pending.set(id, resolve); ws.send(`42${id}${args}`) })
    }
    client.join = async (room) => { await emit(`["join",${JSON.stringify(room)}]`) }
    client.publish = async (room, data) => await emit(`["publish",${JSON.stringify(room)},${data}]`)
  } else {
    ws.on('message', (raw) => {
      const text = raw.toString()
      if (text.startsWith('{"type":"message"')) { client.onMessage(text); return }
      const frame = JSON.parse(text) as { type: string, id?: number, offset?: number }
      if (frame.type === 'welcome') { opened(); return }
      if (frame.id !== undefined && pending.has(frame.id)) {
        pending.get(frame.id)?.(frame.offset ?? 0)
        pending.delete(frame.id)
      }
    })
    const request = async (frame: string): Promise<number> => {
      const id = nextId++
      return await new Promise((resolve) => { pending.set(id, resolve); ws.send(`${frame.slice(0, -1)},"id":${id}}`) })
    }
    client.join = async (room) => { await request(`{"type":"join","room":${JSON.stringify(room)}}`) }
    client.publish = async (room, data) => await request(`{"type":"publish","room":${JSON.stringify(room)},"data":${data}}`)
  }
  await ready
  return client
}

/** Read a number that follows `key` in a message's text, without parsing the JSON. */
export function numberAfter (text: string, key: string): number {
  const at = text.indexOf(key)
  if (at === -1) return NaN
  let end = at + key.length
  while (end < text.length) {
    const c = text.charCodeAt(end)
    if ((c < 48 || c > 57) && c !== 46) break
    end++
  }
  return Number(text.slice(at + key.length, end))
}
