/**
 * Tell whether a member of a parsed JSON object is written in the object's
 * text exactly as `JSON.stringify` writes its value, so that the text itself
 * may be used where the value would be encoded again. The text is walked in
 * step with the parsed value: a string without escapes is checked by its
 * length, the next backslash and its first closing quote (one indexOf), so
 * the walk costs little more than its numbers.
 */

/** Character codes both JSON readers (this one and publish-scan.ts) look for. */
export const QUOTE = 0x22
export const COMMA = 0x2c
export const COLON = 0x3a
export const OPEN_BRACE = 0x7b
export const CLOSE_BRACE = 0x7d
export const OPEN_BRACKET = 0x5b
export const CLOSE_BRACKET = 0x5d
export const MINUS = 0x2d
const PLUS = 0x2b
const DOT = 0x2e
export const ZERO = 0x30
export const NINE = 0x39

/** Deeper values are left to the encoder, which also refuses what it cannot encode. */
const MAX_DEPTH = 64
/** The most significant digits a decimal may have for its text to be the shortest one of its double (DBL_DIG). */
const EXACT_DIGITS = 15
/** In unicode mode a well-formed pair is one code point, outside this class: only a lone surrogate matches. */
export const LONE_SURROGATE = /[\ud800-\udfff]/u

/** Returned by the matchers where the text is not the encoder's: the caller encodes instead. */
const NO = -1

/**
 * The first backslash at or after the last place the walk looked from; the
 * text's length when none. A walk is synchronous and moves forward only.
 */
let backslash = 0

/**
 * The text of the value of the top-level member `key`, when it is byte for
 * byte what `JSON.stringify(object[key])` returns; otherwise undefined, and the
 * caller encodes the value. The walk needs the whole object in the encoder's
 * form, whitespace between its members aside: one member in another form
 * (an escape the encoder does not write, `1e5`, whitespace inside a value),
 * members the parse dropped or reordered (a repeated key, integer-like keys),
 * nesting deeper than 64 levels, or a lone surrogate, and it answers
 * undefined.
 * @param text a JSON object's text
 * @param object what `JSON.parse(text)` returned for it
 * @param key the member wanted
 */
export function canonicalMember (text: string, object: Record<string, unknown>, key: string): string | undefined {
  const first = text.indexOf('\\')
  backslash = first === -1 ? text.length : first
  let i = space(text, 0)
  if (text.charCodeAt(i) !== OPEN_BRACE) return undefined
  const names = Object.keys(object)
  let start = NO
  let end = NO
  for (let n = 0; n < names.length; n++) {
    const name = names[n] as string
    i = matchName(text, space(text, i + 1), name)
    if (i === NO) return undefined
    i = space(text, i)
    if (text.charCodeAt(i) !== COLON) return undefined
    const at = space(text, i + 1)
    i = matchValue(text, at, object[name], 0)
    if (i === NO) return undefined
    if (name === key) {
      start = at
      end = i
    }
    i = space(text, i)
    // As many members in the text as keys in the object: none was repeated.
    if (text.charCodeAt(i) !== (n === names.length - 1 ? CLOSE_BRACE : COMMA)) return undefined
  }
  if (start === NO) return undefined
  const span = text.slice(start, end)
  // The encoder escapes a lone surrogate; text decoded from UTF-8 holds none, any other text may.
  return LONE_SURROGATE.test(span) ? undefined : span
}

/**
 * The end of `value`'s text at `i` when it is the encoder's, or NO. The text
 * and the value are in step: the text at `i` is what parsed into `value`.
 */
function matchValue (text: string, i: number, value: unknown, depth: number): number {
  switch (typeof value) {
    case 'string':
      return matchString(text, i, value)
    case 'number':
      // In step with the parse, the number here is `value`.
      return canonicalNumberEnd(text, i)
    case 'boolean':
      return value ? (text.startsWith('true', i) ? i + 4 : NO) : (text.startsWith('false', i) ? i + 5 : NO)
    case 'object':
      if (value === null) return text.startsWith('null', i) ? i + 4 : NO
      if (depth >= MAX_DEPTH) return NO
      return Array.isArray(value) ? matchArray(text, i, value, depth + 1) : matchObject(text, i, value as Record<string, unknown>, depth + 1)
    default:
      return NO
  }
}

/**
 * A string as the encoder writes it. Without a backslash, the text between
 * the quotes has the string's length: in step with the parse, that text is
 * the string itself, which then holds nothing the encoder escapes (a quote, a
 * backslash, a control character) but perhaps a lone surrogate, which the
 * caller looks for. With one, the encoder's text is compared in full.
 * The quote that closes it must be the first after it opens: out of step (a
 * repeated key: the parse keeps the last value, the walk is at the first),
 * a later quote at the same distance would make one match span several
 * tokens, and the walk could end on a `}` with the member count still right.
 * Kept to one token per match, the walk meets every member of the text, so
 * the count catches a repeated key.
 */
function matchString (text: string, i: number, value: string): number {
  if (text.charCodeAt(i) !== QUOTE) return NO
  const close = i + 1 + value.length
  if (nextBackslash(text, i + 1) >= close) return text.charCodeAt(close) === QUOTE && text.indexOf('"', i + 1) === close ? close + 1 : NO
  const encoded = JSON.stringify(value)
  return text.startsWith(encoded, i) ? i + encoded.length : NO
}

/**
 * A member's name, compared in full: that the names in the text are the
 * object's keys, in order, is what puts the text and the values in step.
 */
function matchName (text: string, i: number, name: string): number {
  const end = matchString(text, i, name)
  return end === i + name.length + 2 && !text.startsWith(name, i + 1) ? NO : end
}

function matchArray (text: string, i: number, value: unknown[], depth: number): number {
  if (text.charCodeAt(i) !== OPEN_BRACKET) return NO
  i++
  for (let n = 0; n < value.length; n++) {
    if (n > 0) {
      if (text.charCodeAt(i) !== COMMA) return NO
      i++
    }
    i = matchValue(text, i, value[n], depth)
    if (i === NO) return NO
  }
  return text.charCodeAt(i) === CLOSE_BRACKET ? i + 1 : NO
}

/**
 * The encoder writes an object's keys in `Object.keys` order (integer-like
 * ones first): the same names in the same order, and no more of them, prove
 * that the parse repeated or reordered none, so each value is the one its
 * text parsed into.
 */
function matchObject (text: string, i: number, value: Record<string, unknown>, depth: number): number {
  if (text.charCodeAt(i) !== OPEN_BRACE) return NO
  i++
  const names = Object.keys(value)
  for (let n = 0; n < names.length; n++) {
    if (n > 0) {
      if (text.charCodeAt(i) !== COMMA) return NO
      i++
    }
    const name = names[n] as string
    i = matchName(text, i, name)
    if (i === NO || text.charCodeAt(i) !== COLON) return NO
    i = matchValue(text, i + 1, value[name], depth)
    if (i === NO) return NO
  }
  return text.charCodeAt(i) === CLOSE_BRACE ? i + 1 : NO
}

/** The end of the JSON number at `i` (its grammar only), or NO. */
export function numberEnd (text: string, i: number): number {
  if (text.charCodeAt(i) === MINUS) i++
  const intStart = i
  while (isDigit(text.charCodeAt(i))) i++
  if (i === intStart || (i - intStart > 1 && text.charCodeAt(intStart) === ZERO)) return NO
  if (text.charCodeAt(i) === DOT) {
    const fracStart = ++i
    while (isDigit(text.charCodeAt(i))) i++
    if (i === fracStart) return NO
  }
  return exponentEnd(text, i)
}

/** The end of the exponent part at `i` (`e`/`E`, a sign, digits), `i` when there is none, or NO. */
function exponentEnd (text: string, i: number): number {
  const c = text.charCodeAt(i)
  if (c !== 0x65 && c !== 0x45) return i
  i++
  const sign = text.charCodeAt(i)
  if (sign === PLUS || sign === MINUS) i++
  const expStart = i
  while (isDigit(text.charCodeAt(i))) i++
  return i === expStart ? NO : i
}

/**
 * The end of the JSON number at `i` when it is valid JSON and written as the
 * encoder prints its value (Number::toString), or NO. Most numbers are
 * decided from their digits alone, without printing the value.
 */
export function canonicalNumberEnd (text: string, i: number): number {
  const start = i
  if (text.charCodeAt(i) === MINUS) i++
  const intStart = i
  while (isDigit(text.charCodeAt(i))) i++
  const intDigits = i - intStart
  if (intDigits === 0 || (intDigits > 1 && text.charCodeAt(intStart) === ZERO)) return NO
  let fracDigits = 0
  let leadingZeros = 0
  let fraction = false
  if (text.charCodeAt(i) === DOT) {
    fraction = true
    i++
    const fracStart = i
    while (isDigit(text.charCodeAt(i))) i++
    fracDigits = i - fracStart
    // Number::toString never ends a fraction with 0.
    if (fracDigits === 0 || text.charCodeAt(i - 1) === ZERO) return NO
    while (leadingZeros < fracDigits && text.charCodeAt(fracStart + leadingZeros) === ZERO) leadingZeros++
  }
  const end = exponentEnd(text, i)
  if (end === NO) return NO
  if (end !== i) {
    i = end
  } else if (exact(intStart > start, text.charCodeAt(intStart) === ZERO && intDigits === 1, intDigits, fraction, fracDigits, leadingZeros)) {
    return i
  }
  const token = text.slice(start, i)
  return String(Number(token)) === token ? i : NO
}

/**
 * A number without exponent that Number::toString certainly prints as
 * written: at most 15 significant digits (so no other decimal that short has
 * the same double), not -0, and not so small that it prints with an exponent
 * (below 1e-6). A trailing 0 in the fraction is refused before.
 */
function exact (negative: boolean, intIsZero: boolean, intDigits: number, fraction: boolean, fracDigits: number, leadingZeros: number): boolean {
  if (!fraction) return intIsZero ? !negative : intDigits <= EXACT_DIGITS
  if (intIsZero) return leadingZeros <= 5 && fracDigits - leadingZeros <= EXACT_DIGITS
  return intDigits + fracDigits <= EXACT_DIGITS
}

/** The first index at or after `i` that is not JSON whitespace. */
function space (text: string, i: number): number {
  for (;;) {
    const c = text.charCodeAt(i)
    if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) return i
    i++
  }
}

function nextBackslash (text: string, from: number): number {
  if (backslash < from) {
    const next = text.indexOf('\\', from)
    backslash = next === -1 ? text.length : next
  }
  return backslash
}

function isDigit (c: number): boolean {
  return c >= ZERO && c <= NINE
}
