import { createReadStream, existsSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FastifyPluginAsync } from 'fastify'
import fastifyStatic from '@fastify/static'

/** The demo page's files, and the browser build of the client SDK. */
const publicDir = fileURLToPath(new URL('../public/', import.meta.url))
// From src/ (tsx) and from dist/ alike, ../dist/client is the compiled SDK.
const clientDir = fileURLToPath(new URL('../dist/client/', import.meta.url))

/** What the demo page is made of: the rest of public/ is not its to serve. */
const DEMO_FILES = new Set(['/', '/index.html', '/app.js', '/style.css'])

export interface PageOptions {
  /** WebSocket path and REST prefix the page should talk to. */
  path: string
  restPrefix: string | false
}

/**
 * Serve the demo chat page, the browser SDK under `client/` beside it, and
 * `config.json` telling the page where the socket and the REST API are.
 */
export const page: FastifyPluginAsync<PageOptions> = async (app, { path, restPrefix }) => {
  if (!existsSync(clientDir)) {
    throw new Error(`fastify-rooms: the demo needs the built client SDK in ${clientDir}: run "npm run build".`)
  }
  // public/ holds the admin view's files too: those are served only by the admin view, behind its guard.
  await app.register(fastifyStatic, { root: publicDir, decorateReply: false, index: 'index.html', wildcard: true, allowedPath: (file) => DEMO_FILES.has(file) })
  if (app.prefix !== '') {
    // The page's URLs are relative (config.json, client/index.js): it must be loaded under the trailing slash, so
    // `/chat` redirects there. The location is relative (`chat/`), right behind a proxy that strips a path prefix too,
    // and keeps the query (`?room=`).
    const last = app.prefix.slice(app.prefix.lastIndexOf('/') + 1)
    app.get('/', { prefixTrailingSlash: 'no-slash' }, async (request, reply) => {
      const query = request.url.indexOf('?')
      const pathname = query === -1 ? request.url : request.url.slice(0, query)
      // A router that ignores trailing slashes brings `/chat/` here too: that one is the page.
      if (pathname.endsWith('/')) return await reply.type('text/html; charset=utf-8').send(createReadStream(join(publicDir, 'index.html')))
      return await reply.redirect(`${last}/${query === -1 ? '' : request.url.slice(query)}`, 301)
    })
  }
  await app.register(fastifyStatic, { root: clientDir, prefix: '/client/', decorateReply: false })
  app.get('/config.json', async () => ({ path, prefix: restPrefix }))
}
