import t from 'tap'
import WebSocket from 'ws'
import { connect, type WebSocketConstructor, type WelcomeFrame } from '../src/client/index.js'
import { startApp } from './helpers/server.js'
import { eachAdapter } from './helpers/deployment.js'
import { dropConnection, nextEvent } from './helpers/client.js'
import { startTokenApp, token } from './fixtures/token-auth.js'

/** The real ws client, keeping the URL and subprotocols of every connection the SDK opens and every welcome it gets. */
function recording (): { WebSocket: WebSocketConstructor, urls: string[], protocols: Array<string[] | undefined>, welcomes: WelcomeFrame[] } {
  const urls: string[] = []
  const protocols: Array<string[] | undefined> = []
  const welcomes: WelcomeFrame[] = []
  class Recorded extends WebSocket {
    constructor (url: string, offered?: string[]) {
      urls.push(url)
      protocols.push(offered)
      super(url, offered)
      this.on('message', (data) => {
        const frame = JSON.parse(String(data)) as { type: string }
        if (frame.type === 'welcome') welcomes.push(frame as WelcomeFrame)
      })
    }
  }
  return { WebSocket: Recorded as unknown as WebSocketConstructor, urls, protocols, welcomes }
}

eachAdapter(t, 'a dropped anonymous connection reconnects with its resume token and keeps its user id and name', async (t, deploy) => {
  const d = await deploy({ presenceIntervalMs: 0 })
  const { WebSocket: Recorded, urls, protocols, welcomes } = recording()
  const client = await connect(d.node(0).wsUrl, { WebSocket: Recorded, name: 'ada', reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const first = client.user!
  const resume = welcomes[0]?.resume ?? ''
  t.not(resume, '', 'an anonymous welcome carries a resume token')
  const room = await client.join('r')

  const welcome = nextEvent<WelcomeFrame>((h) => client.on('welcome', h), undefined, client)
  const rejoined = nextEvent((h) => room.on('joined', h), undefined, client)
  await dropConnection(d.node(0).app, client)
  const again = await welcome
  await rejoined
  t.same(again.user, first, 'same user id and name')
  t.not(client.connectionId, '', 'a new connection')
  t.same(protocols, [undefined, ['fastify-rooms', `fastify-rooms.resume.${resume}`]], 'the first connection offers no subprotocol, the reconnect the token as one')
  t.same(urls.map((u) => new URL(u).searchParams.get('name')), ['ada', 'ada'])
  t.same(urls.map((u) => [...new URL(u).searchParams.keys()]), [['name'], ['name']], 'the token is not in the URL, which access logs keep')
  t.same(room.members.map((m) => m.id), [first.id], 'one member: the same user, not a newcomer')
})

t.test('a token-authenticated client never puts a resume token in the URL', async (t) => {
  const started = await startTokenApp(t)
  const client = await connect(started.wsUrl, { WebSocket, getToken: () => token('u-ada'), reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const welcome = nextEvent<WelcomeFrame>((h) => client.on('welcome', h), undefined, client)
  await dropConnection(started.app, client)
  t.equal((await welcome).user.id, 'u-ada')
  t.equal(started.upgrades.length, 2)
  t.same(started.upgrades.map((u) => new URL(u, started.url).search), ['', ''], 'no query at all: the token goes in band')
})

t.test('a resume token the server no longer accepts gives a fresh user, and the client goes on', async (t) => {
  // Another app, so another signing key: its token means nothing to the second server.
  const a = await startApp(t)
  const b = await startApp(t)
  const seen: string[] = []
  const offered: Array<string[] | undefined> = []
  class Redirected extends WebSocket {
    constructor (url: string, protocols?: string[]) {
      seen.push(url)
      offered.push(protocols)
      super(seen.length === 1 ? url : url.replace(a.wsUrl, b.wsUrl), protocols)
    }
  }
  const client = await connect(a.wsUrl, { WebSocket: Redirected as unknown as WebSocketConstructor, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } })
  t.teardown(() => client.close())
  const first = client.user!.id
  const room = await client.join('r')
  const rejoined = nextEvent((h) => room.on('joined', h), undefined, client)
  await dropConnection(a.app, client)
  await rejoined
  t.match(offered[1], ['fastify-rooms', /^fastify-rooms\.resume\./], 'the token was offered')
  t.not(client.user!.id, first, 'a fresh anonymous user')
  t.same(room.members.map((m) => m.id), [client.user!.id])
})
