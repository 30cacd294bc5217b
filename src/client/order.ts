/**
 * Compare two strings by Unicode code point, which is the order of their
 * UTF-8 bytes: Redis's order (`ZRANGEBYLEX`), so member pages and room lists
 * come in one order on every adapter, and the SDK reads their ranges in it.
 * JavaScript's `<` compares UTF-16 code units instead, which puts a
 * character above U+FFFF (a surrogate pair, 0xD800-0xDFFF) before one of
 * U+E000-U+FFFF.
 * @returns negative when `a` comes first, positive when `b` does, 0 when equal
 */
export function compareCodePoints (a: string, b: string): number {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i)
    const y = b.charCodeAt(i)
    if (x === y) continue
    // Below 0xD800 code units keep their order; at or above it, move surrogates past U+E000-U+FFFF.
    return x < 0xd800 || y < 0xd800 ? x - y : codePointRank(x) - codePointRank(y)
  }
  return a.length - b.length
}

function codePointRank (unit: number): number {
  return unit >= 0xe000 ? unit - 0x800 : unit + 0x2000
}
