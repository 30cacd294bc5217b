import type { FastifyInstance } from 'fastify'
import { RoomsClient, type Room, type StateChange } from '../../src/client/index.js'
import { WAIT_MS } from './until.js'

export interface NextEventOptions {
  /** Fail at once when it closes for good first (a wait for the `closed` state itself still resolves). */
  client?: RoomsClient<any>
  /** Fail at once when the room handle is left first (a wait for `left` itself still resolves). */
  room?: Room<any>
  /** What is awaited, for the timeout's message. */
  what?: string
  /** How long the wait may take before the test fails: a guard, not a synchronisation. */
  ms?: number
}

/**
 * Resolve with the next value an event handler is called with that matches.
 * Fails after 10 s (or `ms`) naming what was awaited; with `client`, at once
 * when it closes for good first; with `room`, at once when it is left first,
 * rather than wait until the file's timeout. A client as third argument is
 * `{ client }`.
 */
export async function nextEvent<T> (on: (handler: (value: T) => void) => () => void, match: (value: T) => boolean = () => true, options: RoomsClient<any> | NextEventOptions = {}): Promise<T> {
  const { client, room, what = 'the awaited event', ms = WAIT_MS } = options instanceof RoomsClient ? { client: options } : options
  return await new Promise((resolve, reject) => {
    const done = (): void => {
      clearTimeout(timer)
      off()
      offClosed?.()
      offLeft?.()
    }
    // Registered first, so that when the awaited event is the close (or the left) itself it wins.
    const off = on((value) => {
      if (!match(value)) return
      done()
      resolve(value)
    })
    const offClosed = client?.on('state', (_state, change) => {
      if (change.state !== 'closed') return
      done()
      reject(new Error(`the client closed (${change.code} ${change.reason}) before ${what}`))
    })
    const offLeft = room?.on('left', (info) => {
      done()
      reject(new Error(`room ${room.name} was left (${JSON.stringify(info)}) before ${what}`))
    })
    const timer = setTimeout(() => {
      done()
      reject(new Error(`timed out after ${ms} ms waiting for ${what}`))
    }, ms)
  })
}

/** The client's next change to `state`. */
export async function nextState (client: RoomsClient, state: StateChange['state']): Promise<StateChange> {
  return await nextEvent<StateChange>((h) => client.on('state', (_s, change) => h(change)), (c) => c.state === state, { client: state === 'closed' ? undefined : client, what: `the client's state ${state}` })
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
