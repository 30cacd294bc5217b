/**
 * The strongest plain ws baseline: the work fastify-rooms does, with the same
 * tricks and nothing else. Every outgoing frame is framed once (one Buffer for
 * all members of a broadcast) and written to the raw socket, corked at the
 * first write in a turn of the event loop and uncorked once (setImmediate), as
 * fastify-rooms' src/frame.ts does. A `join` gets `joined` with the count and
 * the first page (at most 100) of members; the room's members get the joins and
 * leaves as one `presence` diff per room at most every presence interval.
 * Written standalone, so that a change in src/ never changes the baseline.
 */
import { randomBytes, randomFillSync } from 'node:crypto'
import type { Socket } from 'node:net'
import type { WebSocket } from 'ws'

const PAGE = 100

/** A complete unmasked text frame around `payload` (RFC 6455 5.2), built once per broadcast. */
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

const ids = Buffer.allocUnsafeSlow(256 * 12)
let pooled = 0
/** Where the next user id's 12 random bytes start in `ids`. */
function freshId (): number {
  if (pooled === 0) randomFillSync(ids)
  const at = pooled * 12
  pooled = (pooled + 1) % 256
  return at
}

const corked: Socket[] = []
let flushScheduled = false
function flush (): void {
  flushScheduled = false
  for (const socket of corked) socket.uncork()
  corked.length = 0
}

/** Write to a socket, corked at the first write in this turn and uncorked once for all sockets. */
export function writeCoalesced (socket: Socket, bytes: Buffer): void {
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

const rawSocket = (ws: WebSocket): Socket => (ws as unknown as { _socket: Socket })._socket

interface Room {
  /** Member JSON (`{"id":..,"name":..}`) by connection, in join order: the first page is the first 100. */
  members: Map<WebSocket, string>
  offset: number
  joins: string[]
  leaves: string[]
  timer: NodeJS.Timeout | undefined
}

/**
 * The connection handler of the coalescing baseline, with presence diffs every `presenceIntervalMs`.
 * @param withFrom put the publisher's member JSON in each message as `from`, as fastify-rooms does
 *   (the `ws-coalesced-from` kind): what that part of the contract costs the baseline
 */
export function coalescedServer (presenceIntervalMs: number, withFrom = false): (ws: WebSocket) => void {
  const rooms = new Map<string, Room>()

  const send = (ws: WebSocket, text: string): void => { writeCoalesced(rawSocket(ws), textFrame(Buffer.from(text))) }
  const broadcast = (room: Room, text: string): void => {
    const frame = textFrame(Buffer.from(text))
    for (const member of room.members.keys()) writeCoalesced(rawSocket(member), frame)
  }
  const flushPresence = (name: string, room: Room): void => {
    room.timer = undefined
    if (room.joins.length === 0 && room.leaves.length === 0) return
    broadcast(room, `{"type":"presence","room":"${name}","joins":[${room.joins.join(',')}],"leaves":[${room.leaves.join(',')}],"count":${room.members.size}}`)
    room.joins = []
    room.leaves = []
    if (room.members.size === 0) rooms.delete(name)
  }
  const schedule = (name: string, room: Room): void => {
    if (room.timer !== undefined) return
    // A full interval from the first change after a diff, as fastify-rooms' registry does. Counted from the
    // diff's start instead, a diff that takes longer than the interval to write (10,000 members in a join
    // storm) was followed at once by the next one: the server did nothing but write diffs and accepted
    // some 20 connections a second, so the storm took minutes.
    room.timer = setTimeout(flushPresence, presenceIntervalMs, name, room)
  }

  // Per server, as fastify-rooms' connection ids are per registration.
  const nodeId = randomBytes(4).toString('hex')
  let connections = 0
  return (ws) => {
    // Ids made as fastify-rooms makes them: a user id of 16 base64url characters from random bytes drawn
    // 256 ids at a time, a connection id of the server's random prefix and a counter. (Its `welcome` has
    // no resume token, which fastify-rooms signs for each anonymous user: about 80 bytes and an HMAC.)
    const at = freshId()
    // JSON.stringify makes a flat string, as fastify-rooms' member JSON is (a template would leave a tree of pieces).
    const member = JSON.stringify({ id: ids.toString('base64url', at, at + 12), name: `guest-${ids.toString('hex', at, at + 2)}` })
    const from = withFrom ? `,"from":${member}` : ''
    const mine = new Set<string>()
    send(ws, `{"type":"welcome","connectionId":"${nodeId}-${(++connections).toString(36)}","user":${member},"protocol":2,"heartbeatMs":60000}`)
    ws.on('message', (raw) => {
      const frame = JSON.parse(raw.toString()) as { type: string, room: string, id?: number, data?: unknown }
      const id = frame.id === undefined ? '' : `,"id":${frame.id}`
      if (frame.type === 'join') {
        let room = rooms.get(frame.room)
        if (room === undefined) rooms.set(frame.room, room = { members: new Map(), offset: 0, joins: [], leaves: [], timer: undefined })
        if (!room.members.has(ws)) {
          room.members.set(ws, member)
          mine.add(frame.room)
          room.joins.push(member)
          schedule(frame.room, room)
        }
        const page: string[] = []
        let next = 'null'
        for (const m of room.members.values()) {
          if (page.length === PAGE) { next = m.slice(6, m.indexOf('"', 7) + 1); break }
          page.push(m)
        }
        send(ws, `{"type":"joined","room":"${frame.room}","count":${room.members.size},"members":[${page.join(',')}],"membersNext":${next},"offset":${room.offset},"epoch":""${id}}`)
      } else if (frame.type === 'publish') {
        const room = rooms.get(frame.room)
        if (room === undefined || !room.members.has(ws)) {
          send(ws, `{"type":"error","code":"NOT_IN_ROOM","message":"join first"${id}}`)
          return
        }
        const offset = ++room.offset
        broadcast(room, `{"type":"message","room":"${frame.room}","data":${JSON.stringify(frame.data)},"offset":${offset},"ts":${Date.now()}${from}}`)
        send(ws, `{"type":"ack"${id},"room":"${frame.room}","offset":${offset}}`)
      }
    })
    ws.on('close', () => {
      for (const name of mine) {
        const room = rooms.get(name)
        if (room === undefined) continue
        room.members.delete(ws)
        room.leaves.push(member)
        schedule(name, room)
      }
    })
  }
}
