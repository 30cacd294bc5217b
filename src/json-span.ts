/**
 * Find a member of a JSON object in its text and tell whether its value is
 * written exactly as `JSON.stringify` writes the parsed value, so that the
 * text itself may be used where the value would be encoded again. Written for
 * speed: strings are skipped with `indexOf`, and nothing is allocated for a
 * value without objects.
 */

const QUOTE = 0x22
const BACKSLASH = 0x5c
const COMMA = 0x2c
const COLON = 0x3a
const OPEN_BRACE = 0x7b
const CLOSE_BRACE = 0x7d
const OPEN_BRACKET = 0x5b
const CLOSE_BRACKET = 0x5d
const MINUS = 0x2d
const DOT = 0x2e
const ZERO = 0x30
const NINE = 0x39

/** Deeper values are left to the encoder, which also refuses what it cannot encode. */
const MAX_DEPTH = 64
/** Keys of one object compared in a list up to this many, in a Set past it. */
const LIST_KEYS = 16
/** The most significant digits a decimal may have for its text to be the shortest one of its double (DBL_DIG). */
const EXACT_DIGITS = 15

/** In unicode mode a well-formed pair is one code point, outside this class: only a lone surrogate matches. */
const LONE_SURROGATE = /[\ud800-\udfff]/u

/** Returned by the scanners for text that is not canonical (or not JSON): the caller encodes instead. */
const NO = -1

/**
 * The text of the value of the top-level member `key` of a JSON object, when
 * it is byte for byte what `JSON.stringify(JSON.parse(text)[key])` returns;
 * otherwise undefined, and the caller encodes the parsed value. Undefined
 * also when the key is absent, appears twice (the parse keeps the last), or
 * appears in an escaped spelling, and for anything it is unsure of: escapes
 * the encoder would not write, numbers it would print otherwise, whitespace,
 * repeated or integer-like keys (the parse reorders them), deep nesting.
 * @param text a JSON object's text, already accepted by `JSON.parse`
 * @param key a member name that needs no escaping in JSON
 */
export function canonicalMember (text: string, key: string): string | undefined {
  const scan = new Scan(text)
  let i = scan.space(0)
  if (text.charCodeAt(i) !== OPEN_BRACE) return undefined
  i = scan.space(i + 1)
  if (text.charCodeAt(i) === CLOSE_BRACE) return undefined
  let found: string | undefined
  for (;;) {
    if (text.charCodeAt(i) !== QUOTE) return undefined
    const end = scan.stringEnd(i)
    if (end === NO) return undefined
    // An escaped key may spell `key` in other characters: unsure.
    if (scan.escaped) return undefined
    const isKey = end - i - 1 === key.length && text.startsWith(key, i + 1)
    i = scan.space(end + 1)
    if (text.charCodeAt(i) !== COLON) return undefined
    i = scan.space(i + 1)
    if (isKey) {
      if (found !== undefined) return undefined
      const valueEnd = scan.canonical(i, 0)
      if (valueEnd === NO) return undefined
      found = text.slice(i, valueEnd)
      i = valueEnd
    } else {
      i = scan.skip(i)
      if (i === NO) return undefined
    }
    i = scan.space(i)
    const c = text.charCodeAt(i)
    if (c === CLOSE_BRACE) break
    if (c !== COMMA) return undefined
    i = scan.space(i + 1)
  }
  // The encoder escapes a lone surrogate; text decoded from UTF-8 holds none, any other text may.
  return found !== undefined && !LONE_SURROGATE.test(found) ? found : undefined
}

class Scan {
  private readonly text: string
  /** The first backslash at or after the last place looked from; text.length when none. */
  private backslash: number
  /** Whether the string `stringEnd` last found has an escape. */
  escaped = false

  constructor (text: string) {
    this.text = text
    const first = text.indexOf('\\')
    this.backslash = first === -1 ? text.length : first
  }

  /** The first index at or after `i` that is not JSON whitespace. */
  space (i: number): number {
    const { text } = this
    for (;;) {
      const c = text.charCodeAt(i)
      if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) return i
      i++
    }
  }

  /**
   * The index of the closing quote of the string that opens at `i`, or NO;
   * sets `escaped`. With `strict`, NO also for an escape the encoder does not
   * write.
   */
  stringEnd (i: number, strict = false): number {
    const { text } = this
    let q = text.indexOf('"', i + 1)
    if (q === NO) return NO
    let b = this.nextBackslash(i + 1)
    this.escaped = b < q
    while (b < q) {
      let length = 2
      if (strict) {
        length = escapeLength(text, b)
        if (length === 0) return NO
      }
      // An escape may hide the quote found: look again past it.
      if (b + length > q) {
        q = text.indexOf('"', b + length)
        if (q === NO) return NO
      }
      b = this.nextBackslash(b + length)
    }
    return q
  }

  /** The end of the value at `i` (any JSON, whitespace allowed), or NO. */
  skip (i: number): number {
    const { text } = this
    const c = text.charCodeAt(i)
    if (c === QUOTE) {
      const end = this.stringEnd(i)
      return end === NO ? NO : end + 1
    }
    if (c !== OPEN_BRACE && c !== OPEN_BRACKET) {
      const start = i
      while (isValueChar(text.charCodeAt(i))) i++
      return i === start ? NO : i
    }
    let depth = 0
    for (;;) {
      const d = text.charCodeAt(i)
      if (d === QUOTE) {
        i = this.stringEnd(i)
        if (i === NO) return NO
      } else if (d === OPEN_BRACE || d === OPEN_BRACKET) {
        depth++
      } else if (d === CLOSE_BRACE || d === CLOSE_BRACKET) {
        if (--depth === 0) return i + 1
      } else if (Number.isNaN(d)) {
        return NO
      }
      i++
    }
  }

  /** The end of the value at `i` when it is written as the encoder writes it, or NO. */
  canonical (i: number, depth: number): number {
    const { text } = this
    const c = text.charCodeAt(i)
    if (c === QUOTE) return this.canonicalString(i)
    if (c === OPEN_BRACE) return depth >= MAX_DEPTH ? NO : this.canonicalObject(i, depth + 1)
    if (c === OPEN_BRACKET) return depth >= MAX_DEPTH ? NO : this.canonicalArray(i, depth + 1)
    if (c === MINUS || (c >= ZERO && c <= NINE)) return this.canonicalNumber(i)
    if (text.startsWith('true', i)) return i + 4
    if (text.startsWith('null', i)) return i + 4
    if (text.startsWith('false', i)) return i + 5
    return NO
  }

  private canonicalObject (i: number, depth: number): number {
    const { text } = this
    i++
    if (text.charCodeAt(i) === CLOSE_BRACE) return i + 1
    let list: string[] | undefined
    let set: Set<string> | undefined
    for (;;) {
      if (text.charCodeAt(i) !== QUOTE) return NO
      const end = this.canonicalString(i)
      if (end === NO) return NO
      const key = text.slice(i + 1, end - 1)
      // The parse puts integer-like keys first, in numeric order: the encoder would reorder them.
      if (isDigits(key)) return NO
      // The parse keeps the last of repeated keys, the encoder writes it once. Canonical
      // escapes spell each string one way only, so equal texts are equal keys.
      if (set !== undefined) {
        if (set.has(key)) return NO
        set.add(key)
      } else if (list === undefined) {
        list = [key]
      } else {
        if (list.includes(key)) return NO
        list.push(key)
        if (list.length > LIST_KEYS) set = new Set(list)
      }
      i = end
      if (text.charCodeAt(i) !== COLON) return NO
      i = this.canonical(i + 1, depth)
      if (i === NO) return NO
      const c = text.charCodeAt(i)
      if (c === CLOSE_BRACE) return i + 1
      if (c !== COMMA) return NO
      i++
    }
  }

  private canonicalArray (i: number, depth: number): number {
    const { text } = this
    i++
    if (text.charCodeAt(i) === CLOSE_BRACKET) return i + 1
    for (;;) {
      i = this.canonical(i, depth)
      if (i === NO) return NO
      const c = text.charCodeAt(i)
      if (c === CLOSE_BRACKET) return i + 1
      if (c !== COMMA) return NO
      i++
    }
  }

  /** The end (after the closing quote) of the string at `i` when its escapes are the encoder's, or NO. */
  private canonicalString (i: number): number {
    const close = this.stringEnd(i, true)
    return close === NO ? NO : close + 1
  }

  /** The end of the number at `i` when the encoder prints its value with the same text, or NO. */
  private canonicalNumber (i: number): number {
    const { text } = this
    const start = i
    if (text.charCodeAt(i) === MINUS) i++
    const intStart = i
    while (isDigit(text.charCodeAt(i))) i++
    const intDigits = i - intStart
    if (intDigits === 0) return NO
    let fracDigits = 0
    let leadingZeros = 0
    let lastNonZero = false
    if (text.charCodeAt(i) === DOT) {
      i++
      const fracStart = i
      while (isDigit(text.charCodeAt(i))) i++
      fracDigits = i - fracStart
      if (fracDigits === 0) return NO
      while (leadingZeros < fracDigits && text.charCodeAt(fracStart + leadingZeros) === ZERO) leadingZeros++
      lastNonZero = text.charCodeAt(i - 1) !== ZERO
    }
    const c = text.charCodeAt(i)
    const exponent = c === 0x65 || c === 0x45
    if (exponent) {
      i++
      const s = text.charCodeAt(i)
      if (s === 0x2b || s === MINUS) i++
      const expStart = i
      while (isDigit(text.charCodeAt(i))) i++
      if (i === expStart) return NO
    }
    if (!exponent && fast(text, start, intStart, intDigits, fracDigits, leadingZeros, lastNonZero)) return i
    // The general rule: the encoder prints Number::toString of the value (null when not finite).
    const token = text.slice(start, i)
    return String(Number(token)) === token ? i : NO
  }

  private nextBackslash (from: number): number {
    if (this.backslash < from) {
      const next = this.text.indexOf('\\', from)
      this.backslash = next === -1 ? this.text.length : next
    }
    return this.backslash
  }
}

/**
 * A number without exponent that the encoder certainly prints as written: at
 * most 15 significant digits (so no other decimal that short has the same
 * double), no trailing zero in the fraction, no -0, and not so small that it
 * prints with an exponent (below 1e-6).
 */
function fast (text: string, start: number, intStart: number, intDigits: number, fracDigits: number, leadingZeros: number, lastNonZero: boolean): boolean {
  const intIsZero = intDigits === 1 && text.charCodeAt(intStart) === ZERO
  if (fracDigits === 0) return intIsZero ? intStart === start : intDigits <= EXACT_DIGITS
  if (!lastNonZero) return false
  if (intIsZero) return leadingZeros <= 5 && fracDigits - leadingZeros <= EXACT_DIGITS
  return intDigits + fracDigits <= EXACT_DIGITS
}

/**
 * The length of the escape at `b` when the encoder writes it: 2 for a short
 * one, 6 for \u00XX with XX a control character that has no short escape, in
 * lowercase hex (the encoder's \u for lone surrogates is left to it); else 0.
 */
function escapeLength (text: string, b: number): number {
  const e = text.charCodeAt(b + 1)
  if (e === QUOTE || e === BACKSLASH || e === 0x62 || e === 0x66 || e === 0x6e || e === 0x72 || e === 0x74) return 2
  if (e !== 0x75 || text.charCodeAt(b + 2) !== ZERO || text.charCodeAt(b + 3) !== ZERO) return 0
  const high = text.charCodeAt(b + 4)
  const low = text.charCodeAt(b + 5)
  if (high !== ZERO && high !== 0x31) return 0
  const lowValue = isDigit(low) ? low - ZERO : low >= 0x61 && low <= 0x66 ? low - 0x61 + 10 : -1
  if (lowValue === -1) return 0
  const code = (high - ZERO) * 16 + lowValue
  // \b \t \n \f \r have short escapes.
  return code === 0x08 || code === 0x09 || code === 0x0a || code === 0x0c || code === 0x0d ? 0 : 6
}

function isDigit (c: number): boolean {
  return c >= ZERO && c <= NINE
}

function isDigits (key: string): boolean {
  if (key.length === 0) return false
  for (let k = 0; k < key.length; k++) if (!isDigit(key.charCodeAt(k))) return false
  return true
}

/** Characters of a number or a literal: the parts of a value that have no closing character. */
function isValueChar (c: number): boolean {
  return (c >= ZERO && c <= NINE) || (c >= 0x61 && c <= 0x7a) || c === MINUS || c === 0x2b || c === DOT || c === 0x45
}
