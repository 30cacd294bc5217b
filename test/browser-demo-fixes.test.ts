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
