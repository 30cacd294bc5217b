import t from 'tap'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'

const authenticate = (): { id: string, name: string } => ({ id: 'u-ada', name: 'ada' })

t.test('with authenticate and no allowedOrigins, only same-origin pages (or clients sending no Origin) may connect', async (t) => {
  const { wsUrl, url } = await startApp(t, { authenticate })
  const same = await TestSocket.open(wsUrl, { origin: url })
  const none = await TestSocket.open(wsUrl)
  t.teardown(() => Promise.all([same.close(), none.close()]))
  for (const origin of ['http://evil.example', 'null', url.replace('127.0.0.1', 'localhost'), url.replace(/:\d+$/, ':1')]) {
    const refused = await TestSocket.refused(wsUrl, { origin })
    t.equal(refused.status, 403, origin)
    t.match(refused.body, { code: 'ORIGIN_NOT_ALLOWED' })
  }
})

t.test('same origin is judged by the host the client asked for: X-Forwarded-Host behind a trusted proxy', async (t) => {
  const { wsUrl } = await startApp(t, { authenticate }, undefined, { trustProxy: true })
  const proxied = await TestSocket.open(wsUrl, { origin: 'https://chat.example.com', headers: { 'x-forwarded-host': 'chat.example.com' } })
  t.teardown(() => proxied.close())
  t.equal((await TestSocket.refused(wsUrl, { origin: 'https://evil.example', headers: { 'x-forwarded-host': 'chat.example.com' } })).status, 403)
})

t.test('allowedOrigins, when set, decides alone', async (t) => {
  const { wsUrl } = await startApp(t, { authenticate, allowedOrigins: ['https://app.example.com'] })
  const listed = await TestSocket.open(wsUrl, { origin: 'https://app.example.com' })
  t.teardown(() => listed.close())
  t.equal((await TestSocket.refused(wsUrl, { origin: 'https://other.example.com' })).status, 403)
})

t.test('with allowedOrigins, a page learns why its upgrade was refused: the plain GET it repeats it with (a same-origin fetch sends no Origin) gets the real reason', async (t) => {
  const { url } = await startApp(t, { allowedOrigins: ['https://app.example.com'] })
  // What the demo page does after a refused upgrade, as a browser sends it: no Origin on a same-origin GET.
  const res = await fetch(`${url}/ws?name=${encodeURIComponent('x'.repeat(40))}`, { headers: { accept: 'application/json' } })
  t.equal(res.status, 400)
  t.match(await res.json(), { code: 'INVALID_NAME', message: /1-32 printable characters/ })
  const other = await fetch(`${url}/ws?name=ada`, { headers: { origin: 'https://other.example.com' } })
  t.equal(other.status, 403, 'a page of another origin is still refused')
})

t.test('token auth and anonymous servers take any origin: no ambient credentials ride along', async (t) => {
  const tokens = await startApp(t, { verifyToken: () => ({ user: { id: 'u-ada', name: 'ada' } }) })
  const viaToken = await TestSocket.connect(tokens.wsUrl, { origin: 'https://elsewhere.example' })
  t.teardown(() => viaToken.close())
  await viaToken.authenticate('tok')
  const open = await startApp(t)
  const anonymous = await TestSocket.open(open.wsUrl, { origin: 'https://elsewhere.example' })
  t.teardown(() => anonymous.close())
})
