/**
 * The Store contract's cases for retained messages (set, replaced, deleted, deleted by range,
 * handed over a page at a time in topic order, counted): run by `runStoreContract`
 * (contract.ts) under the names listed in `CONTRACT_CASES`.
 */
import assert from "node:assert/strict";
import type { RetainedPageSize, Store, StoredMessage, StoreOp } from "../../src/store/types.ts";
import { model, writeAndCompare } from "./contract_model.ts";
import { loadRetained, message, normalRetained } from "./fixtures.ts";

/**
 * Topics whose order differs between UTF-8 bytes (SQLite's BINARY collation, Redis's byte
 * strings) and UTF-16 code units (JavaScript, the order a start keeps): characters beyond the
 * BMP against U+E000..U+FFFF, mixed case, prefixes, levels.
 */
const ORDER_TOPICS = [
  "a",
  "A",
  "b",
  "B",
  "a/",
  "a/b",
  "ab",
  "a\u00E9",
  "a\uD7FF",
  "a\uE000",
  "a\uFF01",
  "a\uFF01x",
  "a\uFFFD",
  "a\u{10000}",
  "a\u{1F600}",
  "a\u{1F600}x",
  "a\u{10FFFF}",
  "\u{1F600}",
  "\uFF01",
  "温度",
  "$SYS/x",
  "z",
];

/** ORDER_TOPICS in a stored order that is neither of the two: every third, then the rest. */
const ORDER_WRITTEN = [
  ...ORDER_TOPICS.filter((_, i) => i % 3 === 2),
  ...ORDER_TOPICS.filter((_, i) => i % 3 !== 2).reverse(),
];

const utf8 = new TextEncoder();

/** Sorted by UTF-8 bytes: what a store comparing bytes would hand over. */
function byteOrder(topics: readonly string[]): string[] {
  const cmp = (a: string, b: string) => {
    const x = utf8.encode(a);
    const y = utf8.encode(b);
    for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
    return x.length - y.length;
  };
  return [...topics].sort(cmp);
}

async function pages(store: Store, size: RetainedPageSize, after?: string) {
  const out: StoredMessage[][] = [];
  for await (const page of store.retainedPages(size, after)) out.push(page);
  return out;
}

/** The retained-message cases, by name. */
export const RETAINED_CASES = {
  "retained messages are set, replaced and deleted": async (store) => {
    const r = (topic: string, text: string) =>
      message({ topic, retain: true, payload: new TextEncoder().encode(text) });
    await writeAndCompare(store, [
      [{ type: "retain", msg: r("a", "1") }, { type: "retain", msg: r("b", "1") }],
      [
        { type: "retain", msg: r("a", "2") },
        { type: "retain-delete", topic: "b" },
        { type: "retain-delete", topic: "never" },
        { type: "retain", msg: r("c", "1") },
        { type: "retain-delete", topic: "c" },
      ],
    ]);
    const got = await loadRetained(store);
    assert.deepEqual(got.map((m) => new TextDecoder().decode(m.payload)), ["2"]);
  },

  "retained messages come in topic order (UTF-16 code units), a page at a time": async (
    store,
  ) => {
    const want = [...ORDER_TOPICS].sort();
    // Not a test of anything unless the two orders differ.
    assert.notDeepEqual(byteOrder(ORDER_TOPICS), want);
    await store.write(
      ORDER_WRITTEN.map((topic) => ({ type: "retain", msg: message({ topic, retain: true }) })),
    );
    for (const messages of [1, 2, 5, 1000]) {
      const got = await pages(store, { messages, bytes: 1 << 30 });
      assert.deepEqual(got.flat().map((m) => m.topic), want, `pages of ${messages}`);
      for (const page of got) assert.ok(page.length >= 1 && page.length <= messages);
    }
    // From after any topic, stored or not.
    for (const after of [...want, "a\uF000", "a\u{1F601}", "0", "\u{10FFFF}"]) {
      const got = (await pages(store, { messages: 4, bytes: 1 << 30 }, after)).flat();
      assert.deepEqual(
        got.map((m) => m.topic),
        want.filter((t) => t > after),
        `after ${JSON.stringify(after)}`,
      );
    }
    // Stopping early is allowed and leaves the store as it was.
    for await (const _ of store.retainedPages({ messages: 2, bytes: 1 << 30 })) break;
    assert.deepEqual((await loadRetained(store)).map((m) => m.topic), want);
  },

  "a page of retained messages ends at the message that reaches its bytes": async (store) => {
    const topics = Array.from({ length: 22 }, (_, i) => `p/${String(i).padStart(2, "0")}`);
    const payload = new Uint8Array(10).fill(7);
    await store.write(topics.map((topic) => ({
      type: "retain",
      msg: message({ topic, payload, props: Uint8Array.of(1, 2), retain: true }),
    })));
    // 12 bytes of payload and properties each: the third reaches 25.
    const got = await pages(store, { messages: 100, bytes: 25 });
    assert.deepEqual(got.flat().map((m) => m.topic), topics);
    for (const page of got) {
      assert.ok(page.length >= 1 && page.length <= 3, `a page of ${page.length}`);
      const before = page.slice(0, -1).reduce((n, m) => n + m.payload.length + 2, 0);
      assert.ok(before < 25, `the page went on past its bytes (${before})`);
    }
    // One message over the bound is a page of its own.
    const one = await pages(store, { messages: 100, bytes: 1 });
    assert.equal(one.length, topics.length);
  },

  "retained messages are counted after a topic, with the expired ones": async (store) => {
    const now = 2_000_000_000_000;
    const expiry = (i: number) => [0, 1_700_000_000_000, 4_102_444_800_000][i % 3];
    const all = [...ORDER_TOPICS].sort();
    await store.write(ORDER_WRITTEN.map((topic) => ({
      type: "retain",
      msg: message({ topic, retain: true, expiresAt: expiry(all.indexOf(topic)) }),
    })));
    for (const after of [null, ...all, "a\uF000"]) {
      const past = all.filter((t) => after === null || t > after);
      const expired = past.filter((t) => expiry(all.indexOf(t)) === 1_700_000_000_000).length;
      const got = await store.countRetained(after, now);
      assert.equal(got.count, past.length, `after ${JSON.stringify(after)}`);
      // A shared store (Redis) lets messages expire by themselves (TTL): it holds none that
      // has, and counts none. Here its clock is set before the expiry, so they are still there.
      assert.equal(got.expired, store.shared ? 0 : expired, `after ${JSON.stringify(after)}`);
    }
  },

  "a range deletion deletes the topics between its bounds in topic order": async (store) => {
    const r = (topic: string) => message({ topic, retain: true });
    const all: StoreOp[] = ORDER_WRITTEN.map((topic) => ({ type: "retain", msg: r(topic) }));
    const range = (after: string | null, before: string | null): StoreOp => ({
      type: "retain-delete-range",
      after,
      before,
    });
    const batches: StoreOp[][] = [
      all,
      // In UTF-16 order U+1F600 comes before U+FF01: "a\u{1F600}x" and "a\u{10FFFF}" go.
      [range("a\u{1F600}", "a\uFF01")],
      [range(null, "B")],
      [range("z", null)],
      all,
      [
        // Set before the deletion in the same batch: deleted.
        { type: "retain", msg: r("a\uE001") },
        range("a\uD7FF", "b"),
        // Set after the deletion in the same batch: kept.
        { type: "retain", msg: r("a\uE000") },
      ],
      [range("b", "a")],
      [range(null, null)],
    ];
    // Compared after every batch: the last one leaves nothing to compare.
    for (let i = 0; i < batches.length; i++) {
      await store.write(batches[i]);
      const want = await model(batches.slice(0, i + 1));
      assert.deepEqual(
        normalRetained(await loadRetained(store)),
        normalRetained(want.retained),
        `after batch ${i}`,
      );
    }
  },
} satisfies Record<string, (store: Store) => Promise<void>>;
