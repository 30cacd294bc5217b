import { canonicalNumberEnd, CLOSE_BRACE, CLOSE_BRACKET, COLON, COMMA, MINUS, NINE, numberEnd, OPEN_BRACE, OPEN_BRACKET, QUOTE, ZERO } from './json-span.js'
import type { PublishFrame, RequestId } from './protocol.js'

/**
 * The fast path for the commonest frame: a `publish` written compactly, as
 * `JSON.stringify` writes it, with nothing that needs an escape. It is read in
 * one pass, without `JSON.parse`: its members, and its `data` as text, which
 * is parsed later only if something asks for the value (a data schema, an
 * `onPublish` hook, or data not in the encoder's form only through its keys,
 * to encode it again: a number written otherwise is rewritten in place).
 * Anything else, and anything it is unsure of, is left to `JSON.parse`:
 * whitespace, a backslash or a control character anywhere, a lone surrogate,
 * a member other than type, room, id, data and ephemeral, a repeated member,
 * an id that is not a string or a small integer, data nested deeper than 64
 * levels, a frame over 512 characters.
 */

const NO = -1

/** Deeper data is left to JSON.parse (and the encoder, which refuses what it cannot encode). */
const MAX_DEPTH = 64
/** Keys of one object compared one by one up to this many, in a Set past it. */
const LIST_KEYS = 16
/**
 * Longer frames are left to JSON.parse, which reads long strings faster than
 * the check below.
 */
const MAX_LENGTH = 512
/**
 * What keeps a frame off the fast path: a control character (JSON whitespace
 * included), a backslash, or a lone surrogate (in unicode mode a well-formed
 * pair is one code point, outside the class). Without them every string is
 * the text between two quotes, valid, and as the encoder writes it.
 */
const UNSAFE = /[\u0000-\u001f\\\ud800-\udfff]/u

const TYPE = 1
const ROOM = 2
const ID = 4
const DATA = 8
const EPHEMERAL = 16

const UNPARSED = Symbol('unparsed')

/**
 * A publish frame as the fast path read it (a `PublishFrame` once the schema
 * has checked it): its data is parsed from its text only when something asks
 * for the value.
 */
export class ScannedPublishFrame implements PublishFrame {
  readonly type = 'publish' as const
  readonly room: string
  readonly id: RequestId | undefined
  readonly ephemeral: boolean | undefined
  /** `data`'s text in the frame: valid JSON. */
  private readonly dataText: string
  /**
   * `data` as `JSON.stringify` writes its parse: its text, or its text with
   * the numbers written as the encoder writes them; undefined when only
   * encoding the parse can tell (a repeated or integer-like key).
   */
  readonly dataJson: string | undefined
  /** Whether `dataJson` is `data`'s text in the frame, so no larger than the frame. */
  readonly dataJsonInFrame: boolean
  private parsed: unknown = UNPARSED

  constructor (room: string, id: RequestId | undefined, ephemeral: boolean | undefined, dataText: string, dataJson: string | undefined) {
    this.room = room
    this.id = id
    this.ephemeral = ephemeral
    this.dataText = dataText
    this.dataJson = dataJson
    this.dataJsonInFrame = dataJson === dataText
  }

  get data (): unknown {
    if (this.parsed === UNPARSED) this.parsed = JSON.parse(this.dataText)
    return this.parsed
  }
}

/**
 * Read a compact publish frame, or answer undefined (then `JSON.parse` reads
 * it). What it returns is what `JSON.parse` makes of the frame, with
 * `dataJson` as `JSON.stringify(JSON.parse(text).data)` when the text is
 * that already; the frame's schema is checked by the caller, as for any frame.
 */
export function scanPublish (text: string): ScannedPublishFrame | undefined {
  if (text.length > MAX_LENGTH || text.charCodeAt(0) !== OPEN_BRACE || UNSAFE.test(text)) return undefined
  keyTop = 0
  canonical = true
  numberTop = 0
  let seen = 0
  let room: string | undefined
  let id: RequestId | undefined
  let ephemeral: boolean | undefined
  let dataStart = NO
  let dataEnd = NO
  let i = 1
  for (;;) {
    if (text.charCodeAt(i) !== QUOTE) return undefined
    const close = plainString(text, i)
    if (close === NO || text.charCodeAt(close + 1) !== COLON) return undefined
    const member = memberOf(text, i + 1, close - i - 1)
    if (member === 0 || (seen & member) !== 0) return undefined
    seen |= member
    i = close + 2
    if (member === TYPE) {
      if (!text.startsWith('"publish"', i)) return undefined
      i += 9
    } else if (member === ROOM) {
      if (text.charCodeAt(i) !== QUOTE) return undefined
      const end = plainString(text, i)
      if (end === NO) return undefined
      room = text.slice(i + 1, end)
      i = end + 1
    } else if (member === ID) {
      if (text.charCodeAt(i) === QUOTE) {
        const end = plainString(text, i)
        if (end === NO) return undefined
        id = text.slice(i + 1, end)
        i = end + 1
      } else {
        const end = smallInteger(text, i)
        if (end === NO) return undefined
        id = Number(text.slice(i, end))
        i = end
      }
    } else if (member === EPHEMERAL) {
      if (text.startsWith('true', i)) {
        ephemeral = true
        i += 4
      } else if (text.startsWith('false', i)) {
        ephemeral = false
        i += 5
      } else {
        return undefined
      }
    } else {
      dataStart = i
      i = value(text, i, 0)
      if (i === NO) return undefined
      dataEnd = i
    }
    const c = text.charCodeAt(i)
    if (c === CLOSE_BRACE) break
    if (c !== COMMA) return undefined
    i++
  }
  if (i !== text.length - 1 || (seen & (TYPE | ROOM | DATA)) !== (TYPE | ROOM | DATA)) return undefined
  const dataText = text.slice(dataStart, dataEnd)
  const dataJson = !canonical ? undefined : numberTop === 0 ? dataText : rewriteNumbers(text, dataStart, dataEnd)
  return new ScannedPublishFrame(room as string, id, ephemeral, dataText, dataJson)
}

/**
 * text[start, end) with each number of `numberPlaces` written as the encoder
 * writes its parse: JSON.parse reads a number token as `Number` does, and
 * JSON.stringify writes a finite number as `String` does (-0 as 0) and any
 * other as null (1e400 parses to Infinity).
 */
function rewriteNumbers (text: string, start: number, end: number): string {
  let out = ''
  let at = start
  for (let k = 0; k < numberTop; k += 2) {
    const from = numberPlaces[k] as number
    const to = numberPlaces[k + 1] as number
    const n = Number(text.slice(from, to))
    out += text.slice(at, from) + (Number.isFinite(n) ? String(n) : 'null')
    at = to
  }
  return out + text.slice(at, end)
}

/** Which member a name is (0: none the fast path reads). */
function memberOf (text: string, at: number, length: number): number {
  if (length === 4) {
    if (text.startsWith('data', at)) return DATA
    if (text.startsWith('room', at)) return ROOM
    if (text.startsWith('type', at)) return TYPE
    return 0
  }
  if (length === 2) return text.startsWith('id', at) ? ID : 0
  if (length === 9) return text.startsWith('ephemeral', at) ? EPHEMERAL : 0
  return 0
}

/** The end of an integer of at most 15 digits at `i` (no -0, no leading zero), or NO: such an id is exactly its Number. */
function smallInteger (text: string, i: number): number {
  const start = text.charCodeAt(i) === MINUS ? i + 1 : i
  let end = start
  while (isDigit(text.charCodeAt(end))) end++
  const digits = end - start
  if (digits === 0 || digits > 15) return NO
  if (text.charCodeAt(start) === ZERO && (digits > 1 || start !== i)) return NO
  return end
}

/**
 * The end of the JSON value at `i` when it is valid, or NO; `canonical`
 * becomes false when it is not exactly as the encoder writes its parse
 * because of a repeated or integer-like key, and a number printed otherwise
 * is noted in `numberPlaces`.
 */
function value (text: string, i: number, depth: number): number {
  const c = text.charCodeAt(i)
  if (c === QUOTE) {
    const end = plainString(text, i)
    return end === NO ? NO : end + 1
  }
  if (c === OPEN_BRACE) return depth >= MAX_DEPTH ? NO : object(text, i, depth + 1)
  if (c === OPEN_BRACKET) return depth >= MAX_DEPTH ? NO : array(text, i, depth + 1)
  if (c === MINUS || isDigit(c)) {
    const end = canonicalNumberEnd(text, i)
    if (end !== NO) return end
    const loose = numberEnd(text, i)
    if (loose !== NO) {
      numberPlaces[numberTop++] = i
      numberPlaces[numberTop++] = loose
    }
    return loose
  }
  if (text.startsWith('true', i) || text.startsWith('null', i)) return i + 4
  if (text.startsWith('false', i)) return i + 5
  return NO
}

/**
 * Where the keys of the objects being read start and end, pairs on a stack
 * of `keyTop` entries: each object compares a key with its earlier ones in
 * place, and gives its places back when it is read. The array only grows
 * (truncating it would free its storage, to be allocated again).
 */
const keyPlaces: number[] = []
let keyTop = 0
/** Whether the data read so far is in the encoder's form but for its numbers (it is valid JSON either way). */
let canonical = true
/**
 * Where the numbers not in the encoder's form start and end, in text order,
 * pairs of `numberTop` entries (the array only grows, as `keyPlaces`).
 */
const numberPlaces: number[] = []
let numberTop = 0

function object (text: string, i: number, depth: number): number {
  const base = keyTop
  const end = members(text, i, depth, base)
  keyTop = base
  return end
}

function members (text: string, i: number, depth: number, base: number): number {
  i++
  if (text.charCodeAt(i) === CLOSE_BRACE) return i + 1
  let set: Set<string> | undefined
  for (;;) {
    if (text.charCodeAt(i) !== QUOTE) return NO
    const start = i + 1
    const close = plainString(text, i)
    if (close === NO || text.charCodeAt(close + 1) !== COLON) return NO
    // Valid JSON either way, but the parse would reorder (an integer-like key) or
    // drop (a repeated key) what the text holds: then the data is encoded again.
    if (canonical) {
      if (isIndexLike(text, start, close)) {
        canonical = false
      } else if (set !== undefined) {
        const key = text.slice(start, close)
        if (set.has(key)) canonical = false
        set.add(key)
      } else {
        for (let k = base; k < keyTop; k += 2) {
          if (sameText(text, keyPlaces[k] as number, keyPlaces[k + 1] as number, start, close)) canonical = false
        }
        keyPlaces[keyTop++] = start
        keyPlaces[keyTop++] = close
        if (keyTop - base > 2 * LIST_KEYS) {
          set = new Set()
          for (let k = base; k < keyTop; k += 2) set.add(text.slice(keyPlaces[k], keyPlaces[k + 1]))
        }
      }
    }
    i = value(text, close + 2, depth)
    if (i === NO) return NO
    const c = text.charCodeAt(i)
    if (c === CLOSE_BRACE) return i + 1
    if (c !== COMMA) return NO
    i++
  }
}

/** Whether text[a, aEnd) and text[b, bEnd) are the same characters. */
function sameText (text: string, a: number, aEnd: number, b: number, bEnd: number): boolean {
  if (aEnd - a !== bEnd - b) return false
  for (; a < aEnd; a++, b++) if (text.charCodeAt(a) !== text.charCodeAt(b)) return false
  return true
}

function array (text: string, i: number, depth: number): number {
  i++
  if (text.charCodeAt(i) === CLOSE_BRACKET) return i + 1
  for (;;) {
    i = value(text, i, depth)
    if (i === NO) return NO
    const c = text.charCodeAt(i)
    if (c === CLOSE_BRACKET) return i + 1
    if (c !== COMMA) return NO
    i++
  }
}

/** The index of the closing quote of the string that opens at `i` (see UNSAFE: there is no escape), or NO. */
function plainString (text: string, i: number): number {
  return text.indexOf('"', i + 1)
}

/** Digits only: the parse may put such a key before the others (an array index). */
function isIndexLike (text: string, start: number, end: number): boolean {
  if (end === start) return false
  for (let k = start; k < end; k++) if (!isDigit(text.charCodeAt(k))) return false
  return true
}

function isDigit (c: number): boolean {
  return c >= ZERO && c <= NINE
}
