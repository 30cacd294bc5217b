import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import WebSocket from 'ws'
import type { Page } from 'playwright-core'
import rooms, { type RoomsOptions } from '../src/index.js'
import { connect, type RoomsClient } from '../src/client/index.js'
import { CHROMIUM, enter, launchChromium } from './helpers/browser.js'
import { needs } from './helpers/needs.js'

const skip = needs(CHROMIUM, 'apt-get install -y chromium')

/** The demo app; `gate.refuse` answers its socket's upgrades with a 503 (a server that is away), the page's files still served. */
async function demoApp (t: Test, options: RoomsOptions = {}): Promise<{ app: FastifyInstance, url: string, ws: string, gate: { refuse: boolean } }> {
  const gate = { refuse: false }
  const app = Fastify()
  app.addHook('onRequest', async (request, reply) => {
    if (gate.refuse && request.url.startsWith('/ws')) return await reply.code(503).send({ message: 'away for the test' })
  })
  await app.register(rooms, { demo: true, heartbeatMs: 1000, presenceIntervalMs: 0, ...options })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => await app.close())
  const port = (app.server.address() as { port: number }).port
  return { app, url: `http://127.0.0.1:${port}/`, ws: `ws://127.0.0.1:${port}/ws`, gate }
}

async function open (t: Test, errors: string[]): Promise<Page> {
  const browser = await launchChromium()
  t.teardown(async () => await browser.close())
  const page = await browser.newPage()
  page.on('pageerror', (err) => errors.push(err.message))
  return page
}

/** The demo page logged in as ada, its socket cut and its reconnects refused (`gate.refuse`) until the test lets them through. */
async function reconnectingPage (t: Test): Promise<{ app: FastifyInstance, page: Page, gate: { refuse: boolean }, errors: string[] }> {
  const { app, url, gate } = await demoApp(t, { maxMessageBytes: 100 })
  const errors: string[] = []
  const page = await open(t, errors)
  await enter(page, url, 'ada')
  gate.refuse = true
  for (const socket of app.websocketServer.clients) socket.terminate()
  await page.waitForSelector('#state:text-is("reconnecting")')
  return { app, page, gate, errors }
}

async function bot (t: Test, ws: string, name: string): Promise<RoomsClient> {
  const client = await connect(ws, { name, WebSocket: WebSocket as any, reconnect: false })
  t.teardown(() => client.close())
  return client
}

t.test('leaving the last room hides "Load more" of its members, and a stray click on it does nothing', { skip }, async (t) => {
  const { url, ws } = await demoApp(t, { membersPageSize: 2 })
  for (const name of ['m1', 'm2', 'm3']) await (await bot(t, ws, name)).join('lobby')
  const errors: string[] = []
  const page = await open(t, errors)
  await enter(page, url, 'ada')
  // 4 members, pages of 2: the button is offered.
  await page.waitForSelector('#more-members', { state: 'visible' })
  await page.click('#leave-room')
  await page.waitForSelector('#room-title:text-is("No room yet")')
  t.ok(await page.isHidden('#more-members'), 'no "Load more" without a room')
  // Still reachable from a script (or a click already on its way): it must not read the room that is gone.
  await page.evaluate(() => document.getElementById('more-members')?.click())
  t.equal(await page.textContent('#room-error'), '', 'no error shown')
  t.same(errors, [], 'no errors in the page')
})

t.test('a double click on "Enter" logs in once: one connection, the page\'s own user', { skip }, async (t) => {
  const { app, url } = await demoApp(t)
  const errors: string[] = []
  const page = await open(t, errors)
  // Counts the sockets the page opens: the SDK takes the global WebSocket when connect() is called.
  await page.addInitScript(() => {
    const Native = window.WebSocket
    const w = window as unknown as { sockets: number }
    w.sockets = 0
    window.WebSocket = class extends Native {
      constructor (url: string | URL, protocols?: string | string[]) {
        super(url, protocols)
        w.sockets++
      }
    }
  })
  await page.goto(url)
  await page.fill('#nickname', 'ada')
  // Both clicks are dispatched when dblclick returns; each submit's connect() opens its socket at once.
  await page.dblclick('#login button')
  await page.waitForSelector('#room-title:text("# lobby")')
  t.equal(await page.evaluate(() => (window as unknown as { sockets: number }).sockets), 1, 'one socket opened')
  await page.fill('#text', 'hi')
  await page.press('#text', 'Enter')
  await page.waitForSelector('#messages li.me .text:text-is("hi")')
  t.equal(app.rooms.connections, 1, 'one connection on the server')
  t.same(await page.locator('#members li').allTextContents(), ['ada (you)'], 'one member, the page\'s own user')
  t.same(errors, [], 'no errors in the page')
})

t.test('a login that fails can be tried again', { skip }, async (t) => {
  const { url, gate } = await demoApp(t)
  const errors: string[] = []
  const page = await open(t, errors)
  gate.refuse = true
  await page.goto(url)
  await page.fill('#nickname', 'ada')
  await page.click('#login button')
  await page.waitForSelector('#login-error:text("Could not connect: away for the test")')
  gate.refuse = false
  await page.click('#login button')
  await page.waitForSelector('#room-title:text("# lobby")')
  t.same(errors, [], 'no errors in the page')
})

t.test('Send pressed twice while reconnecting sends the message once: the box is cleared when the SDK holds it, and the page says it waits', { skip }, async (t) => {
  // The server refuses the reconnects until the test lets them through: the page stays reconnecting.
  const { page, gate, errors } = await reconnectingPage(t)
  await page.fill('#text', 'hello')
  await page.press('#text', 'Enter')
  // The submit handler clears the box before it awaits the publish: done when the key press is.
  t.equal(await page.inputValue('#text'), '', 'the box is cleared once the publish is handed to the SDK')
  await page.waitForSelector('#sending:text-is("1 message waits for the connection, to be sent once it is back.")')
  await page.press('#text', 'Enter')
  await page.click('#send button')
  t.equal(await page.textContent('#sending'), '1 message waits for the connection, to be sent once it is back.', 'pressing Send again sends nothing more')
  // One that the server will refuse: it waits too, then comes back into the box.
  const long = 'x'.repeat(150)
  await page.fill('#text', long)
  await page.press('#text', 'Enter')
  await page.waitForSelector('#sending:text-is("2 messages wait for the connection, to be sent once it is back.")')
  gate.refuse = false
  await page.waitForSelector('#state:text-is("open")')
  await page.waitForSelector('#room-error:text("Not sent")')
  t.match(await page.textContent('#room-error'), /larger than 100 bytes/, 'the server\'s reason')
  t.equal(await page.inputValue('#text'), long, 'the refused text is back in the box')
  // The server handles a connection's frames in order: once this one is shown, any second "hello" would be too.
  await page.fill('#text', 'marker')
  await page.press('#text', 'Enter')
  await page.waitForSelector('#messages li.me .text:text-is("marker")')
  t.same(await page.locator('#messages li.me .text').allTextContents(), ['hello', 'marker'], 'hello sent once, before what followed')
  t.equal(await page.textContent('#sending'), '', 'nothing waits any more')
  t.equal(await page.textContent('#room-error'), '')
  t.same(errors, [], 'no errors in the page')
})

t.test('a held message refused while something else was typed stays in its room\'s log, whole', { skip }, async (t) => {
  const { app, page, gate, errors } = await reconnectingPage(t)
  const long = `Meeting moved to Thursday: ${'x'.repeat(120)}`
  await page.fill('#text', long)
  await page.press('#text', 'Enter')
  await page.waitForSelector('#sending:text-is("1 message waits for the connection, to be sent once it is back.")')
  await page.fill('#text', 'and also')
  gate.refuse = false
  const line = await page.waitForSelector('#messages li.event.bad:text("Not sent")')
  t.ok((await line.textContent())?.startsWith(`Not sent: "${long}" (`), 'the whole text')
  t.match(await line.textContent(), /larger than 100 bytes/, 'the server\'s reason')
  t.equal(await page.inputValue('#text'), 'and also', 'what was typed meanwhile stays in the box')
  // A reconnect clears the error line under the box; the log keeps the text.
  for (const socket of app.websocketServer.clients) socket.terminate()
  await page.waitForSelector('#state:text-is("reconnecting")')
  await page.waitForSelector('#state:text-is("open")')
  t.equal(await page.locator('#messages li.event.bad').count(), 1, 'still in the log after a reconnect')
  t.same(errors, [], 'no errors in the page')
})

t.test('after a restart that loses the guests\' ids (no resumeSecret), the page does not announce its own former user as gone', { skip }, async (t) => {
  const first = await demoApp(t)
  const port = (first.app.server.address() as { port: number }).port
  const errors: string[] = []
  const page = await open(t, errors)
  await enter(page, first.url, 'ada')
  await (await bot(t, first.ws, 'carol')).join('lobby')
  await page.waitForSelector('#messages .event:text-is("carol joined")')
  await first.app.close()
  const again = Fastify()
  t.teardown(async () => await again.close())
  await again.register(rooms, { demo: true, heartbeatMs: 1000, presenceIntervalMs: 0 })
  await again.listen({ port, host: '127.0.0.1' })
  // A rejoin tells `gap`, then `presence`, then `joined`, which the banner waits for.
  await page.waitForSelector('#banner:text-is("Reconnected: some messages could not be recovered in # lobby.")')
  t.same(await page.locator('#messages .event').allTextContents(), ['carol joined', 'reconnected: some messages could not be recovered (after #0)', 'carol left'], 'carol left; ada did not')
  t.same(await page.locator('#members li').allTextContents(), ['ada (you)'])
  t.same(errors, [], 'no errors in the page')
})

t.test('a reload while a message waits for the connection asks first; once it is sent, the page reloads without asking', { skip }, async (t) => {
  const { page, gate, errors } = await reconnectingPage(t)
  const dialogs: string[] = []
  // Dismissed: the page stays, with the message still held.
  page.on('dialog', (dialog) => { dialogs.push(dialog.type()); void dialog.dismiss() })
  await page.fill('#text', 'hello')
  await page.press('#text', 'Enter')
  await page.waitForSelector('#sending:text-is("1 message waits for the connection, to be sent once it is back.")')
  // A navigation to the page itself: headless Chromium asks for neither page.close({ runBeforeUnload }) nor page.reload().
  await t.rejects(page.goto(page.url()), /ERR_ABORTED/, 'the reload is called off')
  t.same(dialogs, ['beforeunload'], 'the browser asked first')
  gate.refuse = false
  await page.waitForSelector('#messages li.me .text:text-is("hello")')
  t.equal(await page.textContent('#sending'), '', 'nothing waits any more')
  await page.goto(page.url())
  await page.waitForSelector('#login')
  t.same(dialogs, ['beforeunload'], 'not asked when nothing waited')
  t.same(errors, [], 'no errors in the page')
})
