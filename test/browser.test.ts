import t from 'tap'
import { mkdirSync } from 'node:fs'
import Fastify, { type FastifyInstance } from 'fastify'
import type { Page } from 'playwright-core'
import rooms, { type RoomsOptions } from '../src/index.js'
import { CHROMIUM, enter, launchChromium, say } from './helpers/browser.js'
import { needs } from './helpers/needs.js'

const skip = needs(CHROMIUM, 'apt-get install -y chromium')
const output = new URL('./output/', import.meta.url)

async function demoApp (port = 0, options: RoomsOptions = {}): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(rooms, { demo: true, heartbeatMs: 1000, ...options })
  await app.listen({ port, host: '127.0.0.1' })
  return app
}

const messageFrom = (who: string, text: string): string => `#messages li:has(.who:text-is("${who}")):has(.text:text-is("${text}"))`

t.test('the demo page in real Chromium: two people chat both ways and see each other', { skip }, async (t) => {
  let app = await demoApp()
  const port = (app.server.address() as { port: number }).port
  const url = `http://127.0.0.1:${port}/`
  t.teardown(async () => await app.close())
  const browser = await launchChromium()
  t.teardown(async () => await browser.close())
  const errors: string[] = []
  const ada = await browser.newPage()
  const bob = await browser.newPage({ viewport: { width: 390, height: 800 } })
  for (const page of [ada, bob]) page.on('pageerror', (err) => errors.push(err.message))

  await enter(ada, url, 'ada')
  await enter(bob, url, 'bob')
  await ada.waitForSelector('#members li:text-is("bob")')
  // On a phone the members sit behind a toggle.
  await bob.click('#toggle-members')
  await bob.waitForSelector('#members li:text-is("ada")')
  await bob.keyboard.press('Escape')
  await ada.waitForSelector('#messages .event:text-is("bob joined")')
  await ada.waitForSelector('#count:text-is("(2)")')
  t.equal(await bob.textContent('#count'), '(2)')
  t.ok(await ada.isHidden('#more-members'), 'a room of one page needs no "Load more"')

  // Typing is an ephemeral publish: bob sees it, and it ends with ada's message.
  await ada.fill('#text', 'hello bob')
  await bob.waitForSelector('#typing:text-is("ada is typing...")')
  await ada.press('#text', 'Enter')
  await bob.waitForSelector(messageFrom('ada', 'hello bob'))
  t.equal(await bob.textContent('#typing'), '', 'the message ends the typing indicator')
  await say(bob, 'hi ada')
  await ada.waitForSelector(messageFrom('bob', 'hi ada'))
  await ada.waitForSelector('#rooms li[data-room="lobby"] .n:text-is("2")')
  t.equal(await ada.textContent('#state'), 'open')

  // Switch rooms: bob moves to "random" and leaves the lobby; ada sees him leave.
  await bob.click('#toggle-rooms')
  await bob.fill('#room-name', 'random')
  await bob.press('#room-name', 'Enter')
  await bob.waitForSelector('#room-title:text("# random")')
  await bob.click('#toggle-rooms')
  await bob.click('#rooms li[data-room="lobby"] button')
  await bob.waitForSelector('#room-title:text("# lobby")')
  await bob.click('#leave-room')
  await bob.waitForSelector('#room-title:text("# random")')
  await ada.waitForSelector('#messages .event:text-is("bob left")')
  await ada.waitForSelector('#count:text-is("(1)")')
  await ada.waitForSelector('#rooms li[data-room="random"]')
  await bob.click('#toggle-rooms')
  await bob.click('#rooms li[data-room="lobby"] button')
  await bob.waitForSelector('#room-title:text("# lobby")')
  await ada.waitForSelector('#members li:text-is("bob")')

  mkdirSync(output, { recursive: true })
  await ada.screenshot({ path: new URL('demo-desktop.png', output).pathname })
  await bob.screenshot({ path: new URL('demo-phone.png', output).pathname })

  // Restart the server on the same port: the pages reconnect, rejoin, say they had a gap, and chat on.
  await app.close()
  await ada.waitForSelector('#state:text-is("reconnecting")')
  app = await demoApp(port)
  await ada.waitForSelector('#state:text-is("open")')
  await bob.waitForSelector('#state:text-is("open")')
  await ada.waitForSelector('#messages .event:text-matches("^reconnected: some messages could not be recovered")')
  await ada.waitForSelector('#members li:text-is("bob")')
  await say(bob, 'still here')
  await ada.waitForSelector(messageFrom('bob', 'still here'))
  t.same(errors, [], 'no errors in the pages')
})

t.test('the demo page shows a large room a page at a time, with the whole count', { skip }, async (t) => {
  const app = await demoApp(0, { membersPageSize: 1 })
  const port = (app.server.address() as { port: number }).port
  const url = `http://127.0.0.1:${port}/`
  t.teardown(async () => await app.close())
  const browser = await launchChromium()
  t.teardown(async () => await browser.close())
  const errors: string[] = []
  const ada = await browser.newPage()
  const bob = await browser.newPage()
  for (const page of [ada, bob]) page.on('pageerror', (err) => errors.push(err.message))

  await enter(ada, url, 'ada')
  await enter(bob, url, 'bob')
  // ada was alone: her list is complete and follows presence. bob joined a room of two with pages of one.
  await ada.waitForSelector('#members li:text-is("bob")')
  t.ok(await ada.isHidden('#more-members'))
  await bob.waitForSelector('#count:text-is("(2)")')
  t.equal(await bob.locator('#members li').count(), 1, 'the first page')
  await bob.click('#more-members')
  await bob.waitForSelector('#more-members', { state: 'hidden' })
  t.same((await bob.locator('#members li').allTextContents()).sort(), ['ada', 'bob (you)'])
  t.same(errors, [], 'no errors in the pages')
})
