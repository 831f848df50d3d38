/**
 * The Store contract: what every `Store` (memory with `durable: true`,
 * SQLite, Redis) must do, as one set of tests that each implementation runs
 * with its own factory. The meaning of each op is `src/store/apply.ts`; the
 * model-based case feeds random journals to the store under test and to a
 * `MemoryStore` and compares what both load.
 *
 *     runStoreContract({
 *       name: "sqlite",
 *       newStore: () => new SqliteStore({ dir: tmp() }),
 *       reopen: (old) => new SqliteStore({ dir: old.dir }),
 *       skip: [{ reason: "...", tests: ["batch is atomic"] }],
 *     });
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { MissingSessionError } from "../../src/store/errors.ts";
import { MemoryStore } from "../../src/store/memory.ts";
import {
  type RetainedPageSize,
  SECRET_BYTES,
  type Store,
  type StoredMessage,
  type StoreOp,
} from "../../src/store/types.ts";
import {
  ALL_BYTES,
  delivery,
  fullSession,
  inflight,
  journalArb,
  loadRetained,
  message,
  normalRetained,
  normalSession,
  normalSessions,
  session,
  subscription,
} from "./fixtures.ts";

/** Names of the contract's cases, for skip lists. */
export const CONTRACT_CASES = [
  "starts empty",
  "session round-trips every field",
  "expiry values Infinity and 0 round-trip",
  "payloads and properties round-trip byte for byte",
  "enqueue and dequeue",
  "inflight is replaced by packet id and deleted",
  "incoming QoS 2 ids are a set",
  "retained messages are set, replaced and deleted",
  "retained messages come in topic order (UTF-16 code units), a page at a time",
  "a page of retained messages ends at the message that reaches its bytes",
  "retained messages are counted after a topic, with the expired ones",
  "a range deletion deletes the topics between its bounds in topic order",
  "ops on a missing session are ignored",
  "deleting a session removes its queue, inflight and QoS 2 ids",
  "a session op replaces the whole state",
  "subscribe adds or replaces one subscription in place, unsubscribe removes it",
  "subscription ops apply on top of a session op; a later session op replaces them",
  "subscription ops on a missing session are ignored",
  "deleting a session removes its subscriptions",
  "many sessions share one message",
  "loaded states are snapshots",
  "batch is atomic",
  "a batch written again leaves the state as written once",
  "reopen keeps everything",
  "random journals load as the memory model does",
  "a secret is made once per name",
  "a secret outlives a reopen",
] as const;

export type ContractCase = typeof CONTRACT_CASES[number];

export interface StoreContractOptions<S extends Store> {
  /** Prefix of every test name. */
  name: string;
  /** A new, empty, unopened store; the contract opens and closes it. */
  newStore(): S | Promise<S>;
  /**
   * A new unopened store over the same data as `closed` (already closed). Without it the
   * "reopen keeps everything" case is skipped and the random journals are not reloaded.
   */
  reopen?(closed: S): S | Promise<S>;
  /**
   * An op this store refuses (its write rejects), used to break a batch in the middle. The
   * default, a message whose payload is a Symbol, cannot be serialized by any real store.
   */
  poison?: StoreOp;
  /** Cases this store does not run, each group with its reason (shown in the test name). */
  skip?: readonly { reason: string; tests: readonly ContractCase[] }[];
  /** Runs of the model-based case (default 40). */
  numRuns?: number;
}

type Body<S extends Store> = (store: S, o: StoreContractOptions<S>) => Promise<void>;

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

async function expectLoaded(
  store: Store,
  sessions: Parameters<typeof normalSessions>[0],
  retained: readonly StoredMessage[],
): Promise<void> {
  assert.deepEqual(normalSessions(await store.loadSessions()), normalSessions(sessions));
  const loaded = await loadRetained(store);
  // Handed over in topic order, every time.
  const topics = loaded.map((m) => m.topic);
  assert.deepEqual(topics, [...topics].sort());
  assert.deepEqual(normalRetained(loaded), normalRetained(retained));
  for (const s of sessions) {
    const one = await store.loadSession(s.clientId);
    assert.ok(one, `loadSession(${JSON.stringify(s.clientId)}) is null`);
    assert.deepEqual(normalSession(one), normalSession(s));
  }
}

/** What the reference model loads after `batches`. */
async function model(batches: readonly (readonly StoreOp[])[]) {
  const m = new MemoryStore(true);
  await m.open();
  for (const b of batches) await m.write(b);
  return { sessions: await m.loadSessions(), retained: await loadRetained(m) };
}

/**
 * Writes `batches` to `store` and checks it loads what the memory model loads. A shared store
 * names the sessions it does not hold that a batch changes in part (MissingSessionError, so the
 * core writes them whole) after writing the rest: what the model's "ignored" leaves.
 */
async function writeAndCompare(store: Store, batches: readonly (readonly StoreOp[])[]) {
  for (const b of batches) {
    await store.write(b).catch((e) => {
      if (!(e instanceof MissingSessionError && store.shared)) throw e;
    });
  }
  const want = await model(batches);
  await expectLoaded(store, want.sessions, want.retained);
  const ids = new Set(want.sessions.map((s) => s.clientId));
  for (const id of ["c1", "c2", "nobody"]) {
    if (!ids.has(id)) assert.equal(await store.loadSession(id), null);
  }
}

function cases<S extends Store>(): Record<ContractCase, Body<S>> {
  return {
    "starts empty": async (store) => {
      assert.deepEqual(await store.loadSessions(), []);
      assert.deepEqual(await loadRetained(store), []);
      assert.equal(await store.loadSession("c1"), null);
      await store.write([]);
      assert.deepEqual(await store.loadSessions(), []);
    },

    "session round-trips every field": async (store) => {
      const s = fullSession("c1");
      await store.write([{ type: "session", state: s }]);
      await expectLoaded(store, [s], []);
    },

    "expiry values Infinity and 0 round-trip": async (store) => {
      const forever = session("forever", { expiresAt: Infinity, expiryInterval: 0xFFFFFFFF });
      const online = session("online", { expiresAt: 0, expiryInterval: 0, willAt: 0 });
      const willDue = session("will", {
        expiresAt: 1_700_000_000_000.25,
        willAt: 1_700_000_000_500,
        will: { msg: message({ expiresAt: 0 }), delay: 0, expiry: -1 },
      });
      await store.write([
        { type: "session", state: forever },
        { type: "session", state: online },
        { type: "session", state: willDue },
        { type: "retain", msg: message({ topic: "r/0", retain: true, expiresAt: 0 }) },
        { type: "retain", msg: message({ topic: "r/1", retain: true, expiresAt: 4e12 }) },
      ]);
      const f = await store.loadSession("forever");
      assert.equal(f?.expiresAt, Infinity);
      assert.equal(f?.expiryInterval, 0xFFFFFFFF);
      const o = await store.loadSession("online");
      assert.equal(o?.expiresAt, 0);
      assert.equal((await store.loadSession("will"))?.will?.expiry, -1);
      await expectLoaded(store, [forever, online, willDue], [
        message({ topic: "r/0", retain: true, expiresAt: 0 }),
        message({ topic: "r/1", retain: true, expiresAt: 4e12 }),
      ]);
    },

    "payloads and properties round-trip byte for byte": async (store) => {
      const big = new Uint8Array(256 * 1024).map((_, i) => (i * 7919) & 0xFF);
      const msgs = [
        message({ topic: "b/all", payload: ALL_BYTES, props: ALL_BYTES.slice().reverse() }),
        message({ topic: "b/empty", payload: new Uint8Array(0), props: new Uint8Array(0) }),
        message({ topic: "b/null-props", payload: Uint8Array.of(0), props: null }),
        // A view into a larger buffer: only the viewed bytes are the payload.
        message({ topic: "b/view", payload: ALL_BYTES.subarray(10, 20) }),
        message({ topic: "b/big", payload: big }),
        message({ topic: "b/unicode/温度/😀", payload: new TextEncoder().encode("😀\u0000x") }),
      ];
      const s = session("bin", {
        queue: msgs.map((m, i) => ({ ...delivery(m), seq: i + 1 })),
        will: { msg: msgs[0], delay: 1, expiry: 2 },
      });
      await store.write([
        { type: "session", state: s },
        ...msgs.map((m): StoreOp => ({ type: "retain", msg: { ...m, retain: true } })),
      ]);
      await expectLoaded(store, [s], msgs.map((m) => ({ ...m, retain: true })));
      const got = await store.loadSession("bin");
      assert.equal(got?.queue[3].msg.payload.byteLength, 10);
      assert.equal(got?.queue[1].msg.props?.byteLength, 0);
      assert.equal(got?.queue[2].msg.props, null);
    },

    "enqueue and dequeue": async (store) => {
      const m = message();
      await writeAndCompare(store, [
        [{ type: "session", state: session("c1") }],
        [
          { type: "enqueue", clientId: "c1", seq: 1, item: delivery(m) },
          { type: "enqueue", clientId: "c1", seq: 2, item: delivery(m, { qos: 2, subIds: [3] }) },
          { type: "enqueue", clientId: "c1", seq: 3, item: delivery(message({ topic: "z" })) },
        ],
        [{ type: "dequeue", clientId: "c1", seq: 2 }, {
          type: "dequeue",
          clientId: "c1",
          seq: 99,
        }],
      ]);
      assert.deepEqual((await store.loadSession("c1"))?.queue.map((q) => q.seq), [1, 3]);
    },

    "inflight is replaced by packet id and deleted": async (store) => {
      const m = message({ qos: 2 });
      await writeAndCompare(store, [
        [{ type: "session", state: session("c1") }],
        [
          { type: "inflight", clientId: "c1", item: inflight(1, m, { qos: 2 }) },
          { type: "inflight", clientId: "c1", item: inflight(2, m) },
          { type: "inflight", clientId: "c1", item: inflight(3, m) },
        ],
        [
          // PUBREC for 1: released, and moved to the end as apply.ts defines.
          { type: "inflight", clientId: "c1", item: inflight(1, m, { qos: 2, released: true }) },
          { type: "inflight-delete", clientId: "c1", packetId: 2 },
          { type: "inflight-delete", clientId: "c1", packetId: 42 },
        ],
      ]);
      const got = await store.loadSession("c1");
      assert.deepEqual(got?.inflight.map((f) => [f.packetId, f.released]), [[3, false], [
        1,
        true,
      ]]);
    },

    "incoming QoS 2 ids are a set": async (store) => {
      await writeAndCompare(store, [
        [{ type: "session", state: session("c1", { incomingQos2: [9] }) }],
        [
          { type: "qos2-add", clientId: "c1", packetId: 1 },
          { type: "qos2-add", clientId: "c1", packetId: 1 },
          { type: "qos2-add", clientId: "c1", packetId: 65535 },
          { type: "qos2-delete", clientId: "c1", packetId: 9 },
          { type: "qos2-delete", clientId: "c1", packetId: 7 },
        ],
      ]);
      const got = await store.loadSession("c1");
      assert.deepEqual([...got!.incomingQos2].sort((a, b) => a - b), [1, 65535]);
    },

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

    "ops on a missing session are ignored": async (store) => {
      await writeAndCompare(store, [[
        { type: "enqueue", clientId: "ghost", seq: 1, item: delivery(message()) },
        { type: "inflight", clientId: "ghost", item: inflight(1, message()) },
        { type: "qos2-add", clientId: "ghost", packetId: 1 },
        { type: "dequeue", clientId: "ghost", seq: 1 },
        { type: "session-delete", clientId: "ghost" },
      ]]);
      // Created afterwards, it starts empty: nothing was kept for it.
      await store.write([{ type: "session", state: session("ghost") }]);
      await expectLoaded(store, [session("ghost")], []);
    },

    "deleting a session removes its queue, inflight and QoS 2 ids": async (store) => {
      const m = message();
      await store.write([
        { type: "session", state: fullSession("c1") },
        { type: "session", state: session("c2") },
        { type: "enqueue", clientId: "c1", seq: 50, item: delivery(m) },
        { type: "enqueue", clientId: "c2", seq: 51, item: delivery(m) },
        { type: "inflight", clientId: "c1", item: inflight(7, m) },
        { type: "qos2-add", clientId: "c1", packetId: 8 },
      ]);
      await store.write([{ type: "session-delete", clientId: "c1" }]);
      assert.equal(await store.loadSession("c1"), null);
      await store.write([{ type: "session", state: session("c1") }]);
      const c2 = session("c2", { queue: [{ ...delivery(m), seq: 51 }] });
      await expectLoaded(store, [session("c1"), c2], []);
    },

    "a session op replaces the whole state": async (store) => {
      const m = message();
      await writeAndCompare(store, [
        [
          { type: "session", state: fullSession("c1") },
          { type: "enqueue", clientId: "c1", seq: 100, item: delivery(m) },
          { type: "qos2-add", clientId: "c1", packetId: 77 },
        ],
        [{
          type: "session",
          state: session("c1", {
            owner: "bob",
            queue: [{ ...delivery(m), seq: 101 }],
            inflight: [inflight(4, m)],
            subscriptions: [fullSession("x").subscriptions[1]],
          }),
        }],
      ]);
    },

    "subscribe adds or replaces one subscription in place, unsubscribe removes it": async (
      store,
    ) => {
      const sub = (key: string, over: Parameters<typeof subscription>[0] = {}) =>
        subscription({ key, ...over });
      await writeAndCompare(store, [
        [{ type: "session", state: session("c1", { subscriptions: [sub("a/#"), sub("b")] }) }],
        [
          { type: "subscribe", clientId: "c1", sub: sub("c/+", { qos: 2, subscriptionId: 9 }) },
          { type: "subscribe", clientId: "c1", sub: sub("$share/g/d", { noLocal: true }) },
          // Replaced where it is, with every option.
          {
            type: "subscribe",
            clientId: "c1",
            sub: sub("a/#", { qos: 0, retainAsPublished: true, retainHandling: 2 }),
          },
          { type: "subscribe", clientId: "c1", sub: sub("温度/😀") },
        ],
        [
          { type: "unsubscribe", clientId: "c1", key: "b" },
          { type: "unsubscribe", clientId: "c1", key: "never/subscribed" },
          { type: "subscribe", clientId: "c1", sub: sub("b", { subscriptionId: 268435455 }) },
        ],
      ]);
      const got = await store.loadSession("c1");
      assert.deepEqual(got?.subscriptions.map((s) => s.key), [
        "a/#",
        "c/+",
        "$share/g/d",
        "温度/😀",
        "b",
      ]);
      assert.deepEqual(got?.subscriptions[0], {
        ...sub("a/#"),
        qos: 0,
        retainAsPublished: true,
        retainHandling: 2,
      });
    },

    "subscription ops apply on top of a session op; a later session op replaces them": async (
      store,
    ) => {
      const m = message();
      await writeAndCompare(store, [
        [
          { type: "session", state: fullSession("c1") },
          { type: "subscribe", clientId: "c1", sub: subscription({ key: "new/1" }) },
          { type: "unsubscribe", clientId: "c1", key: "x/y" },
          { type: "enqueue", clientId: "c1", seq: 12, item: delivery(m) },
        ],
        [
          { type: "subscribe", clientId: "c1", sub: subscription({ key: "new/2" }) },
          { type: "unsubscribe", clientId: "c1", key: "a/#" },
          {
            type: "session",
            state: session("c1", { subscriptions: [subscription({ key: "only" })] }),
          },
          { type: "subscribe", clientId: "c1", sub: subscription({ key: "after" }) },
        ],
      ]);
      const got = await store.loadSession("c1");
      assert.deepEqual(got?.subscriptions.map((s) => s.key), ["only", "after"]);
    },

    "subscription ops on a missing session are ignored": async (store) => {
      await writeAndCompare(store, [[
        { type: "subscribe", clientId: "ghost", sub: subscription() },
        { type: "unsubscribe", clientId: "ghost", key: "t/#" },
      ]]);
      await store.write([{ type: "session", state: session("ghost") }]);
      await expectLoaded(store, [session("ghost")], []);
    },

    "deleting a session removes its subscriptions": async (store) => {
      await store.write([
        { type: "session", state: fullSession("c1") },
        { type: "subscribe", clientId: "c1", sub: subscription({ key: "added" }) },
        { type: "session", state: fullSession("c2") },
      ]);
      await store.write([{ type: "session-delete", clientId: "c1" }]);
      assert.equal(await store.loadSession("c1"), null);
      // A new session of the same client starts without any of them.
      await store.write([{ type: "session", state: session("c1") }]);
      await expectLoaded(store, [session("c1"), fullSession("c2")], []);
      await store.write([
        { type: "subscribe", clientId: "c1", sub: subscription({ key: "fresh" }) },
        { type: "session-delete", clientId: "c1" },
        { type: "session", state: session("c1") },
      ]);
      await expectLoaded(store, [session("c1"), fullSession("c2")], []);
    },

    "many sessions share one message": async (store) => {
      const shared = message({ topic: "fan/out", payload: ALL_BYTES, props: Uint8Array.of(1, 1) });
      const ids = Array.from({ length: 50 }, (_, i) => `s${i}`);
      const batches: StoreOp[][] = [
        ids.map((id) => ({ type: "session", state: session(id) })),
        ids.map((id, i) => ({ type: "enqueue", clientId: id, seq: i + 1, item: delivery(shared) })),
        // Half of them move it to inflight (a later batch, the same object), the rest keep it.
        ids.slice(0, 25).flatMap((id, i): StoreOp[] => [
          { type: "dequeue", clientId: id, seq: i + 1 },
          { type: "inflight", clientId: id, item: inflight(1, shared) },
        ]),
        // A few acknowledge it: the others must still have every byte.
        ids.slice(0, 10).map((id) => ({ type: "inflight-delete", clientId: id, packetId: 1 })),
        ids.slice(25, 35).map((id, i) => ({ type: "dequeue", clientId: id, seq: 26 + i })),
      ];
      await writeAndCompare(store, batches);
    },

    "loaded states are snapshots": async (store) => {
      const s = session("c1");
      await store.write([{ type: "session", state: s }]);
      const before = await store.loadSession("c1");
      await store.write([
        { type: "enqueue", clientId: "c1", seq: 1, item: delivery(message()) },
        { type: "qos2-add", clientId: "c1", packetId: 3 },
      ]);
      // Neither the state written nor one loaded earlier changes with later writes.
      assert.deepEqual(s, session("c1"));
      assert.deepEqual(before, session("c1"));
    },

    "batch is atomic": async (store, o) => {
      const poison: StoreOp = o.poison ?? {
        type: "retain",
        msg: message({ topic: "poison", payload: Symbol("poison") as unknown as Uint8Array }),
      };
      await store.write([{ type: "session", state: session("c1") }]);
      await assert.rejects(store.write([
        { type: "session", state: fullSession("c2") },
        { type: "enqueue", clientId: "c1", seq: 1, item: delivery(message()) },
        { type: "retain", msg: message({ topic: "before", retain: true }) },
        poison,
        { type: "retain", msg: message({ topic: "after", retain: true }) },
      ]));
      await expectLoaded(store, [session("c1")], []);
      assert.equal(await store.loadSession("c2"), null);
      // The store keeps working after a failed batch.
      await writeAndCompare(store, [
        [{ type: "session", state: session("c1") }],
        [{ type: "enqueue", clientId: "c1", seq: 2, item: delivery(message()) }],
      ]);
    },

    "a batch written again leaves the state as written once": async (store) => {
      const m = message({ topic: "replayed" });
      const first: StoreOp[] = [{ type: "session", state: fullSession("c1") }];
      const batch: StoreOp[] = [
        { type: "enqueue", clientId: "c1", seq: 12, item: delivery(m) },
        { type: "enqueue", clientId: "c1", seq: 13, item: delivery(m) },
        { type: "dequeue", clientId: "c1", seq: 10 },
        { type: "inflight", clientId: "c1", item: inflight(30, m) },
        { type: "qos2-add", clientId: "c1", packetId: 9 },
        { type: "retain", msg: message({ topic: "r", retain: true }) },
        { type: "enqueue", clientId: "c1", seq: 14, item: delivery(m) },
        { type: "dequeue", clientId: "c1", seq: 14 },
        { type: "subscribe", clientId: "c1", sub: subscription({ key: "new" }) },
        { type: "subscribe", clientId: "c1", sub: subscription({ key: "a/#", qos: 0 }) },
        { type: "unsubscribe", clientId: "c1", key: "x/y" },
        { type: "subscribe", clientId: "c1", sub: subscription({ key: "x/y", qos: 2 }) },
        { type: "unsubscribe", clientId: "c1", key: "new" },
      ];
      const later: StoreOp[] = [{ type: "enqueue", clientId: "c1", seq: 15, item: delivery(m) }];
      await store.write(first);
      await store.write(batch);
      // Applied, but the confirmation was lost: the journal writes it again, with what came since.
      await store.write([...batch, ...later]);
      const want = await model([first, batch, later]);
      await expectLoaded(store, want.sessions, want.retained);
    },

    "reopen keeps everything": () => {
      throw new Error("run by runStoreContract");
    },

    "random journals load as the memory model does": () => {
      throw new Error("run by runStoreContract");
    },

    "a secret is made once per name": async (store, o) => {
      const [a, b] = await Promise.all([store.secret("a"), store.secret("a")]);
      assert.equal(a.length, SECRET_BYTES);
      assert.deepEqual(b, a);
      assert.deepEqual(await store.secret("a"), a);
      const other = await store.secret("b");
      assert.equal(other.length, SECRET_BYTES);
      assert.notDeepEqual(other, a);
      // Random, not derived from the name alone: the same name in a new store differs.
      const fresh = await o.newStore();
      await fresh.open();
      try {
        assert.notDeepEqual(await fresh.secret("a"), a);
      } finally {
        await fresh.close();
      }
      // Sessions and retained messages are not disturbed by it.
      assert.deepEqual(await store.loadSessions(), []);
      assert.deepEqual(await loadRetained(store), []);
    },

    "a secret outlives a reopen": () => {
      throw new Error("run by runStoreContract");
    },
  };
}

/** Registers the contract's tests (`Deno.test`) for one Store implementation. */
export function runStoreContract<S extends Store>(o: StoreContractOptions<S>): void {
  const skipped = new Map<string, string>();
  for (const group of o.skip ?? []) for (const t of group.tests) skipped.set(t, group.reason);
  for (const name of ["reopen keeps everything", "a secret outlives a reopen"] as const) {
    if (!o.reopen && !skipped.has(name)) skipped.set(name, "no reopen factory given");
  }

  const withStore = async (fn: (store: S) => Promise<void>) => {
    const store = await o.newStore();
    await store.open();
    try {
      await fn(store);
    } finally {
      await store.close();
    }
  };

  const bodies = cases<S>();
  bodies["reopen keeps everything"] = async (first) => {
    const m = message({ payload: ALL_BYTES });
    const batches: StoreOp[][] = [
      [
        { type: "session", state: fullSession("c1") },
        { type: "session", state: session("c2") },
        { type: "retain", msg: message({ topic: "r", retain: true, props: Uint8Array.of(1) }) },
      ],
      [
        { type: "enqueue", clientId: "c2", seq: 1, item: delivery(m) },
        // Above the numbers of c1's queue (10, 11), as the core numbers them.
        { type: "enqueue", clientId: "c1", seq: 12, item: delivery(m) },
        { type: "inflight", clientId: "c2", item: inflight(3, m) },
        { type: "qos2-add", clientId: "c2", packetId: 4 },
        { type: "subscribe", clientId: "c2", sub: subscription({ key: "s/1", subscriptionId: 3 }) },
        { type: "subscribe", clientId: "c1", sub: subscription({ key: "a/#", qos: 0 }) },
        { type: "unsubscribe", clientId: "c1", key: "x/y" },
      ],
    ];
    for (const b of batches) await first.write(b);
    await first.close();
    const second = await o.reopen!(first);
    await second.open();
    try {
      const want = await model(batches);
      await expectLoaded(second, want.sessions, want.retained);
      // And it keeps writing where it left off.
      const more: StoreOp[] = [
        { type: "dequeue", clientId: "c2", seq: 1 },
        { type: "enqueue", clientId: "c2", seq: 5, item: delivery(m) },
        { type: "subscribe", clientId: "c2", sub: subscription({ key: "s/2" }) },
        { type: "unsubscribe", clientId: "c2", key: "s/1" },
      ];
      await second.write(more);
      const after = await model([...batches, more]);
      await expectLoaded(second, after.sessions, after.retained);
    } finally {
      await second.close();
    }
    // `withStore` closes `first` again: closing twice must be harmless.
  };
  bodies["a secret outlives a reopen"] = async (first) => {
    const made = await first.secret("decoy");
    await first.write([{ type: "session", state: session("c1") }]);
    await first.close();
    const second = await o.reopen!(first);
    await second.open();
    try {
      assert.deepEqual(await second.secret("decoy"), made);
      assert.equal((await second.loadSessions()).length, 1);
    } finally {
      await second.close();
    }
  };
  bodies["random journals load as the memory model does"] = async () => {
    await fc.assert(
      fc.asyncProperty(journalArb, async (batches) => {
        let store = await o.newStore();
        await store.open();
        try {
          await writeAndCompare(store, batches);
          if (o.reopen) {
            await store.close();
            store = await o.reopen(store);
            await store.open();
            const want = await model(batches);
            await expectLoaded(store, want.sessions, want.retained);
          }
        } finally {
          await store.close();
        }
      }),
      { numRuns: o.numRuns ?? 40 },
    );
  };

  for (const name of CONTRACT_CASES) {
    const reason = skipped.get(name);
    const body = bodies[name];
    Deno.test({
      name: `${o.name} store: ${name}${reason ? ` (skipped: ${reason})` : ""}`,
      ignore: reason !== undefined,
      fn: name === "random journals load as the memory model does"
        ? () => body(undefined as unknown as S, o)
        : () => withStore((store) => body(store, o)),
    });
  }
}
