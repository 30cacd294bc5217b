import t from 'tap'
import { scanPublish } from '../src/publish-scan.js'
import { encodedData, isFrameError, parseClientFrame, type PublishFrame } from '../src/protocol.js'
import { seeded } from './helpers/random.js'

/** A test name in printable ASCII: TAP is read line by line, and U+2028 would end one. */
const shown = (text: string): string => (text.length > 100 ? text.slice(0, 100) + '...' : text).replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)

const MEMBERS = new Set(['type', 'room', 'id', 'data', 'ephemeral'])

/**
 * The fast path's promise, checked against JSON.parse: when it reads a frame,
 * the frame is valid JSON, a publish with only the members it reads, and
 * what it read is what JSON.parse makes of it, with data as the encoder
 * writes it. Returns whether it read the frame.
 */
function check (text: string): boolean {
  const scanned = scanPublish(text)
  if (scanned === undefined) return false
  let parsed: Record<string, unknown>
  try {
    parsed = JSON.parse(text)
  } catch {
    throw new Error(`read ${shown(text)}, which is not JSON`)
  }
  const problems: string[] = []
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) problems.push('not an object')
  for (const key of Object.keys(parsed)) if (!MEMBERS.has(key)) problems.push(`member ${key}`)
  if (parsed.type !== 'publish') problems.push('type')
  if (parsed.room !== scanned.room) problems.push('room')
  if (!Object.is(parsed.id, scanned.id)) problems.push('id')
  if (parsed.ephemeral !== scanned.ephemeral) problems.push('ephemeral')
  if (!('data' in parsed)) problems.push('no data')
  else if (JSON.stringify(scanned.data) !== JSON.stringify(parsed.data) || !Object.is(scanned.data, parsed.data) && typeof parsed.data !== 'object') problems.push('data parsed when asked for')
  else if (scanned.dataJson !== undefined && scanned.dataJson !== JSON.stringify(parsed.data)) problems.push(`data ${shown(scanned.dataJson)} vs ${shown(String(JSON.stringify(parsed.data)))}`)
  if (problems.length > 0) throw new Error(`${shown(text)}: ${problems.join(', ')}`)
  return true
}

const deep = (depth: number): string => '['.repeat(depth) + '0' + ']'.repeat(depth)

/**
 * [frame text, what the fast path does]: 'text' reads it and takes its data's
 * text as it is, 'numbers' reads it and writes its data's numbers as the
 * encoder does, 'value' reads it but data is to be encoded again (a key the
 * parse reorders or drops), false leaves it to JSON.parse.
 */
const cases: Array<[string, 'text' | 'numbers' | 'value' | false]> = [
  ['{"type":"publish","room":"r","data":{"s":1234.567,"p":"xx"},"id":7}', 'text'],
  ['{"data":[1,"a",null,true,false,{}],"room":"r:1.a-b_c","id":"req-7","type":"publish","ephemeral":true}', 'text'],
  ['{"type":"publish","room":"r","data":"é 中文 😀 \u2028 \u007f","ephemeral":false}', 'text'],
  ['{"type":"publish","room":"r","data":{"__proto__":{"a":1},"constructor":2}}', 'text'],
  ['{"type":"publish","room":"r","data":{"x":{"data":"data"}}}', 'text'],
  ['{"type":"publish","room":"r","data":0}', 'text'],
  ['{"type":"publish","room":"r","data":-0.5}', 'text'],
  ['{"type":"publish","room":"r","data":1e+21}', 'text'],
  ['{"type":"publish","room":"r","data":""}', 'text'],
  ['{"type":"publish","room":"r","data":1,"id":-123456789012345}', 'text'],
  ['{"type":"publish","room":"r","data":1,"id":0}', 'text'],
  [`{"type":"publish","room":"r","data":${deep(64)}}`, 'text'],
  // Left to JSON.parse: whitespace, escapes, control characters, lone surrogates.
  ['{"type":"publish", "room":"r","data":1}', false],
  ['{"type":"publish","room":"r","data":1}\n', false],
  [' {"type":"publish","room":"r","data":1}', false],
  ['{"type":"publish","room":"r","data":[1, 2]}', false],
  ['{"type":"publish","room":"r","data":"a\\"b"}', false],
  ['{"type":"publish","room":"r","data":"\\u0041"}', false],
  ['{"type":"publish","room":"r","data":"a\u0001b"}', false],
  ['{"type":"publish","room":"r","data":"a\ud800b"}', false],
  ['{"type":"publish","room":"r","data":"\udc00\ud800"}', false],
  ['{"type":"publish","room":"r","data":1,"id":"a\\u0062"}', false],
  // Left to JSON.parse: members it does not read, or twice.
  ['{"type":"publish","room":"r","data":1,"data":2}', false],
  ['{"type":"publish","room":"r","data":1,"type":"publish"}', false],
  ['{"type":"publish","room":"r","data":1,"extra":1}', false],
  ['{"type":"publish","room":"r","data":1,"__proto__":{}}', false],
  ['{"type":"publish","room":"r"}', false],
  ['{"type":"publish","data":1}', false],
  ['{"room":"r","data":1}', false],
  ['{"type":"join","room":"r","data":1}', false],
  ['{"type":"Publish","room":"r","data":1}', false],
  ['{"type":"publish","room":1,"data":1}', false],
  ['{"type":"publish","room":"r","data":1,"ephemeral":"true"}', false],
  ['{"type":"publish","room":"r","data":1,"ephemeral":null}', false],
  // Ids other than a string or an integer of at most 15 digits.
  ['{"type":"publish","room":"r","data":1,"id":-0}', false],
  ['{"type":"publish","room":"r","data":1,"id":1.5}', false],
  ['{"type":"publish","room":"r","data":1,"id":1e3}', false],
  ['{"type":"publish","room":"r","data":1,"id":1234567890123456}', false],
  ['{"type":"publish","room":"r","data":1,"id":null}', false],
  ['{"type":"publish","room":"r","data":1,"id":{}}', false],
  // Numbers not in the encoder's form: read, and the numbers written as the encoder writes them.
  ['{"type":"publish","room":"r","data":1e5}', 'numbers'],
  ['{"type":"publish","room":"r","data":1.50}', 'numbers'],
  ['{"type":"publish","room":"r","data":-0}', 'numbers'],
  ['{"type":"publish","room":"r","data":1e400}', 'numbers'],
  ['{"type":"publish","room":"r","data":-1e400}', 'numbers'],
  ['{"type":"publish","room":"r","data":[1E5,0.10,-0.0,1e-0]}', 'numbers'],
  ['{"type":"publish","room":"r","data":{"s":1234.500,"p":"x"},"id":3}', 'numbers'],
  ['{"type":"publish","room":"r","data":[1e20,1e21,1e-7,0.0000001,123456789012345678901234567890,5e-324,2e-324]}', 'numbers'],
  ['{"type":"publish","room":"r","data":{"a":[0.5,{"b":2.0}],"c":"1.0","d":-1.10E+2}}', 'numbers'],
  // Keys the parse reorders or drops: read, and encoded again.
  ['{"type":"publish","room":"r","data":{"b":1,"1":2}}', 'value'],
  ['{"type":"publish","room":"r","data":{"a":1,"a":2}}', 'value'],
  ['{"type":"publish","room":"r","data":{"a":1.0,"a":2}}', 'value'],
  ['{"type":"publish","room":"r","data":[1.0,{"2":3}]}', 'value'],
  // Deeper than 64 levels: JSON.parse's (and the encoder refuses what it cannot encode).
  [`{"type":"publish","room":"r","data":${deep(65)}}`, false],
  // Keys compared per object: the same key in another object is no repeat.
  ['{"type":"publish","room":"r","data":{"x":{"x":{"x":1}},"y":[{"x":1},{"x":2}],"z":{"y":0}}}', 'text'],
  ['{"type":"publish","room":"r","data":{"a":{"b":1},"b":2,"a":3}}', 'value'],
  ['{"type":"publish","room":"r","data":{"a":{"b":1,"b":2}}}', 'value'],
  ['{"type":"publish","room":"r","data":{"ab":1,"a":2,"b":3,"ba":4}}', 'text'],
  [`{"type":"publish","room":"r","data":{${Array.from({ length: 20 }, (_, k) => `"k${k}":${k}`).join(',')}}}`, 'text'],
  [`{"type":"publish","room":"r","data":{${Array.from({ length: 20 }, (_, k) => `"k${k}":${k}`).join(',')},"k3":0}}`, 'value'],
  [`{"type":"publish","room":"r","data":{${Array.from({ length: 20 }, (_, k) => `"k${k}":${k}`).join(',')},"k18":0}}`, 'value'],
  ['{"type":"publish","room":"r","data":{"k1":1,"k2":2,"k1":1}}', 'value'],
  // Not JSON.
  ['', false], ['{', false], ['{}', false], ['[]', false], ['null', false],
  ['{"type":"publish","room":"r","data":1', false],
  ['{"type":"publish","room":"r","data":1}x', false],
  ['{"type":"publish","room":"r","data":1,}', false],
  ['{"type":"publish","room":"r","data":}', false],
  ['{"type":"publish","room":"r","data":01}', false],
  ['{"type":"publish","room":"r","data":-01}', false],
  ['{"type":"publish","room":"r","data":1e}', false],
  ['{"type":"publish","room":"r","data":1e+}', false],
  ['{"type":"publish","room":"r","data":-}', false],
  ['{"type":"publish","room":"r","data":1.}', false],
  ['{"type":"publish","room":"r","data":.5}', false],
  ['{"type":"publish","room":"r","data":+1}', false],
  ['{"type":"publish","room":"r","data":tru}', false],
  ['{"type":"publish","room":"r","data":truex}', false],
  ['{"type":"publish","room":"r","data":[1,]}', false],
  ['{"type":"publish","room":"r","data":{"a":1,}}', false],
  ['{"type":"publish","room":"r","data":{"a"}}', false],
  ['{"type":"publish","room":"r","data":"a"b"}', false],
  ['{"type":"publish","room":"r","data":"abc', false],
  ['{"type":"publish","room":"r""data":1}', false],
  ['{"type":"publish","room":"r","data"1}', false],
  // Long frames are JSON.parse's.
  [`{"type":"publish","room":"r","data":"${'x'.repeat(600)}"}`, false]
]

t.test('the fast path reads a compact publish exactly as JSON.parse does, and leaves everything else to it', async (t) => {
  for (const [text, expected] of cases) {
    const read = check(text)
    const scanned = scanPublish(text)
    const how = scanned?.dataJson === undefined ? 'value' : scanned.dataJsonInFrame ? 'text' : 'numbers'
    t.equal(read ? how : false, expected, shown(text))
  }
})

t.test('a frame read by the fast path is the frame JSON.parse gives, with its data parsed when asked for', async (t) => {
  const text = '{"type":"publish","room":"r","data":{"n":[1,{"a":"é"}]},"id":"x1","ephemeral":true}'
  const frame = parseClientFrame(text) as PublishFrame
  t.notOk(isFrameError(frame))
  t.match(frame, { type: 'publish', room: 'r', id: 'x1', ephemeral: true })
  t.equal(encodedData(frame, text), '{"n":[1,{"a":"é"}]}', 'its data as the encoder writes it')
  t.same(frame.data, { n: [1, { a: 'é' }] }, 'its data parsed when asked for')
  t.equal(frame.data, frame.data, 'once')
})

t.test('a frame the fast path reads but the schema refuses gets the error any frame gets', async (t) => {
  const refused: Array<[string, Record<string, unknown>]> = [
    ['{"type":"publish","room":"a b","data":1,"id":5}', { code: 'INVALID_ROOM' }],
    ['{"type":"publish","room":"","data":1,"id":5}', { code: 'INVALID_ROOM' }],
    [`{"type":"publish","room":"${'r'.repeat(129)}","data":1,"id":5}`, { code: 'INVALID_ROOM' }],
    [`{"type":"publish","room":"r","data":1,"id":"${'i'.repeat(65)}"}`, { code: 'INVALID_FRAME' }],
    ['{"type":"publish","room":"r","data":1,"id":""}', { code: 'INVALID_FRAME' }]
  ]
  for (const [text, error] of refused) {
    t.ok(scanPublish(text) !== undefined, `the fast path reads ${shown(text)}`)
    const result = parseClientFrame(text)
    t.ok(isFrameError(result), 'refused')
    if (isFrameError(result)) t.match(result.error, error, shown(text))
  }
  const idOk = parseClientFrame('{"type":"publish","room":"a b","data":1,"id":5}')
  t.equal(isFrameError(idOk) ? idOk.id : undefined, 5, 'the refusal answers the frame\'s id')
})

// Seeded random frames: compact ones as a client's JSON.stringify writes them,
// and the same with one change that JSON allows or forbids.
const rand = seeded(0xfa57)
const int = (n: number): number => Math.floor(rand() * n)
const pick = <T>(list: readonly T[]): T => list[int(list.length)] as T
const STRINGS = ['', 'a', 'data', 'é', '中文', '😀', ' ', '"', '\\', '\n', '\u0000', '\u2028', '\ud800', '{}', '1']
const NUMBERS = [0, -0, 1, -1, 1.5, 0.1, 1e21, 1e-7, 1234.567, 2 ** 53 + 2, 5e-324, 123456789012345]
const KEYS = ['a', 'b', 'data', 'type', '1', '__proto__', 'é', '']

function value (depth: number): unknown {
  switch (depth > 3 ? int(3) : int(6)) {
    case 0: return pick(NUMBERS) * (rand() < 0.8 ? 1 : int(1000))
    case 1: return Array.from({ length: int(3) }, () => pick(STRINGS)).join('')
    case 2: return pick([null, true, false])
    case 3: return Array.from({ length: int(4) }, () => value(depth + 1))
    default: {
      const object: Record<string, unknown> = {}
      for (let n = int(4); n > 0; n--) Object.defineProperty(object, pick(KEYS), { value: value(depth + 1), enumerable: true, configurable: true, writable: true })
      return object
    }
  }
}

const CHANGES: Array<(text: string) => string> = [
  (s) => s,
  (s) => s,
  (s) => s,
  (s) => { const i = int(s.length); return s.slice(0, i) + pick([' ', '\n', '\t', '\r']) + s.slice(i) },
  (s) => { const i = int(s.length); return s.slice(0, i) + s.slice(i + 1) },
  (s) => { const i = int(s.length); return s.slice(0, i) + pick(['"', ',', ':', '{', '}', '[', ']', '0', '-', 'e', '.', 'x', '\\', '\u0001', '\ud800']) + s.slice(i) },
  (s) => s.slice(0, -1) + pick([',"data":1}', ',"id":2}', ',"x":3}', ',"ephemeral":true}', ',"room":"z"}']),
  (s) => s.replace(/:(\d+)/, (_m, d: string) => `:${d}${pick(['.0', 'e0', '0'])}`),
  // Numbers written as other clients may write them: every one in the frame.
  (s) => s.replace(/(-?)(\d+(?:\.\d+)?(?:e[-+]?\d+)?)(?=[,}\]])/g, (_m, sign: string, d: string) => sign + pick([d, `${d}0`, `${d}e0`, `${d}E+00`, `${Number(d).toFixed(3)}`, `${Number(d).toExponential()}`, `${d}e400`, `${d}e-400`]))
]

t.test('30,000 seeded random frames: whatever the fast path reads, JSON.parse reads the same', async (t) => {
  let read = 0
  let compact = 0
  const wrong: string[] = []
  for (let n = 0; n < 30_000 && wrong.length < 5; n++) {
    const frame: Record<string, unknown> = { type: 'publish', room: pick(['r', 'room-1', 'a:b.c_d-e']), data: value(0) }
    if (rand() < 0.7) frame.id = rand() < 0.5 ? int(1e9) : pick(['a', 'req-1', 'é'])
    if (rand() < 0.2) frame.ephemeral = rand() < 0.5
    const keys = Object.keys(frame).sort(() => rand() - 0.5)
    const canonical = JSON.stringify(Object.fromEntries(keys.map((k) => [k, frame[k]])))
    const change = pick(CHANGES)
    const text = change(canonical)
    try {
      if (check(text)) read++
      if (text === canonical && check(text)) compact++
    } catch (err) {
      wrong.push((err as Error).message)
    }
  }
  t.same(wrong, [])
  t.ok(read > 5000 && compact > 5000, `${read} frames read by the fast path, ${compact} of them unchanged from the encoder`)
})
