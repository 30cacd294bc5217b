import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import Type from 'typebox'
import { Compile } from 'typebox/compile'
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import fastifyStatic from '@fastify/static'
import { errorCodes } from './errors.js'
import { AdminStats, Rates } from './admin-stats.js'
import type { Metrics } from './metrics.js'
import { describeErrors, type Member } from './protocol.js'
import { HttpError, answerErrors, type RestAccess } from './routes.js'

/**
 * Decides who is an admin: called like a Fastify preHandler, with the user the
 * request's credentials named as well (undefined when the app configured no
 * authentication). Return `true` to let the request in; anything else refuses
 * with 403 `FORBIDDEN`, and throwing or replying refuses with your own answer.
 */
export type AdminGuard = (request: FastifyRequest, reply: FastifyReply, user: Member | undefined) => boolean | Promise<boolean>

/** The `admin` option as an object; `admin: true` is `{}`. */
export interface AdminOptions {
  /** Where the admin page and its stats are served; default `'/rooms-admin'`. */
  path?: string
  /** Who may open the admin view; required when `authenticate` or `verifyToken` is configured. */
  preHandler?: AdminGuard
}

export interface ResolvedAdminOptions {
  path: string
  preHandler: AdminGuard | undefined
}

const AdminSettings = Type.Object({ path: Type.String({ pattern: '^/(.*[^/])?$', default: '/rooms-admin' }) })
const settingsValidator = Compile(AdminSettings)

const NEEDS_GUARD = 'admin needs a preHandler deciding who is an admin when authenticate or verifyToken is configured: credentials alone would show every room and member to every signed-in user.'
const NEEDS_REST = 'admin needs the REST routes (rest: true): the admin page lists rooms and members through them.'
const NEEDS_ROOM_LIST = 'admin needs the live room list (roomList not false): the admin page watches the rooms through it.'
const NOT_ADMIN = 'Only admins may open the fastify-rooms admin view.'

/**
 * Check the `admin` option; undefined when the view is off. With
 * authentication configured an admin guard is required: failing closed at
 * registration beats an admin view every user can open.
 */
export function resolveAdminOptions (input: unknown, { authenticated, rest, roomList }: { authenticated: boolean, rest: boolean, roomList: boolean }): ResolvedAdminOptions | undefined {
  if (input === undefined || input === false) return undefined
  if (input !== true && (input === null || typeof input !== 'object')) {
    throw new errorCodes.FST_ROOMS_INVALID_OPTION('admin must be true, false or an object.')
  }
  const { preHandler, ...plain } = input === true ? {} : input as AdminOptions
  const settings = settingsValidator.Default(structuredClone(plain))
  if (!settingsValidator.Check(settings)) {
    throw new errorCodes.FST_ROOMS_INVALID_OPTION(`${describeErrors(settingsValidator.Errors(settings), 'admin')}.`)
  }
  if (preHandler !== undefined && typeof preHandler !== 'function') {
    throw new errorCodes.FST_ROOMS_INVALID_OPTION('admin.preHandler must be a function.')
  }
  if (preHandler === undefined && authenticated) throw new errorCodes.FST_ROOMS_INVALID_OPTION(NEEDS_GUARD)
  if (!rest) throw new errorCodes.FST_ROOMS_INVALID_OPTION(NEEDS_REST)
  if (!roomList) throw new errorCodes.FST_ROOMS_INVALID_OPTION(NEEDS_ROOM_LIST)
  return { path: settings.path, preHandler }
}

export interface AdminPluginOptions {
  guard: AdminGuard | undefined
  /** The credentials REST asks for; absent when the app configured no authentication. */
  access: RestAccess | undefined
  /**
   * Only `verifyToken` is configured: a browser cannot send a Bearer header
   * when it loads a page, so the page shell (no data in it) is served without
   * credentials and asks for a token; everything with data stays guarded.
   */
  tokenOnly: boolean
  /** The plugin's counters (the metrics' tallies, counting whether or not metrics are served). */
  counters: Metrics
  connections: () => number
  localCounts: () => { rooms: number, members: number }
  /** What the page talks to. */
  wsPath: string
  restPrefix: string
}

const publicDir = new URL('../public/', import.meta.url)
const clientDir = fileURLToPath(new URL('../dist/client/', import.meta.url))

/**
 * The admin view: a page, the browser SDK it runs on, its config and a stats
 * route, all behind one guard: the credentials REST asks for, then the app's
 * admin guard, before anything else runs (with tokens only, the page's own
 * files excepted: see `tokenOnly`).
 */
export const admin: FastifyPluginAsync<AdminPluginOptions> = async (app, options) => {
  const { guard, access, counters } = options
  if (!existsSync(clientDir)) {
    throw new Error(`fastify-rooms: the admin view needs the built client SDK in ${clientDir}: run "npm run build".`)
  }
  const files = Object.fromEntries(['admin.html', 'admin.js', 'style.css'].map((name) => [name, readFileSync(new URL(name, publicDir), 'utf8')]))
  const rates = new Rates(() => ({
    published: counters.published,
    delivered: counters.delivered,
    framesReceived: counters.framesReceived,
    framesSent: counters.framesSent
  }))
  app.addHook('onClose', async () => { rates.stop() })
  app.setErrorHandler(answerErrors('an admin request'))
  const shell = new Set(['', '/', '/admin.js', '/style.css'].map((url) => app.prefix + url))
  const isShell = (request: FastifyRequest): boolean => {
    const url = request.routeOptions.url ?? ''
    return (request.method === 'GET' || request.method === 'HEAD') && (shell.has(url) || url.startsWith(`${app.prefix}/client/`))
  }
  let warned = false
  app.addHook('onRequest', async (request, reply) => {
    if (options.tokenOnly && isShell(request)) return
    const user = access === undefined ? undefined : await access.identify(request, reply)
    if (guard === undefined) return
    const verdict = await guard(request, reply, user)
    if (reply.sent) return reply
    // Fail closed: `user?.isAdmin` is undefined for a user without the flag, not false.
    if (verdict === true) return
    if (verdict === undefined && !warned) {
      warned = true
      request.log.warn('fastify-rooms: admin.preHandler returned nothing, which refuses the request: return true to let an admin in.')
    }
    throw new errorCodes.FORBIDDEN(NOT_ADMIN)
  })

  app.get('/', async (request, reply) => {
    // The page's links are relative: without the slash they would miss the admin path.
    const path = request.url.split('?')[0] as string
    if (!path.endsWith('/')) return await reply.redirect(`${path}/`)
    return await reply.type('text/html; charset=utf-8').send(files['admin.html'])
  })
  app.get('/admin.js', async (_request, reply) => await reply.type('text/javascript; charset=utf-8').send(files['admin.js']))
  app.get('/style.css', async (_request, reply) => await reply.type('text/css; charset=utf-8').send(files['style.css']))
  app.get('/config.json', async () => ({ path: options.wsPath, prefix: options.restPrefix }))
  app.get('/stats', {
    schema: { response: { 200: AdminStats, 401: HttpError, 403: HttpError } }
  }, async () => ({ connections: options.connections(), ...options.localCounts(), ...rates.current() }))
  await app.register(fastifyStatic, { root: clientDir, prefix: '/client/', decorateReply: false })
}

