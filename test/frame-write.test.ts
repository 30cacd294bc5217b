import t from 'tap'
import { Writable } from 'node:stream'
import { textFrame, writeTextString } from '../src/frame.js'

/** A real Writable that hands back, once `bytes` have reached it, everything written to it. */
function sink (bytes: number): { stream: Writable, written: Promise<Buffer> } {
  const chunks: Buffer[] = []
  let got = 0
  let done: (all: Buffer) => void = () => {}
  const written = new Promise<Buffer>((resolve) => { done = resolve })
  const stream = new Writable({
    write (chunk: Buffer, _encoding, callback) {
      chunks.push(chunk)
      got += chunk.length
      if (got >= bytes) done(Buffer.concat(chunks))
      callback()
    }
  })
  return { stream, written }
}

t.test('a string payload is framed as textFrame frames its UTF-8 bytes, at every header size', async (t) => {
  const payloads = ['', 'a', '{"type":"pong"}', 'é 中文 😀 \u2028', 'x'.repeat(125), 'x'.repeat(126), 'é'.repeat(63), 'y'.repeat(65535), 'z'.repeat(16 * 1024 - 1), 'z'.repeat(16 * 1024), 'w'.repeat(70_000)]
  for (const payload of payloads) {
    const expected = textFrame(Buffer.from(payload))
    const { stream, written } = sink(expected.length)
    t.equal(writeTextString(stream, payload), Buffer.byteLength(payload), `${payload.length} characters: its size in bytes`)
    t.ok((await written).equals(expected), `${payload.length} characters: the same frame`)
  }
})
