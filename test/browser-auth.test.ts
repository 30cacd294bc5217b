import t from 'tap'
import { mkdirSync, readFileSync } from 'node:fs'
import WebSocket from 'ws'
import type { Page } from 'playwright-core'
import { UNAUTHORIZED_REASONS } from '../src/index.js'
import { connect, type RoomMessage } from '../src/client/index.js'
import { CHROMIUM, launchChromium } from './helpers/browser.js'
import { needs } from './helpers/needs.js'
import { nextEvent } from './helpers/client.js'
import { BOB, startTokenApp, token, type TokenApp } from './fixtures/token-auth.js'

const skip = needs(CHROMIUM, 'apt-get install -y chromium')
const output = new URL('./output/', import.meta.url)
const fixture = readFileSync(new URL('./fixtures/auth-page.html', import.meta.url), 'utf8')
/** Lifetime of the tokens /token hands out: the page refreshes 100 ms before the end. */
const TOKEN_MS = 1000

/**
 * The plugin with verifyToken and the demo on (so it serves the built SDK at
 * /client/index.js), the fixture page at /auth-page, and /token?as=NAME
 * handing out a token for u-NAME ("nobody" gets one that is refused).
 */
async function authApp (t: Parameters<typeof startTokenApp>[0]): Promise<TokenApp> {
  return await startTokenApp(t, { demo: true }, (app) => {
    app.get('/auth-page', async (_request, reply) => await reply.type('text/html').send(fixture))
    app.get('/token', async (request) => {
      const as = (request.query as { as?: string }).as ?? ''
      return as === 'nobody' ? 'revoked' : token(`u-${as}`, Date.now() + TOKEN_MS)
    })
  })
}

async function text (page: Page, selector: string): Promise<string> {
  return (await page.textContent(selector)) ?? ''
}

t.test('in Chromium: getToken authenticates in band, the page joins and publishes, refreshes in place, and shows a 4003 reason', { skip }, async (t) => {
  const started = await authApp(t)
  const bob = await connect(started.wsUrl, { WebSocket, getToken: () => token(BOB.id) })
  t.teardown(() => bob.close())
  const lobby = await bob.join('lobby')
  const heard = nextEvent<RoomMessage>((h) => lobby.on('message', h), undefined, { client: bob, room: lobby, what: "the page's message in the lobby", ms: 60_000 }).then((m) => [m.from?.name, m.data])
  const browser = await launchChromium()
  t.teardown(async () => await browser.close())
  const page = await browser.newPage()
  const errors: string[] = []
  page.on('pageerror', (err) => errors.push(err.message))

  await page.goto(`${started.url}/auth-page?as=ada`)
  await page.waitForSelector('#published:text-is("1")')
  t.equal(await text(page, '#state'), 'open')
  t.equal(await text(page, '#user'), 'ada', 'the user of the token')
  t.same(await heard, ['ada', { text: 'hello from Chromium' }], 'the Node client got the page\'s message')
  await page.waitForSelector('#messages li:text-is("ada: hello from Chromium")')

  const connectionId = await text(page, '#connection')
  await page.waitForSelector('#refreshes:text-is("1")')
  t.equal(await text(page, '#connection'), connectionId, 'refreshed in place: the same connection')
  t.equal(await text(page, '#calls'), '2', 'getToken: connect and refresh')
  t.equal(await text(page, '#state'), 'open')
  mkdirSync(output, { recursive: true })
  await page.screenshot({ path: new URL('auth-open.png', output).pathname })

  // Another refresh may have come meanwhile; none may come after the 4003.
  const calls = await text(page, '#calls')
  t.equal(await started.app.rooms.disconnect(connectionId, 'Removed by a moderator.'), true)
  await page.waitForSelector('#reason:text-is("You were disconnected: Removed by a moderator.")')
  t.equal(await text(page, '#close'), '4003', 'the code, from the browser\'s CloseEvent')
  await page.screenshot({ path: new URL('auth-disconnected.png', output).pathname })
  t.equal(await page.evaluate(async () => (await fetch('/auth-page')).status), 200)
  t.equal(await text(page, '#calls'), calls, 'no token asked after a 4003')

  t.equal(started.upgrades.length, 2, 'bob and the page, once each')
  t.same(started.upgrades, ['/ws', '/ws'], 'no token in any upgrade URL')
  t.same(errors, [], 'no errors in the page')
})

t.test('in Chromium: a refused token shows the server\'s reason in the page after one retry', { skip }, async (t) => {
  const started = await authApp(t)
  const browser = await launchChromium()
  t.teardown(async () => await browser.close())
  const page = await browser.newPage()
  const errors: string[] = []
  page.on('pageerror', (err) => errors.push(err.message))

  await page.goto(`${started.url}/auth-page?as=nobody`)
  await page.waitForSelector('#reason:not(:empty)')
  t.equal(await text(page, '#reason'), `You were disconnected: ${UNAUTHORIZED_REASONS.badToken}`)
  t.equal(await text(page, '#close'), '4001')
  t.equal(await page.getAttribute('#close', 'data-error'), 'UNAUTHORIZED')
  // A round trip from the page through the server: the turns a looping client would have tried again in.
  t.equal(await page.evaluate(async () => (await fetch('/auth-page')).status), 200)
  t.equal(await text(page, '#calls'), '2', 'getToken: the first call and one more')
  t.same(started.upgrades, ['/ws', '/ws'], 'two upgrades, no token in their URLs')
  mkdirSync(output, { recursive: true })
  await page.screenshot({ path: new URL('auth-refused.png', output).pathname })
  t.same(errors, [], 'no errors in the page')
})
