import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import rooms, { type RoomsOptions } from '../src/index.js'

/** The page's relative URLs resolve against where the browser ends up: follow the redirect as a browser would. */
async function load (app: FastifyInstance, url: string): Promise<{ status: number, at: string, body: string, redirects: number }> {
  let at = new URL(url, 'http://localhost')
  for (let redirects = 0; redirects < 3; redirects++) {
    const res = await app.inject(at.pathname + at.search)
    if (res.statusCode < 300 || res.statusCode >= 400) return { status: res.statusCode, at: at.pathname + at.search, body: res.body, redirects }
    at = new URL(String(res.headers.location), at)
  }
  throw new Error(`${url}: more than 2 redirects`)
}

async function demoApp (t: Test, demo: RoomsOptions['demo'], prefix?: string, fastify: FastifyServerOptions = {}): Promise<FastifyInstance> {
  const app = Fastify(fastify)
  t.teardown(async () => await app.close())
  if (prefix === undefined) await app.register(rooms, { demo, rest: false })
  else await app.register(async (scope) => { await scope.register(rooms, { demo, rest: false }) }, { prefix })
  await app.ready()
  return app
}

const cases: Array<{ demo: RoomsOptions['demo'], prefix?: string, at: string }> = [
  { demo: '/chat', at: '/chat' },
  { demo: '/chat/', at: '/chat' },
  { demo: '/a/chat', at: '/a/chat' },
  { demo: '/chat', prefix: '/p', at: '/p/chat' },
  { demo: true, prefix: '/p', at: '/p' }
]

for (const { demo, prefix, at } of cases) {
  t.test(`demo: ${JSON.stringify(demo)}${prefix === undefined ? '' : ` under the prefix ${prefix}`}: ${at} redirects to ${at}/, which serves the page`, async (t) => {
    const app = await demoApp(t, demo, prefix)
    const bare = await app.inject(at)
    t.equal(bare.statusCode, 301, `${at} redirects`)
    t.equal(bare.headers.location, `${at.slice(at.lastIndexOf('/') + 1)}/`, 'to the same path with a slash, relative (right behind a proxy that strips a prefix)')
    const page = await load(app, at)
    t.equal(page.at, `${at}/`)
    t.equal(page.status, 200)
    t.match(page.body, /<title>fastify-rooms demo<\/title>/)
    // What the page then fetches, relative to where it ended up.
    for (const file of ['config.json', 'app.js', 'style.css', 'client/index.js']) {
      t.equal((await app.inject(new URL(file, `http://localhost${page.at}`).pathname)).statusCode, 200, file)
    }
    t.equal((await app.inject(`${at}/`)).statusCode, 200, 'the slash URL is served as before, with no redirect')
    const query = await load(app, `${at}?room=kitchen`)
    t.equal(query.at, `${at}/?room=kitchen`, 'the query (`?room=`) is kept')
    t.equal(query.status, 200)
    t.equal((await app.inject({ method: 'HEAD', url: at })).statusCode, 301, 'HEAD too')
  })
}

t.test('demo: true at the root serves / with no redirect, as before', async (t) => {
  for (const demo of [true, '/'] as const) {
    const app = await demoApp(t, demo)
    const res = await app.inject('/')
    t.equal(res.statusCode, 200, `demo: ${JSON.stringify(demo)}`)
    t.match(res.body, /<title>fastify-rooms demo<\/title>/)
    t.equal((await app.inject('/config.json')).statusCode, 200)
  }
})

t.test('with ignoreTrailingSlash the registration still works and /chat still ends up on the page', async (t) => {
  for (const fastify of [{ ignoreTrailingSlash: true }, { routerOptions: { ignoreTrailingSlash: true } }] as FastifyServerOptions[]) {
    const app = await demoApp(t, '/chat', undefined, fastify)
    const page = await load(app, '/chat')
    t.equal(page.status, 200, JSON.stringify(fastify))
    t.match(page.body, /<title>fastify-rooms demo<\/title>/)
  }
})
