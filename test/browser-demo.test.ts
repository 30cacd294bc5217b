import t, { type Test } from 'tap'
import { mkdirSync } from 'node:fs'
import Fastify, { type FastifyInstance } from 'fastify'
import type { Browser, Page } from 'playwright-core'
import rooms, { type RoomsOptions } from '../src/index.js'
import { CHROMIUM, enter, launchChromium, say } from './helpers/browser.js'
import { needs } from './helpers/needs.js'

const skip = needs(CHROMIUM, 'apt-get install -y chromium')
const output = new URL('./output/', import.meta.url)
const DESKTOP = { width: 1280, height: 800 }
const PHONE = { width: 390, height: 844 }

async function demoApp (port = 0, options: RoomsOptions = {}): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(rooms, { demo: true, heartbeatMs: 1000, ...options })
  await app.listen({ port, host: '127.0.0.1' })
  return app
}

function urlOf (app: FastifyInstance): string {
  return `http://127.0.0.1:${(app.server.address() as { port: number }).port}/`
}

async function open (t: Test, browser: Browser, viewport: { width: number, height: number }, errors: string[]): Promise<Page> {
  const context = await browser.newContext({ viewport })
  t.teardown(async () => await context.close())
  const page = await context.newPage()
  page.on('pageerror', (err) => errors.push(err.message))
  return page
}

async function shoot (page: Page, name: string): Promise<void> {
  mkdirSync(output, { recursive: true })
  await page.screenshot({ path: new URL(name, output).pathname })
}

const messageFrom = (who: string, text: string): string => `#messages li:has(.who:text-is("${who}")):has(.text:text-is("${text}"))`

t.test('the demo at desktop and phone sizes: login, history, live room list, typing, unread, same names, failed publish', { skip }, async (t) => {
  const app = await demoApp(0, { maxMessageBytes: 200 })
  const url = urlOf(app)
  t.teardown(async () => await app.close())
  const browser = await launchChromium()
  t.teardown(async () => await browser.close())
  const errors: string[] = []
  const ada = await open(t, browser, DESKTOP, errors)
  const bob = await open(t, browser, PHONE, errors)
  const twin = await open(t, browser, DESKTOP, errors)

  // Before login: only the login card; on a phone it keeps a margin.
  await bob.goto(url)
  t.ok(await bob.isHidden('#chat'), 'the chat is not shown before login')
  const card = await bob.locator('#login').boundingBox()
  t.ok(card !== null && card.x >= 8 && card.x + card.width <= PHONE.width - 8, 'the login card does not run edge to edge')
  await bob.fill('#nickname', '   ')
  await bob.click('#login button')
  await bob.waitForSelector('#login-error:text("cannot be blank")')
  t.ok(await bob.isHidden('#chat'), 'a blank nickname does not log in')
  t.equal(await bob.getAttribute('#nickname', 'aria-invalid'), 'true')
  await shoot(bob, 'phone-login.png')

  // History: ada talks before bob arrives; bob's first visit shows it.
  await enter(ada, url, 'ada')
  await say(ada, 'first')
  await ada.waitForSelector(messageFrom('ada', 'first'))
  await say(ada, 'second')
  await ada.waitForSelector(messageFrom('ada', 'second'))
  await bob.fill('#nickname', 'bob')
  await bob.click('#login button')
  await bob.waitForSelector('#room-title:text("# lobby")')
  await bob.waitForSelector(messageFrom('ada', 'second'))
  t.same(await bob.locator('#messages .text').allTextContents(), ['first', 'second'], 'the history, oldest first')

  // Phone layout: the compose bar at the bottom of the viewport; rooms and members behind toggles.
  const compose = await bob.locator('#send').boundingBox()
  t.ok(compose !== null && compose.y + compose.height <= PHONE.height && compose.y + compose.height > PHONE.height - 120, `the compose bar is pinned at the bottom (${JSON.stringify(compose)})`)
  t.ok(await bob.isHidden('#rooms-pane'), 'rooms are behind a toggle')
  t.ok(await bob.isHidden('#members-pane'), 'members are behind a toggle')
  await bob.click('#toggle-members')
  await bob.waitForSelector('#members-pane li:text-is("ada")')
  t.equal(await bob.getAttribute('#toggle-members', 'aria-expanded'), 'true')
  await shoot(bob, 'phone-members.png')
  await bob.keyboard.press('Escape')
  t.ok(await bob.isHidden('#members-pane'))

  // The room list is pushed over the socket: another person creates a room and ada's list has it, with no HTTP request of hers.
  // (A deadline would say the same on a quiet machine only.)
  const requests: string[] = []
  ada.on('request', (request) => requests.push(request.url()))
  await enter(twin, url, 'ada')
  await twin.fill('#room-name', 'new-room')
  await twin.press('#room-name', 'Enter')
  await twin.waitForSelector('#room-title:text("# new-room")')
  await ada.waitForSelector('#rooms li[data-room="new-room"] .n:text-is("1")')
  await ada.waitForSelector('#rooms li[data-room="lobby"] .n:text-is("3")')
  t.same(requests, [], 'pushed, not polled')

  // Two people named ada are told apart by a short id suffix.
  await ada.waitForSelector('#members li:text-matches("^ada #.{4}$")')
  t.equal(await ada.locator('#members li').filter({ hasText: /^ada #.{4} \(you\)$/ }).count(), 1, 'ada herself, with her suffix')

  // Typing, from an ephemeral publish; the message ends it.
  await bob.fill('#text', 'hi')
  await ada.waitForSelector('#typing:text-is("bob is typing...")')
  await bob.press('#text', 'Enter')
  await ada.waitForSelector(messageFrom('bob', 'hi'))
  t.equal(await ada.textContent('#typing'), '')

  // Unread badge for a room ada is in but not viewing; a divider on her return.
  await ada.click('#rooms li[data-room="new-room"] button')
  await ada.waitForSelector('#room-title:text("# new-room")')
  await say(bob, 'while you were away')
  await ada.waitForSelector('#rooms li[data-room="lobby"] .badge:text-is("1")')
  await shoot(ada, 'desktop-unread.png')
  await ada.click('#rooms li[data-room="lobby"] button')
  await ada.waitForSelector('#room-title:text("# lobby")')
  t.same(await ada.locator('#messages li').evaluateAll((items) => items.slice(-2).map((li) => li.className === 'divider' ? '--' : li.querySelector('.text')?.textContent)), ['--', 'while you were away'], 'the divider sits above the new message')
  t.equal(await ada.locator('#rooms li[data-room="lobby"] .badge').count(), 0, 'the badge is gone')
  // Away again: the divider moves above what is new since this return, not one line lower.
  await ada.click('#rooms li[data-room="new-room"] button')
  await ada.waitForSelector('#room-title:text("# new-room")')
  await say(bob, 'away 2')
  await say(bob, 'away 3')
  await ada.waitForSelector('#rooms li[data-room="lobby"] .badge:text-is("2")')
  await ada.click('#rooms li[data-room="lobby"] button')
  await ada.waitForSelector('#room-title:text("# lobby")')
  t.same(await ada.locator('#messages li').evaluateAll((items) => items.slice(-3).map((li) => li.className === 'divider' ? '--' : li.querySelector('.text')?.textContent)), ['--', 'away 2', 'away 3'], 'the divider sits above both new messages')
  // A busy room does not grow the page without bound: the newest 1,000 lines stay.
  for (let i = 1; i <= 1005; i++) await app.rooms.broadcast('lobby', { text: `bulk ${i}` })
  await ada.waitForSelector(messageFrom('server', 'bulk 1005'))
  t.equal(await ada.locator('#messages li').count(), 1000, 'the oldest lines went')
  t.equal(await ada.locator('#messages li .text').first().textContent(), 'bulk 6')

  // A publish the server refuses keeps its text and says why.
  const long = 'x'.repeat(300)
  await say(ada, long)
  await ada.waitForSelector('#room-error:text("Not sent")')
  t.match(await ada.textContent('#room-error'), /larger than 200 bytes/)
  t.equal(await ada.inputValue('#text'), long, 'the text is still there to fix')
  await shoot(ada, 'desktop-failed-publish.png')
  await say(ada, 'short again')
  await ada.waitForSelector('#messages .me .text:text-is("short again")')
  t.equal(await ada.textContent('#room-error'), '', 'the error goes with the next success')
  t.equal(await ada.inputValue('#text'), '')
  await shoot(ada, 'desktop-chat.png')
  await shoot(bob, 'phone-chat.png')
  t.same(errors, [], 'no errors in the pages')
})

t.test('keyboard only: log in, join, send, switch rooms, with a visible focus', { skip }, async (t) => {
  const app = await demoApp()
  t.teardown(async () => await app.close())
  const browser = await launchChromium()
  t.teardown(async () => await browser.close())
  const errors: string[] = []
  const page = await open(t, browser, DESKTOP, errors)
  const focused = async (): Promise<string> => await page.evaluate(() => {
    const el = document.activeElement as HTMLElement | null
    return el?.id !== '' && el?.id !== undefined ? `#${el.id}` : el?.closest('li')?.dataset.room ?? el?.tagName ?? ''
  })
  await page.goto(urlOf(app))
  await page.keyboard.press('Tab')
  t.equal(await focused(), '#nickname', 'the first stop is the nickname')
  t.not(await page.evaluate(() => getComputedStyle(document.activeElement as Element).outlineStyle), 'none', 'focus is visible')
  await page.keyboard.type('kim')
  await page.keyboard.press('Enter')
  await page.waitForSelector('#room-title:text("# lobby")')
  t.equal(await focused(), '#text', 'the message box has the focus in the room')
  await page.keyboard.type('typed, not clicked')
  await page.keyboard.press('Enter')
  await page.waitForSelector(messageFrom('kim', 'typed, not clicked'))

  // Back to the room name field, create a room.
  for (let i = 0; i < 10 && await focused() !== '#room-name'; i++) await page.keyboard.press('Shift+Tab')
  t.equal(await focused(), '#room-name')
  await page.keyboard.type('kb-room')
  await page.keyboard.press('Enter')
  await page.waitForSelector('#room-title:text("# kb-room")')
  // And back to the lobby through the room list.
  for (let i = 0; i < 12 && await focused() !== 'lobby'; i++) await page.keyboard.press('Shift+Tab')
  t.equal(await focused(), 'lobby', 'the lobby entry of the room list')
  t.not(await page.evaluate(() => getComputedStyle(document.activeElement as Element).outlineStyle), 'none', 'focus is visible in the list')
  await shoot(page, 'keyboard-focus.png')
  await page.keyboard.press('Enter')
  await page.waitForSelector('#room-title:text("# lobby")')
  await page.waitForSelector(messageFrom('kim', 'typed, not clicked'))
  t.equal(await page.getAttribute('#messages', 'aria-live'), 'polite')
  for (const id of ['nickname', 'room-name', 'text']) {
    t.equal(await page.locator(`label[for="${id}"]`).count(), 1, `#${id} has a label`)
  }
  t.same(errors, [])
})

t.test('reconnects: a banner with the countdown, then what was recovered; stale errors cleared', { skip }, async (t) => {
  let app = await demoApp(0, { maxMessageBytes: 100 })
  const port = (app.server.address() as { port: number }).port
  t.teardown(async () => await app.close())
  const browser = await launchChromium()
  t.teardown(async () => await browser.close())
  const errors: string[] = []
  const ada = await open(t, browser, DESKTOP, errors)
  const bob = await open(t, browser, PHONE, errors)
  const url = urlOf(app)
  await enter(ada, url, 'ada')
  await enter(bob, url, 'bob')
  await say(ada, 'before')
  await bob.waitForSelector(messageFrom('ada', 'before'))

  // A dropped connection, the server still up: everything is recovered.
  await say(ada, 'y'.repeat(150))
  await ada.waitForSelector('#room-error:text("Not sent")')
  for (const socket of app.websocketServer.clients) socket.terminate()
  await ada.waitForSelector('#banner:text("Reconnecting")')
  await ada.waitForSelector('#banner:text-is("Reconnected, nothing missed.")')
  t.equal(await ada.textContent('#room-error'), '', 'the stale error is gone')
  t.equal(await ada.getAttribute('#banner', 'role'), 'status')

  // A restart loses the in-memory history: the pages say so.
  await app.close()
  await bob.waitForSelector('#banner:text-matches("Connection lost \\\\(.+\\\\)\\\\. Reconnecting (in \\\\d+ s|now), attempt \\\\d+")')
  await shoot(bob, 'phone-reconnecting.png')
  app = await demoApp(port, { maxMessageBytes: 100 })
  await ada.waitForSelector('#banner:text-is("Reconnected: some messages could not be recovered in # lobby.")')
  await bob.waitForSelector('#banner:text-is("Reconnected: some messages could not be recovered in # lobby.")')
  await ada.waitForSelector('#messages .event:text-matches("^reconnected: some messages could not be recovered")')
  await shoot(ada, 'desktop-recovered.png')
  await say(bob, 'after')
  await ada.waitForSelector(messageFrom('bob', 'after'))
  t.same(errors, [])
})

t.test('a refused connection shows the server\'s reason', { skip }, async (t) => {
  const app = await demoApp(0, { maxConnections: 1 })
  t.teardown(async () => await app.close())
  const browser = await launchChromium()
  t.teardown(async () => await browser.close())
  const errors: string[] = []
  const ada = await open(t, browser, DESKTOP, errors)
  const bob = await open(t, browser, PHONE, errors)
  await enter(ada, urlOf(app), 'ada')
  await bob.goto(urlOf(app))
  await bob.fill('#nickname', 'bob')
  await bob.click('#login button')
  await bob.waitForSelector('#login-error:text("Could not connect")')
  t.equal(await bob.textContent('#login-error'), 'Could not connect: The server holds its maximum of 1 connections: retry later or on another instance.')
  t.ok(await bob.isHidden('#chat'))
  await shoot(bob, 'phone-refused.png')
  // Console errors of the refused WebSocket are expected; page errors are not.
  t.same(errors, [])
})
