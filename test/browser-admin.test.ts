import t from 'tap'
import { mkdirSync } from 'node:fs'
import type { Page } from 'playwright-core'
import { CHROMIUM, launchChromium } from './helpers/browser.js'
import { needs } from './helpers/needs.js'
import { startApp } from './helpers/server.js'
import { TestSocket } from './helpers/socket.js'

const skip = needs(CHROMIUM, 'apt-get install -y chromium')
const output = new URL('./output/', import.meta.url)

async function shoot (page: Page, name: string): Promise<void> {
  mkdirSync(output, { recursive: true })
  await page.screenshot({ path: new URL(name, output).pathname, fullPage: true })
}

const countOf = (room: string, count: number): string => `#rooms tr[data-room="${room}"] td.count:text-is("${count}")`

t.test('the admin page shows a room, its count as clients join, its members and the message rates', { skip }, async (t) => {
  const { url, wsUrl } = await startApp(t, { admin: true, roomListIntervalMs: 50 })
  const browser = await launchChromium()
  t.teardown(async () => await browser.close())
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  t.teardown(async () => await context.close())
  const page = await context.newPage()
  const errors: string[] = []
  page.on('pageerror', (err) => errors.push(err.message))

  await page.goto(`${url}/rooms-admin`)
  await page.waitForSelector('#state:text-is("open")')
  await page.waitForSelector('#no-rooms:visible')

  const ada = await TestSocket.open(`${wsUrl}?name=ada`)
  t.teardown(async () => await ada.close())
  await ada.join('lobby')
  await page.waitForSelector(countOf('lobby', 1))
  await page.click('#rooms tr[data-room="lobby"] button')
  await page.waitForSelector('#members li:has-text("ada")')

  const bob = await TestSocket.open(`${wsUrl}?name=bob`)
  t.teardown(async () => await bob.close())
  await bob.join('lobby')
  await page.waitForSelector(countOf('lobby', 2))
  // The selected room's members follow its count.
  await page.waitForSelector('#members li:has-text("bob")')
  t.equal(await page.locator('#members li').count(), 2)

  await ada.request({ type: 'publish', room: 'lobby', data: { text: 'hi' } })
  await page.waitForSelector('#total-published:text-is("1")')
  t.not(await page.textContent('#rate-published'), '0.0', 'the publish shows in the rate')
  await shoot(page, 'admin-desktop.png')

  await bob.close()
  await page.waitForSelector(countOf('lobby', 1))
  await page.waitForFunction(() => document.querySelectorAll('#members li').length === 1)
  await ada.close()
  await page.waitForSelector('#rooms tr[data-room="lobby"]', { state: 'detached' })
  await page.waitForSelector('#members-hint:text("Nobody is in this room")')
  t.same(errors, [], 'no page errors')
})

t.test('with a session cookie: an admin opens the page through the REST credentials and the admin guard; a user gets 403', { skip }, async (t) => {
  const users: Record<string, { id: string, name: string, admin: boolean }> = {
    'session=root': { id: 'u-root', name: 'root', admin: true },
    'session=bob': { id: 'u-bob', name: 'bob', admin: false }
  }
  const { url, wsUrl } = await startApp(t, {
    authenticate: (request) => users[String(request.headers.cookie)],
    admin: { preHandler: (_request, _reply, user) => (user as { admin?: boolean } | undefined)?.admin === true }
  })
  const browser = await launchChromium()
  t.teardown(async () => await browser.close())
  const host = new URL(url).hostname
  const bobContext = await browser.newContext()
  t.teardown(async () => await bobContext.close())
  await bobContext.addCookies([{ name: 'session', value: 'bob', domain: host, path: '/' }])
  const refused = await (await bobContext.newPage()).goto(`${url}/rooms-admin/`)
  t.equal(refused?.status(), 403)

  const context = await browser.newContext()
  t.teardown(async () => await context.close())
  await context.addCookies([{ name: 'session', value: 'root', domain: host, path: '/' }])
  const page = await context.newPage()
  await page.goto(`${url}/rooms-admin/`)
  await page.waitForSelector('#state:text-is("open")')
  const bob = await TestSocket.open(wsUrl, { headers: { cookie: 'session=bob' } })
  t.teardown(async () => await bob.close())
  await bob.join('support')
  await page.waitForSelector(countOf('support', 1))
  await page.click('#rooms tr[data-room="support"] button')
  await page.waitForSelector('#members li:has-text("bob")')
  await shoot(page, 'admin-cookie.png')
})

t.test('with tokens only: the page asks for a token, refuses a user\'s, and with an admin\'s shows rooms and members through Bearer REST and in-band auth', { skip }, async (t) => {
  const users: Record<string, { id: string, name: string, admin: boolean }> = {
    'tok-root': { id: 'u-root', name: 'root', admin: true },
    'tok-bob': { id: 'u-bob', name: 'bob', admin: false }
  }
  const { url, wsUrl } = await startApp(t, {
    verifyToken: (token) => {
      const user = users[token]
      if (user === undefined) throw new Error('unknown token')
      return { user }
    },
    admin: { preHandler: (_request, _reply, user) => (user as { admin?: boolean } | undefined)?.admin === true }
  })
  const bob = await TestSocket.connect(wsUrl)
  t.teardown(async () => await bob.close())
  await bob.authenticate('tok-bob')
  await bob.join('support')

  const browser = await launchChromium()
  t.teardown(async () => await browser.close())
  const context = await browser.newContext()
  t.teardown(async () => await context.close())
  const page = await context.newPage()
  const errors: string[] = []
  page.on('pageerror', (err) => errors.push(err.message))
  const opened = await page.goto(`${url}/rooms-admin/`)
  t.equal(opened?.status(), 200, 'the page itself needs no credentials')
  await page.waitForSelector('#token-form:visible')
  await page.fill('#token', 'tok-bob')
  await page.click('#token-form button')
  await page.waitForSelector('#token-error:text("Only admins may open")')
  await page.fill('#token', 'tok-root')
  await page.click('#token-form button')
  await page.waitForSelector('#state:text-is("open")')
  t.equal(await page.isHidden('#token-form'), true)
  await page.waitForSelector(countOf('support', 1))
  await page.click('#rooms tr[data-room="support"] button')
  await page.waitForSelector('#members li:has-text("bob")')
  await page.waitForSelector('#connections:text-is("2")')
  await shoot(page, 'admin-token.png')
  // A reload keeps the token for this tab.
  await page.reload()
  await page.waitForSelector('#state:text-is("open")')
  t.equal(await page.isHidden('#token-form'), true, 'not asked again in the same tab')
  t.same(errors, [], 'no page errors')
})
