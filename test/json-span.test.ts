import t from 'tap'
import { canonicalMember } from '../src/json-span.js'
import { seeded } from './helpers/random.js'

/** What the publish path would encode without the walk. */
const encoded = (text: string): string | undefined => JSON.stringify((JSON.parse(text) as { data?: unknown }).data)

/** The walk's promise: the encoder's exact text, or undefined (then the caller encodes). */
function check (text: string): string | undefined {
  const span = canonicalMember(text, JSON.parse(text), 'data')
  if (span !== undefined && span !== encoded(text)) throw new Error(`span ${span} of ${text} is not the encoder's ${String(encoded(text))}`)
  return span
}

/** A test name in printable ASCII: TAP is read line by line, and U+2028 would end one. */
const shown = (text: string): string => (text.length > 90 ? text.slice(0, 90) + '...' : text).replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)

const deep = (depth: number): string => '['.repeat(depth) + '0' + ']'.repeat(depth)

/** [frame text, the span it must give (undefined: the caller must encode)] */
const cases: Array<[string, string | undefined]> = [
  ['{"type":"publish","room":"r","data":{"s":1.5,"p":"x"},"id":7}', '{"s":1.5,"p":"x"}'],
  // "data" where it is not the member: in strings, in nested keys, in other members.
  ['{"x":{"data":1},"y":[{"data":3}],"data":"top"}', '"top"'],
  ['{"a":["data",{"data":1}],"data":true,"b":"data"}', 'true'],
  ['{"data":{"data":{"data":null}}}', '{"data":{"data":null}}'],
  ['{"datum":1,"dat":2,"data ":3,"data":4}', '4'],
  ['{"x":"a \\"data\\": 1","data":2}', '2'],
  ['{"data":"a \\"data\\": 1"}', '"a \\"data\\": 1"'],
  ['{"x":"\\\\","data":1}', '1'],
  ['{"x":"\\\\\\"","data":"\\\\"}', '"\\\\"'],
  // The parse keeps the last of repeated members: the text has more members than the object.
  ['{"data":1,"data":2}', undefined],
  ['{"data":1,"data":1}', undefined],
  ['{"data":1,"x":{},"data":{"a":1}}', undefined],
  ['{"a":0,"data":1,"a":0}', undefined],
  // A repeated key puts the text out of step with the parse: a later string of the parsed length
  // must not be matched across several tokens (it would end on a later quote and span them).
  ['{"type":"publish","room":"r","data":"A","data":{"k":"v"},"data":"BBBBBBBBBBBBBBBBB"}', undefined],
  ['{"type":"publish","room":"mine","data":"A","room":"victim","p":"q","p":"","data":{"k":"v"},"room":"mine","data":"SSSSSSSSSSSSSSSSS","p":"TTTTTTTTTTTTTTTTTTTTTTTT"}', undefined],
  // An escaped key may be "data".
  ['{"d\\u0061ta":5}', undefined],
  ['{"\\u0064ata":5,"data":6}', undefined],
  ['{"type":"publish"}', undefined],
  ['{}', undefined],
  // Whitespace between the frame's members is the frame's business; inside a value, the encoder writes none.
  [' {\n\t"data" :\r {"a":1} , "id" : 1 } ', '{"a":1}'],
  ['{"data":{ "a":1}}', undefined],
  ['{"data":[1, 2]}', undefined],
  ['{"data":{"a" :1}}', undefined],
  ['{"x":[1, 2],"data":1}', undefined],
  // Strings: only the ones the encoder writes without an escape.
  ['{"data":"é 中文 😀 \u2028 \u007f"}', '"é 中文 😀 \u2028 \u007f"'],
  ['{"data":"\\u00e9"}', undefined],
  ['{"data":"\\ud83d\\ude00"}', undefined],
  // Strings with escapes: the encoder's escapes, and only those.
  ['{"data":"\\ud800"}', '"\\ud800"'],
  ['{"data":"\\ud800\\udc00"}', undefined],
  ['{"data":"\\u001f \\u0000 \\u000b"}', '"\\u001f \\u0000 \\u000b"'],
  ['{"data":"\\b\\f\\n\\r\\t\\"\\\\"}', '"\\b\\f\\n\\r\\t\\"\\\\"'],
  ['{"data":"\\u001F"}', undefined],
  ['{"data":"\\u000a"}', undefined],
  ['{"data":"\\u0041"}', undefined],
  ['{"d\\"q":1,"data":{"k\\\\":"\\n"}}', '{"k\\\\":"\\n"}'],
  ['{"data":"a\\/b"}', undefined],
  ['{"data":"","x":""}', '""'],
  // Numbers: as Number::toString prints them.
  ['{"data":100000}', '100000'],
  ['{"data":1e5}', undefined],
  ['{"data":1E5}', undefined],
  ['{"data":-0}', undefined],
  ['{"data":-0.0}', undefined],
  ['{"data":0}', '0'],
  ['{"data":-12}', '-12'],
  ['{"data":1.50}', undefined],
  ['{"data":1.5}', '1.5'],
  ['{"data":-0.5}', '-0.5'],
  ['{"data":0.000001}', '0.000001'],
  ['{"data":0.0000001}', undefined],
  ['{"data":1e-7}', '1e-7'],
  ['{"data":1.5e-7}', '1.5e-7'],
  ['{"data":1e21}', undefined],
  ['{"data":1e+21}', '1e+21'],
  ['{"data":100000000000000000000}', '100000000000000000000'],
  ['{"data":1000000000000000000000}', undefined],
  ['{"data":123456789012345}', '123456789012345'],
  ['{"data":1234567890123456}', '1234567890123456'],
  ['{"data":12345678901234567890}', undefined],
  ['{"data":9007199254740993}', undefined],
  ['{"data":0.30000000000000004}', '0.30000000000000004'],
  ['{"data":0.1000000000000000055511151231257827}', undefined],
  ['{"data":1e400}', undefined],
  ['{"data":-1e400}', undefined],
  ['{"data":5e-324}', '5e-324'],
  ['{"data":1e-400}', undefined],
  ['{"data":1.7976931348623157e+308}', '1.7976931348623157e+308'],
  ['{"x":1e5,"data":1}', undefined],
  // Objects: the parse reorders integer-like keys and keeps the last of repeated ones.
  ['{"data":{"b":1,"1":2}}', undefined],
  ['{"data":{"1":2,"b":1}}', '{"1":2,"b":1}'],
  ['{"data":{"2":0,"1":0}}', undefined],
  ['{"data":{"a":1,"a":2}}', undefined],
  ['{"data":{"a":1,"b":2,"a":1}}', undefined],
  ['{"data":{"__proto__":{"polluted":true},"constructor":1,"toJSON":2}}', '{"__proto__":{"polluted":true},"constructor":1,"toJSON":2}'],
  ['{"data":{"a":[1,{"b":null}],"t":true,"f":false,"e":{},"l":[]}}', '{"a":[1,{"b":null}],"t":true,"f":false,"e":{},"l":[]}'],
  ['{"data":null}', 'null'],
  ['{"data":[[],[[]],{}]}', '[[],[[]],{}]'],
  // Deep values are left to the encoder (which refuses what it cannot encode).
  [`{"data":${deep(64)}}`, deep(64)],
  [`{"data":${deep(65)}}`, undefined]
]

t.test('the span of "data" is the encoder\'s exact text, or undefined when the walk is unsure', async (t) => {
  for (const [text, want] of cases) {
    JSON.parse(text)
    t.equal(check(text), want, shown(text))
  }
})

t.test('a lone surrogate in the text (not from UTF-8) is left to the encoder, which escapes it', async (t) => {
  const text = '{"data":"a\ud800b"}'
  t.equal(canonicalMember(text, JSON.parse(text), 'data'), undefined)
  t.equal(encoded(text), '"a\\ud800b"')
  t.equal(check('{"data":"\ud83d\ude00"}'), '"\ud83d\ude00"', 'a pair is well formed: kept as it is')
  t.equal(check('{"data":"\ude00\ud83d"}'), undefined, 'a pair in the wrong order is two lone surrogates')
})

// Seeded random frames: values of every kind, written canonically (JSON.stringify)
// or with the liberties JSON allows, around and inside the member.
const rand = seeded(0x5ca1ab1e)
const int = (n: number): number => Math.floor(rand() * n)
const pick = <T>(list: readonly T[]): T => list[int(list.length)] as T
const KEYS = ['data', 'a', 'b', 'type', '1', '0', '__proto__', 'é', 'd"q', 'x\\y', 'data ', 'tab\t', '']
const CHARS = ['a', ' ', '"', '\\', '/', '\n', '\u0000', '\u001f', '\u007f', 'é', '中', '😀', '\u2028', '\ud800', '\udc00', 'data', '":']
const NUMBERS = [0, -0, 1, -1, 1.5, 0.1, 1e21, 1e-7, 1.5e-7, 123456789012345680, 2 ** 53 + 2, 5e-324, 1.7976931348623157e308, 0.000001, 1234.567]

function value (depth: number): unknown {
  const kind = depth > 4 ? int(4) : int(7)
  switch (kind) {
    case 0: return pick(NUMBERS) * (rand() < 0.5 ? 1 : Math.floor(rand() * 1000))
    case 1: return Array.from({ length: int(6) }, () => pick(CHARS)).join('')
    case 2: return pick([null, true, false])
    case 3: return int(1e6) / pick([1, 10, 1000, 1e7])
    case 4: return Array.from({ length: int(4) }, () => value(depth + 1))
    default: {
      const object: Record<string, unknown> = {}
      for (let n = int(5); n > 0; n--) Object.defineProperty(object, pick(KEYS), { value: value(depth + 1), enumerable: true, configurable: true, writable: true })
      return object
    }
  }
}

/** JSON of a value with liberties: whitespace, escapes the encoder does not write, other number spellings. */
function loose (v: unknown): string {
  const ws = (): string => pick(['', '', '', ' ', '\n  ', '\t'])
  if (typeof v === 'number') {
    if (rand() < 0.3 && Number.isFinite(v)) return pick([v.toExponential(), v.toExponential().toUpperCase(), v.toFixed(Math.min(20, int(5))), String(v) + (Number.isInteger(v) ? '' : '0')])
    return JSON.stringify(v)
  }
  if (typeof v === 'string') {
    if (rand() < 0.7) return JSON.stringify(v)
    return '"' + [...v].map((c) => rand() < 0.3 ? '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0')[pick(['toLowerCase', 'toUpperCase'] as const)]() : JSON.stringify(c).slice(1, -1).replace('/', rand() < 0.5 ? '\\/' : '/')).join('') + '"'
  }
  if (Array.isArray(v)) return '[' + ws() + v.map((x) => loose(x)).join(ws() + ',' + ws()) + ws() + ']'
  if (v !== null && typeof v === 'object') {
    const entries = Object.entries(v)
    if (entries.length > 0 && rand() < 0.1) entries.push(pick(entries))
    return '{' + ws() + entries.map(([k, x]) => JSON.stringify(k) + ws() + ':' + ws() + loose(x)).join(ws() + ',' + ws()) + ws() + '}'
  }
  return JSON.stringify(v)
}

function frame (): { text: string, canonical: boolean } {
  const data = value(0)
  const canonical = rand() < 0.5
  const members: Array<[string, string]> = [['type', '"publish"'], ['room', '"r"'], ['data', canonical ? JSON.stringify(data) : loose(data)]]
  for (let n = int(3); n > 0; n--) {
    const other = value(1)
    members.splice(int(members.length + 1), 0, [pick(KEYS.filter((k) => k !== 'data')), canonical ? JSON.stringify(other) : loose(other)])
  }
  if (rand() < 0.05) members.push(['data', loose(value(2))])
  const sep = canonical ? () => '' : () => pick(['', ' ', '\n'])
  return { text: '{' + sep() + members.map(([k, v]) => JSON.stringify(k) + sep() + ':' + sep() + v).join(sep() + ',' + sep()) + sep() + '}', canonical }
}

t.test('20,000 seeded random frames: the span is always the encoder\'s text when given, and given for most canonical ones', async (t) => {
  let canonicalFrames = 0
  let canonicalHits = 0
  let looseHits = 0
  const wrong: string[] = []
  for (let n = 0; n < 20_000 && wrong.length < 5; n++) {
    const { text, canonical } = frame()
    try {
      const span = check(text)
      if (canonical) {
        canonicalFrames++
        if (span !== undefined) canonicalHits++
      } else if (span !== undefined) {
        looseHits++
      }
    } catch (err) {
      wrong.push((err as Error).message)
    }
  }
  t.same(wrong, [])
  // Canonical frames miss for a repeated or integer-like key (in the frame too), an escape, or a second data member.
  t.ok(canonicalHits > canonicalFrames * 0.5, `${canonicalHits} of ${canonicalFrames} canonical frames sliced`)
  t.ok(looseHits > 0, `${looseHits} loose frames sliced where their data happened to be canonical`)
})
