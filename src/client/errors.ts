import type { ErrorCode } from '../errors.js'

/** Codes the client itself rejects with, beside the server's error codes. */
export type ClientErrorCode = ErrorCode | 'TIMEOUT' | 'DISCONNECTED' | 'CLOSED' | 'QUEUE_FULL' | 'CONNECT_FAILED'

/** How a connection ended, as the `state` event, `client.lastClose` and some errors tell it. */
export interface CloseInfo {
  /**
   * The WebSocket close code: the server's (1001 shutting down, 1012 state
   * reset, 1013 slow consumer, 4001 unauthorized, 4003 disconnected by the
   * server...), 1006 when the link died without a close frame or the client
   * gave up on a silent server, 1000 when the app closed the client.
   */
  code: number
  /** The close reason: the server's sentence, or the client's own when `byClient`. */
  reason: string
  /** True when this client ended the connection itself (`close()`, `reconnect()`, a silent server, no `welcome` in time, `getToken` failed). */
  byClient: boolean
}

/** A refused or failed call: `code` is the server's error code (with its sentence as `message`) or one of the client's own. */
export class RoomsClientError extends Error {
  readonly code: ClientErrorCode
  readonly room: string | undefined
  /** For `CONNECT_FAILED`, `UNAUTHORIZED`, `DISCONNECTED` and `CLOSED`: how the connection ended, when it did. */
  readonly close: CloseInfo | undefined

  constructor (code: ClientErrorCode, message: string, room?: string, close?: CloseInfo) {
    super(message)
    this.name = 'RoomsClientError'
    this.code = code
    this.room = room
    this.close = close
  }
}
