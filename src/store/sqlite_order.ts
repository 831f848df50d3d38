/**
 * Topic order in SQLite. The retained table's primary key compares topics as SQLite's BINARY
 * collation does: memcmp of their UTF-8 bytes, which is code point order. Topic order is UTF-16
 * code unit order (as JavaScript compares strings, see `compareTopics`), and the two differ: a
 * character beyond the BMP (U+10000.., a surrogate pair in UTF-16, lead byte F0-F4 in UTF-8)
 * sorts before U+E000..U+FFFF (lead byte EE or EF) in UTF-16 and after them in UTF-8. So
 * "a\u{1F600}" < "a\uFF01" in JavaScript, and the other way round in SQLite.
 *
 * The order key below is the topic's UTF-8 with the lead bytes EE..F4 renamed so that memcmp
 * sorts supplementary characters before U+E000..U+FFFF: EE, EF become F3, F4 and F0..F4 become
 * EE..F2. Why that is exactly UTF-16 order: at the first byte where two UTF-8 strings differ,
 * either both are continuation bytes of characters with the same lead byte (same length, and
 * within one length code point order is UTF-16 order: one code unit each, or surrogate pairs,
 * which sort as their code points), untouched by the renaming; or both are lead bytes of the
 * characters where the strings first differ, and UTF-16 puts those in the groups
 * [U+0000, U+D800) < supplementary < [U+E000, U+FFFF], lead bytes 00..ED < F0..F4 < EE..EF,
 * which the renaming makes memcmp order while keeping the order within each group (bytes
 * EE..F4 occur nowhere but as lead bytes). A string that is a prefix of another sorts first in
 * both orders.
 *
 * Topics without a character at or above U+E000 (nearly all) have no such byte: their key is
 * their UTF-8, and the store keeps no key for them (NULL; the index is on
 * `coalesce(okey, CAST(topic AS BLOB))`, the same bytes). Tested with such topics in the store
 * contract (tests/store/contract_retained.ts).
 */

/** Code units at or above U+D800: a surrogate (a character beyond the BMP) or U+E000..U+FFFF. */
const HIGH = /[\uD800-\uFFFF]/;

const encoder = new TextEncoder();

/** Lead byte renaming: EE, EF -> F3, F4; F0..F4 -> EE..F2. */
const RENAMED: Record<number, number> = {
  0xEE: 0xF3,
  0xEF: 0xF4,
  0xF0: 0xEE,
  0xF1: 0xEF,
  0xF2: 0xF0,
  0xF3: 0xF1,
  0xF4: 0xF2,
};

/**
 * The bytes whose memcmp order is the topic order of `topic`, or null when those are its UTF-8
 * (no character at or above U+E000).
 */
export function orderKey(topic: string): Uint8Array | null {
  if (!HIGH.test(topic)) return null;
  const bytes = encoder.encode(topic);
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    if (b >= 0xEE) bytes[i] = RENAMED[b] ?? b;
  }
  return bytes;
}

/** The order key of every stored topic, in SQL: the index's expression, used as written. */
export const ORDER_KEY_SQL = "coalesce(okey, CAST(topic AS BLOB))";
