/** The WebSocket subprotocol the SDK offers when it has more to say than the URL should carry; the server picks it. */
export const SUBPROTOCOL = 'fastify-rooms'

/**
 * The subprotocol `fastify-rooms.resume.<token>` carries an anonymous user's
 * resume token on a reconnect: in a header no access log keeps, not in the
 * URL, which logs and proxies do keep.
 */
export const RESUME_PROTOCOL = `${SUBPROTOCOL}.resume.`
