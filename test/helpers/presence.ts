import type { Frame, TestSocket } from './socket.js'

/**
 * A member's first presence diff after its own join (of `room`, or of any
 * room), with that join taken out when the diff names it. The member's node
 * batches the member's own join like any other change, and on Redis it hears
 * it back on its subscription, which can lag behind `joined`: the next change
 * can then share that diff. Such a diff is right (applied as a set, the own
 * join changes nothing) and the member gets it, being newer than its `joined`;
 * alone, the own join is no newer and the member gets nothing. When the member
 * is its node's first in the room, no socket can show that the node sent the
 * own join alone, so a test whose point is not that grouping takes either.
 * Like `next`, it fails at once if the socket closes.
 */
export async function firstDiff (socket: TestSocket, room?: string): Promise<Frame> {
  const diff = await socket.next((f) => f.type === 'presence' && (room === undefined || f.room === room), `a presence diff${room === undefined ? '' : ` of ${room}`}`)
  const self = socket.welcome.user.id
  return { ...diff, joins: diff.joins.filter((m: { id: string }) => m.id !== self) }
}
