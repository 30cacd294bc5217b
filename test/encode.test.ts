import t from 'tap'
import { encodeAck, encodeJoined, type JoinedFrame } from '../src/protocol.js'

/** A test name in printable ASCII: TAP is read line by line, and U+2028 would end one. */
const shown = (text: string): string => text.replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)

t.test('an ack built from a template is JSON.stringify\'s text for every valid id', async (t) => {
  const ids = [0, -0, 1, -1, 42, 2 ** 53 - 1, 2 ** 53 + 2, -(2 ** 60), 1e21, 1e300, 'a', 'req-7', 'x'.repeat(64), 'quote " backslash \\', 'ctrl \u0000\u001f\n', 'é 中文 😀', 'lone \ud800', '\u2028', '</script>']
  for (const id of ids) {
    for (const offset of [undefined, 0, 1, 123456789]) {
      const object = offset === undefined ? { type: 'ack', id, room: 'r:a.b-c_1' } : { type: 'ack', id, room: 'r:a.b-c_1', offset }
      t.equal(encodeAck(id, 'r:a.b-c_1', offset), JSON.stringify(object), `id ${shown(JSON.stringify(id))}, offset ${String(offset)}`)
    }
  }
})

t.test('a joined built around a members page that is JSON already is JSON.stringify\'s text', async (t) => {
  const members = [{ id: 'u1', name: 'ada' }, { id: 'quote " \\ 😀', name: 'ctrl \u0000 \u2028 </script>' }]
  for (const id of [undefined, 0, 7, 'req-1', 'quote " \\']) {
    for (const recovered of [undefined, true, false]) {
      for (const membersNext of [null, 'u1', 'é "x"']) {
        const frame: JoinedFrame = { type: 'joined', room: 'r:a.b-c_1', count: 1234, members, membersNext, offset: 99, epoch: 'ep "1"' }
        if (id !== undefined) frame.id = id
        if (recovered !== undefined) frame.recovered = recovered
        t.equal(encodeJoined(frame, JSON.stringify(members)), JSON.stringify(frame), shown(`id ${String(id)}, recovered ${String(recovered)}, next ${String(membersNext)}`))
      }
    }
  }
})
