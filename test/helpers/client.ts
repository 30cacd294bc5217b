import type { FastifyInstance } from 'fastify'
import type { RoomsClient, StateChange } from '../../src/client/index.js'

/**
 * Resolve with the next value an event handler is called with that matches.
 * With `client`, fail at once when it closes for good first, rather than wait
 * for ever (a wait for the `closed` state itself still resolves).
 */
export async function nextEvent<T> (on: (handler: (value: T) => void) => () => void, match: (value: T) => boolean = () => true, client?: RoomsClient): Promise<T> {
  return await new Promise((resolve, reject) => {
    // Registered first, so that when the awaited event is the close itself it wins.
    const off = on((value) => {
      if (!match(value)) return
      off()
      offClosed?.()
      resolve(value)
    })
    const offClosed = client?.on('state', (_state, change) => {
      if (change.state !== 'closed') return
      off()
      offClosed?.()
      reject(new Error(`the client closed (${change.code} ${change.reason}) before the awaited event`))
    })
  })
}

/** The client's next change to `state`. */
export async function nextState (client: RoomsClient, state: StateChange['state']): Promise<StateChange> {
  return await nextEvent<StateChange>((h) => client.on('state', (_s, change) => h(change)), (c) => c.state === state, state === 'closed' ? undefined : client)
}

/** An upgrade gate in front of the socket route, as a load balancer in maintenance would be: closed, upgrades get 503. */
export function gate (): { closed: boolean, setup: (app: FastifyInstance) => void } {
  const g = {
    closed: false,
    setup: (app: FastifyInstance) => {
      app.addHook('onRequest', async (request) => {
        if (g.closed && request.url.startsWith('/ws')) throw Object.assign(new Error('Closed for maintenance'), { statusCode: 503 })
      })
    }
  }
  return g
}

/** Drop the client's connection from the server side with no close frame, as a dead network would, and wait until the client noticed. */
export async function dropConnection (app: FastifyInstance, client: RoomsClient): Promise<void> {
  const reconnecting = nextState(client, 'reconnecting')
  for (const socket of app.websocketServer.clients) socket.terminate()
  await reconnecting
}
