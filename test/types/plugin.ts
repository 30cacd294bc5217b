// Type tests of the server entry, run by `tsc -p test/types` in `npm test`:
// every expected error below must stay an error, so a loosened type fails.
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify'
import Type, { type Static } from 'typebox'
import { connect } from '../../src/client/index.js'
import rooms, {
  errorCodes, forbidden, memoryAdapter, redisAdapter, RoomsError,
  type Adapter, type EncodedPublish, type ErrorCode, type PublishReceipt, type JoinContext, type Member, type PublishContext,
  type ConnectContext, type DisconnectContext, type LeaveContext,
  type RestPublishGuard, type RoomsApi, type RoomsOptions, type ServerFrame, type ClientFrame, type WelcomeFrame
} from '../../src/index.js'
// @ts-expect-error internals are not exported: the wire codecs stay private
import { parseClientFrame } from '../../src/index.js'
// @ts-expect-error internals are not exported: the registry stays private
import { Registry } from '../../src/index.js'

void parseClientFrame
void Registry

const app = Fastify()

await app.register(rooms)
await app.register(rooms, { path: '/ws', heartbeatMs: 30_000, demo: '/chat', adapter: memoryAdapter() })
// @ts-expect-error a number option takes no string
await app.register(rooms, { heartbeatMs: '30s' })
// @ts-expect-error path is a string
await app.register(rooms, { path: 1 })
// @ts-expect-error an unknown option is a typo
await app.register(rooms, { heartbeat: 30_000 })
// @ts-expect-error adapter is an Adapter
await app.register(rooms, { adapter: 'redis' })
await app.register(rooms, { adapter: redisAdapter({ url: 'redis://127.0.0.1:6379' }) })

// Hooks get their contexts typed.
const options: RoomsOptions = {
  authenticate: (request: FastifyRequest): Member | null => request.headers.cookie === undefined ? null : { id: 'u1', name: 'Ada' },
  verifyToken: async (token) => ({ user: { id: token, name: token }, expiresAt: Date.now() + 60_000 }),
  onJoin: ({ connectionId, user, room, request }: JoinContext) => {
    const id: string = connectionId
    const name: string = user.name
    void request.headers
    if (room.startsWith('admin:') && id !== '') throw forbidden(`${name} may not join ${room}.`)
    return true
  },
  onPublish: (ctx: PublishContext) => ctx.room === 'quiet' ? false : { data: ctx.data }
}
void options
// @ts-expect-error onJoin answers with a boolean, not a string
const badJoin: RoomsOptions = { onJoin: () => 'yes' }
// @ts-expect-error authenticate resolves with a Member: id and name are required
const badUser: RoomsOptions = { authenticate: () => ({ id: 'u1' }) }
// @ts-expect-error verifyToken resolves with { user }, not a bare member
const badToken: RoomsOptions = { verifyToken: () => ({ id: 'u1', name: 'Ada' }) }
void badJoin
void badUser
void badToken

// The REST publish guard is a preHandler.
const guard: RestPublishGuard = async (request: FastifyRequest, reply: FastifyReply) => {
  if (request.headers.authorization !== 'Bearer ops') await reply.code(401).send()
}
await app.register(rooms, { restPublish: guard })
// Inline, the guard's request is typed by the route's schema, which has run before it.
await app.register(rooms, {
  restPublish: async (request) => {
    const room: string = request.params.room
    const data: unknown = request.body.data
    // @ts-expect-error the room is a string
    const wrong: number = request.params.room
    return room !== 'ops' && data !== null && wrong !== 0
  }
})
// @ts-expect-error restPublish is a function, not a flag
await app.register(rooms, { restPublish: true })

// The server API, decorated on the instance.
const api: RoomsApi = app.rooms
const offset: number = await app.rooms.broadcast('lobby', { text: 'hi' })
const sent: boolean = await app.rooms.send('conn-1', 'hello')
const closed: number = await app.rooms.disconnectUser('u1', 'Banned.')
const count: number = app.rooms.connections
void [api, offset, sent, closed, count]
// @ts-expect-error a room name is a string
await app.rooms.broadcast(1, 'x')
// @ts-expect-error connections is read-only
app.rooms.connections = 0
// @ts-expect-error broadcast resolves with the offset, not a boolean
const wrong: boolean = await app.rooms.broadcast('lobby', 'x')
void wrong

// Errors: one exported table; codes are literal where the contract has them.
const err: unknown = new Error('x')
if (err instanceof errorCodes.FST_ROOMS_INVALID_OPTION) {
  const code: string = err.code
  const status: number | undefined = err.statusCode
  void [code, status]
}
if (err instanceof RoomsError) {
  const code: ErrorCode = err.code
  void code
}
// @ts-expect-error not a protocol error code
const notACode: ErrorCode = 'NOPE'
void notACode
// @ts-expect-error forbidden takes the sentence shown to the client
forbidden(403)

// Frames: discriminated by `type`.
function onFrame (frame: ServerFrame): number | undefined {
  if (frame.type === 'message') return frame.offset
  if (frame.type === 'welcome') return frame.heartbeatMs
  // @ts-expect-error a presence frame carries no data
  if (frame.type === 'presence') return frame.data
  return undefined
}
void onFrame
const join: ClientFrame = { type: 'join', room: 'lobby' }
void join
// @ts-expect-error a welcome has a connection id, a user, a protocol and a heartbeat
const welcome: WelcomeFrame = { type: 'welcome' }
void welcome
// @ts-expect-error no such client frame
const unknownFrame: ClientFrame = { type: 'shout', room: 'lobby' }
void unknownFrame

// A custom adapter implements the exported interface.
class LoggingAdapter implements Adapter {
  private readonly inner = memoryAdapter()
  start: Adapter['start'] = async (listener, config) => { await this.inner.start(listener, config) }
  close: Adapter['close'] = async () => { await this.inner.close() }
  publish = async (room: string, message: EncodedPublish): Promise<number | undefined> => await this.inner.publish(room, message)
  join: Adapter['join'] = async (...args) => await this.inner.join(...args)
  leave: Adapter['leave'] = async (...args) => { await this.inner.leave(...args) }
  control: Adapter['control'] = async (command) => await this.inner.control(command)
  direct: Adapter['direct'] = async (...args) => await this.inner.direct(...args)
  room: Adapter['room'] = async (room, members) => await this.inner.room(room, members)
  rooms: Adapter['rooms'] = async (query) => await this.inner.rooms(query)
  history: Adapter['history'] = async (...args) => await this.inner.history(...args)
  // Optional: answered through a receipt rather than a promise.
  publishTo = (room: string, message: EncodedPublish, receipt: PublishReceipt): void => {
    this.inner.publish(room, message).then((offset) => { receipt.published(offset) }, (err: Error) => { receipt.failed(err) })
  }
}
await app.register(rooms, { adapter: new LoggingAdapter() })
// @ts-expect-error a receipt answers with an offset or an error, nothing else
const wrongReceipt: PublishReceipt = { published: (offset: string) => { void offset }, failed: () => {} }
void wrongReceipt
// @ts-expect-error an adapter needs every method of the interface
const halfAdapter: Adapter = { start: async () => {}, close: async () => {} }
void halfAdapter

// Typed data from the schema, with no global declaration: options passed inline
// to app.register get `data` from `dataSchema` and `user` from `authenticate`.
const Chat = Type.Object({ text: Type.String() })
type Chat = Static<typeof Chat>
interface StaffUser { id: string, name: string, role: 'admin' | 'agent' }
await app.register(rooms, {
  dataSchema: Chat,
  authenticate: (): StaffUser => ({ id: 'u1', name: 'Ada', role: 'admin' }),
  onJoin: ({ user }) => user.role === 'admin',
  onPublish: ({ data, user }) => {
    const text: string = data.text
    const role: 'admin' | 'agent' = user.role
    // @ts-expect-error data is { text: string }: no such field
    void data.body
    void [text, role]
    return { data: { text: text.trim() } }
  },
  onConnect: ({ connectionId, user, request }) => { void [connectionId, user.role, request.headers] },
  onDisconnect: ({ code, reason, user }) => { const c: number = code; const r: string = reason; void [c, r, user.role] },
  onLeave: ({ room, cause, user }) => {
    const why: 'leave' | 'removed' | 'closed' = cause
    void [room, why, user.role]
    // @ts-expect-error not a leave cause
    if (cause === 'kicked') void 0
  }
})
await app.register(rooms, {
  dataSchema: Chat,
  // @ts-expect-error onPublish must return data of the schema's type
  onPublish: () => ({ data: { text: 1 } })
})
await app.register(rooms, {
  dataSchema: Chat,
  // @ts-expect-error the schema says text is a string
  onPublish: ({ data }) => { const n: number = data.text; void n }
})
await app.register(rooms, {
  verifyToken: async () => ({ user: { id: 'u1', name: 'Ada', role: 'agent' as const } }),
  onLeave: ({ user }) => { const role: 'agent' = user.role; void role }
})
// Without a schema (and without RoomsRegister) data is unknown.
await app.register(rooms, {
  onPublish: ({ data }) => {
    // @ts-expect-error unknown until narrowed
    void data.text
  }
})
// Hook contexts are exported for hooks written apart from the options.
const onLeave = (ctx: LeaveContext<StaffUser>): void => { void ctx.user.role }
const onDisconnect = (ctx: DisconnectContext): void => { void ctx.code }
const onConnect = (ctx: ConnectContext): void => { void ctx.request }
const typedOptions: RoomsOptions<Chat, StaffUser> = { onLeave, onDisconnect, onConnect, onPublish: ({ data }) => ({ data: { text: data.text } }) }
void typedOptions
// @ts-expect-error onLeave is told a LeaveContext, not a number
const badLeave: RoomsOptions = { onLeave: (n: number) => n }
void badLeave

// The typed view of the server API: broadcast takes the schema's type.
const chat: RoomsApi<Chat> = app.rooms
await chat.broadcast('lobby', { text: 'typed' })
// @ts-expect-error the schema says text is a string
await chat.broadcast('lobby', { text: 1 })
const placed: boolean = await app.rooms.join('conn-1', 'lobby')
const removed: boolean = await app.rooms.leave('conn-1', 'lobby')
const reached: number = await app.rooms.sendToUser('u1', { any: 'json' })
void [placed, removed, reached]
// @ts-expect-error join resolves with a boolean, not a count
const joinedCount: number = await app.rooms.join('conn-1', 'lobby')
// @ts-expect-error sendToUser takes a user id
await app.rooms.sendToUser({ id: 'u1' }, 'x')
void joinedCount

// The SDK: connect<Static<typeof Schema>> types message data and publish.
const client = await connect<Chat>('ws://localhost:3000/ws')
const lobby = await client.join('lobby')
lobby.on('message', (message) => { const text: string = message.data.text; void text })
await lobby.publish({ text: 'hi' })
// @ts-expect-error publish takes the schema's type
await lobby.publish({ body: 'hi' })

// History over the socket and rooms the server put the client in carry the schema's type too.
const older = await lobby.history({ limit: 10 })
for (const message of older.messages) { const text: string = message.data.text; const offset: number = message.offset; void text; void offset }
// @ts-expect-error history pages by limit and before, not by a page number
await lobby.history({ page: 2 })
client.on('joined', (room) => { room.on('message', (message) => { const text: string = message.data.text; void text }) })
// An ephemeral publish resolves without an offset.
const none: undefined = await lobby.publish({ text: 'typing' }, { ephemeral: true })
void none
// @ts-expect-error an ephemeral publish has no offset to give
const noOffset: number = await lobby.publish({ text: 'typing' }, { ephemeral: true })
void noOffset
