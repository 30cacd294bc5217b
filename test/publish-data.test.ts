import t, { type Test } from 'tap'
import Type from 'typebox'
import WebSocket from 'ws'
import { startApp } from './helpers/server.js'
import { eachAdapter } from './helpers/deployment.js'

/**
 * A raw client that keeps the exact text of every frame: the bytes of `data`
 * in a `message` must be what encoding the parsed data gives, whether the
 * server took them from the frame's text or encoded them again.
 */
async function rawClient (url: string): Promise<{ next: (match: (text: string) => boolean, what: string) => Promise<string>, send: (text: string) => void, close: () => Promise<void> }> {
  const ws = new WebSocket(url)
  const texts: string[] = []
  const waiters: Array<{ match: (text: string) => boolean, resolve: (text: string) => void, reject: (err: Error) => void, what: string }> = []
  const closed = new Promise<void>((resolve) => ws.once('close', () => {
    for (const w of waiters.splice(0)) w.reject(new Error(`closed before ${w.what} came`))
    resolve()
  }))
  ws.on('message', (data) => {
    const text = data.toString('utf8')
    const i = waiters.findIndex((w) => w.match(text))
    if (i === -1) texts.push(text)
    else waiters.splice(i, 1)[0]?.resolve(text)
  })
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  return {
    next: async (match, what) => {
      const i = texts.findIndex(match)
      if (i !== -1) return texts.splice(i, 1)[0] as string
      if (ws.readyState !== WebSocket.OPEN) throw new Error(`closed before ${what} came`)
      return await new Promise((resolve, reject) => waiters.push({ match, resolve, reject, what }))
    },
    send: (text) => ws.send(text),
    close: async () => { ws.close(); await closed }
  }
}

const deep = (depth: number): string => '['.repeat(depth) + '"d"' + ']'.repeat(depth)

/** Data members as a client may write them: canonical, or with what JSON allows beyond the encoder's form. */
const DATA = [
  '{"s":1234.567,"p":"xxxxxxxx"}',
  '{"s":1234.560,"p":"trailing zero"}',
  '"a \\"data\\": 1, \\"id\\": 2"',
  '{"data":{"data":"nested \\"data\\""},"x":["data",{"data":1}]}',
  '"é 中文 😀 \u2028 \u007f"',
  '"\\u00e9 \\ud83d\\ude00 \\u001F \\u0000 \\/"',
  '"\\b\\f\\n\\r\\t\\"\\\\ \\u001f"',
  '[1e5, -0, 1E+2, 0.10, 1e400, -1e400, 12345678901234567890, 5e-324, 0.000001, 0.0000001]',
  '{ "spaced" : [ 1 , 2 ] ,\n\t"nl" : { } }',
  '{"b":1,"1":2,"a":{"0":null}}',
  '{"k":1,"k":2}',
  '{"__proto__":{"polluted":true},"constructor":{"prototype":1}}',
  'null', 'true', 'false', '0', '-12', '""', '{}', '[]',
  deep(64),
  deep(65)
]

eachAdapter(t, 'data goes out as encoding its parsed value writes it, however the client wrote it', async (t, deploy) => {
  const d = await deploy({ maxFramesPerSecond: 1e6, frameBurst: 1000 })
  const publisher = await rawClient(d.node(0).wsUrl)
  const member = await rawClient(d.node(1).wsUrl)
  t.teardown(async () => { await publisher.close(); await member.close() })
  for (const client of [publisher, member]) {
    client.send('{"type":"join","room":"r","id":"j"}')
    await client.next((text) => text.startsWith('{"type":"joined"'), 'joined')
  }
  const frames = DATA.flatMap((data, i) => [
    `{"type":"publish","room":"r","id":${i},"data":${data}}`,
    // Around the member: other members holding "data", whitespace, the member first or last.
    ` { "data" :${data} , "x" : "\\"data\\":0" , "type":"publish", "room" : "r" ,"id":"s${i}"}\n`
  ])
  // "data" twice in the frame: the parse keeps the last, and so does the delivery.
  frames.push('{"type":"publish","room":"r","data":"first","id":"twice","data":{"last":true}}')
  // Repeated keys that put the frame's text out of step with its parse, with lengths chosen so that a
  // string match could span several tokens: what goes out is still the parsed data (and the parsed room),
  // never the text between (invalid JSON in the first, a spoofed "room" in the second).
  frames.push('{"type":"publish","id":"dup1","room":"r","data":"A","data":{"k":"v"},"data":"BBBBBBBBBBBBBBBBB"}')
  frames.push('{"type":"publish","id":"dup2","room":"r","data":"A","room":"victim","p":"q","p":"","data":{"k":"v"},"room":"r","data":"SSSSSSSSSSSSSSSSS","p":"TTTTTTTTTTTTTTTTTTTTTTTT"}')
  // "data" spelled with an escape is "data" all the same.
  frames.push('{"type":"publish","room":"r","id":"escaped","d\\u0061ta":[1,2]}')
  for (const [n, frame] of frames.entries()) {
    const parsed = JSON.parse(frame) as { data: unknown, id: number | string }
    publisher.send(frame)
    const ack = await publisher.next((text) => text.startsWith('{"type":"ack"') && (JSON.parse(text) as { id: unknown }).id === parsed.id, `the ack of ${frame}`)
    const expected = `{"type":"message","room":"r","data":${JSON.stringify(parsed.data)},"offset":${n + 1},"ts":`
    for (const [who, client] of [['publisher', publisher], ['member', member]] as const) {
      const text = await client.next((text) => text.startsWith('{"type":"message"') && (JSON.parse(text) as { offset: number }).offset === n + 1, `message ${n + 1}`)
      t.equal(text.slice(0, expected.length), expected, `${who}: ${JSON.stringify(frame).replace(/[^\x20-\x7e]/g, '?').slice(0, 100)}`)
    }
    t.equal(ack, `{"type":"ack","id":${JSON.stringify(parsed.id)},"room":"r","offset":${n + 1}}`)
  }
})

/** A raw client in room "r" of a server with this maxMessageBytes. */
async function memberOfR (t: Test, limit: number): Promise<Awaited<ReturnType<typeof rawClient>>> {
  const { wsUrl } = await startApp(t, { maxMessageBytes: limit })
  const client = await rawClient(wsUrl)
  t.teardown(async () => await client.close())
  client.send('{"type":"join","room":"r","id":1}')
  await client.next((text) => text.startsWith('{"type":"joined"'), 'joined')
  return client
}

t.test('maxMessageBytes counts the encoded data, not the text the client wrote', async (t) => {
  const limit = 100
  const client = await memberOfR(t, limit)
  // {"t":"x...x"} with 8 bytes around the string: exactly at the limit, then one over.
  const at = 'x'.repeat(limit - 8)
  const cases: Array<[string, string]> = [
    [`{"t":"${at}"}`, 'ack'],
    [`{ "t" :   "${at}"   }`, 'ack'],
    [`{"t":"${at}x"}`, 'error'],
    [`{"t":"${at.slice(6)}\\u0078\\u0078\\u0078"}`, 'ack'],
    [`{"t":"${at}\\u0078"}`, 'error']
  ]
  for (const [i, [data, reply]] of cases.entries()) {
    client.send(`{"type":"publish","room":"r","id":${i + 10},"data":${data}}`)
    const text = await client.next((text) => (JSON.parse(text) as { id?: unknown }).id === i + 10, `the reply to case ${i}`)
    t.equal((JSON.parse(text) as { type: string }).type, reply, `case ${i}: ${reply}`)
    if (reply === 'error') t.match(JSON.parse(text), { code: 'PAYLOAD_TOO_LARGE', room: 'r' })
  }
})

t.test('maxMessageBytes counts numbers as the encoder writes them, even when the frame wrote them shorter', async (t) => {
  const limit = 100
  const client = await memberOfR(t, limit)
  // 1e20 is written as 21 digits: four of them encode to 89 bytes, five to 111, in frames far under the limit.
  const cases: Array<[string, string, string | undefined]> = [
    ['[1e20,1e20,1e20,1e20]', 'ack', `[${Array(4).fill('1' + '0'.repeat(20)).join(',')}]`],
    ['[1e20,1e20,1e20,1e20,1e20]', 'error', undefined],
    // Read by JSON.parse (whitespace), encoded again: the same limit.
    ['[1e20, 1e20, 1e20, 1e20, 1e20]', 'error', undefined],
    ['[ 1e20,1e20,1e20,1e20 ]', 'ack', `[${Array(4).fill('1' + '0'.repeat(20)).join(',')}]`]
  ]
  for (const [i, [data, reply, delivered]] of cases.entries()) {
    client.send(`{"type":"publish","room":"r","id":${i + 10},"data":${data}}`)
    const text = await client.next((text) => (JSON.parse(text) as { id?: unknown }).id === i + 10, `the reply to case ${i}`)
    t.equal((JSON.parse(text) as { type: string }).type, reply, `case ${i}: ${reply}`)
    if (reply === 'error') t.match(JSON.parse(text), { code: 'PAYLOAD_TOO_LARGE', room: 'r' })
    else t.ok((await client.next((text) => text.startsWith('{"type":"message"'), `case ${i}'s message`)).includes(`"data":${delivered as string},"offset"`), `case ${i}: delivered as the encoder writes it`)
  }
})

t.test('the data schema checks the parsed data, and an onPublish hook\'s data is encoded again', async (t) => {
  const { wsUrl } = await startApp(t, {
    dataSchema: Type.Object({ n: Type.Number() }),
    onPublish: ({ data }) => (data as { n: number }).n === 7 ? { data: { n: 1e5, replaced: '\u00e9' } } : undefined
  })
  const client = await rawClient(wsUrl)
  t.teardown(async () => await client.close())
  client.send('{"type":"join","room":"r","id":1}')
  await client.next((text) => text.startsWith('{"type":"joined"'), 'joined')
  client.send('{"type":"publish","room":"r","id":2,"data":{"n":"1"}}')
  t.match(JSON.parse(await client.next((text) => text.includes('"id":2'), 'the error')), { type: 'error', code: 'INVALID_DATA', id: 2 })
  client.send('{"type":"publish","room":"r","id":3,"data":{"n":1e0}}')
  t.match(await client.next((text) => text.startsWith('{"type":"message"'), 'message 1'), /^\{"type":"message","room":"r","data":\{"n":1\},"offset":1,/)
  client.send('{"type":"publish","room":"r","id":4,"data":{"n":7}}')
  t.match(await client.next((text) => text.startsWith('{"type":"message"'), 'message 2'), /^\{"type":"message","room":"r","data":\{"n":100000,"replaced":"é"\},"offset":2,/)
})
