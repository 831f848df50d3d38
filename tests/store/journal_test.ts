/**
 * The journal between the core and a store: an op that replaces a whole session or a topic's
 * retained message drops the unwritten ops it makes pointless, so what waits while the store
 * fails stays bounded by the state, and the store still ends as if every op had been written in
 * order.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { Journal } from "../../src/session/journal.ts";
import { MemoryStore } from "../../src/store/memory.ts";
import { SqliteStore } from "../../src/store/sqlite.ts";
import type { Store, StoreOp } from "../../src/store/types.ts";
import { delay } from "../helpers/broker.ts";
import {
  delivery,
  journalArb,
  loadRetained,
  message,
  normalRetained,
  normalSessions,
  session,
} from "./fixtures.ts";

/** Records each batch it is given; refuses (without applying) while `failing`. */
class Recorder extends MemoryStore {
  readonly batches: StoreOp[][] = [];
  failing = false;

  constructor(readonly inner: Store = new MemoryStore(true)) {
    super(true);
  }

  override write(ops: readonly StoreOp[]): Promise<void> {
    this.batches.push([...ops]);
    if (this.failing) return Promise.reject(new Error("refused"));
    return this.inner.write(ops);
  }
}

const retain = (topic: string, payload: string): StoreOp => ({
  type: "retain",
  msg: message({ topic, retain: true, payload: new TextEncoder().encode(payload) }),
});

Deno.test("journal: a session op replaces the unwritten whole-session op before it; partial ops stay in order", async () => {
  const store = new Recorder();
  const j = new Journal(store);
  const m = message();
  j.push({ type: "session", state: session("c1") });
  j.push({ type: "enqueue", clientId: "c1", seq: 1, item: delivery(m) });
  j.push({ type: "session", state: session("c2") });
  j.push({ type: "session", state: session("c1", { queue: [{ ...delivery(m), seq: 1 }] }) });
  j.push({ type: "session-delete", clientId: "c2" });
  // Every push counts: a publish compares the count before and after routing.
  assert.equal(j.size, 5);
  assert.equal(j.unwritten, 3);
  await j.drain();
  assert.deepEqual(store.batches.map((b) => b.map((op) => op.type)), [[
    "enqueue",
    "session",
    "session-delete",
  ]]);
});

Deno.test("journal: while the store fails, a topic's retained updates wait as at most two ops, and the last one is written", async () => {
  const store = new Recorder();
  const j = new Journal(store);
  store.failing = true;
  for (let i = 0; i < 1000; i++) {
    j.push(retain(`t/${i % 3}`, `${i}`));
    if (i % 100 === 0) await delay(60); // retries happen meanwhile
  }
  assert.ok(j.unwritten <= 6, `${j.unwritten} ops unwritten for 3 topics`);
  assert.ok(j.full === false);
  const waited = j.pending;
  store.failing = false;
  await waited;
  const got = new Map(
    (await loadRetained(store.inner)).map((r) => [r.topic, new TextDecoder().decode(r.payload)]),
  );
  assert.deepEqual(Object.fromEntries(got), { "t/0": "999", "t/1": "997", "t/2": "998" });
  j.close();
});

Deno.test("journal: a persistent client reconnecting while the store fails waits as one session op", async () => {
  const store = new Recorder();
  const j = new Journal(store);
  store.failing = true;
  for (let i = 0; i < 5000; i++) {
    j.push({ type: "session", state: session("flappy", { expiresAt: i }) });
    if (i % 1000 === 0) await delay(60);
  }
  assert.ok(j.unwritten <= 2, `${j.unwritten} ops unwritten`);
  store.failing = false;
  await j.drain();
  const [s] = await store.inner.loadSessions();
  assert.equal(s.expiresAt, 4999);
});

/**
 * Sessions in normal form, each one's subscriptions by key: a subscription op that replaces an
 * unwritten one of the same filter is written in the later one's place, so a filter subscribed
 * for the first time and then changed may be stored after filters subscribed in between (the
 * router, which keeps it in its first place, restores it from there: their order means nothing
 * to it).
 */
function bySubscriptionKey(list: Parameters<typeof normalSessions>[0]) {
  return normalSessions(list).map((s) => ({
    ...s,
    subscriptions: [...s.subscriptions].sort((a, b) => a.key < b.key ? -1 : a.key > b.key ? 1 : 0),
  }));
}

/**
 * Random journals pushed op by op, in turns, into a store that refuses some writes: the store
 * ends with what applying every op in order gives (the memory model), for the memory store and
 * for SQLite.
 */
for (const kind of ["memory", "sqlite"] as const) {
  Deno.test(`journal: random ops through refused writes end as every op applied in order (${kind})`, async () => {
    const root = await Deno.makeTempDir({ prefix: "mcloudtt-journal-test-" });
    let n = 0;
    try {
      await fc.assert(
        fc.asyncProperty(
          journalArb,
          fc.array(fc.boolean(), { minLength: 8, maxLength: 8 }),
          async (batches, refusals) => {
            const inner = kind === "memory"
              ? new MemoryStore(true)
              : new SqliteStore({ dir: `${root}/d${n++}` });
            await inner.open();
            const store = new Recorder(inner);
            const j = new Journal(store);
            try {
              for (const [i, batch] of batches.entries()) {
                store.failing = refusals[i];
                for (const op of batch) j.push(op);
                await delay(0);
              }
              store.failing = false;
              await j.drain();
              const model = new MemoryStore(true);
              for (const op of batches.flat()) await model.write([op]);
              assert.deepEqual(
                bySubscriptionKey(await inner.loadSessions()),
                bySubscriptionKey(await model.loadSessions()),
              );
              assert.deepEqual(
                normalRetained(await loadRetained(inner)),
                normalRetained(await loadRetained(model)),
              );
            } finally {
              j.close();
              await inner.close();
            }
          },
        ),
        { numRuns: 60 },
      );
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  });
}

Deno.test("journal: while the store fails, a client toggling subscriptions waits as one op per subscription, and the store ends as every op applied in order", async () => {
  const store = new Recorder();
  const j = new Journal(store);
  const sub = (key: string, qos: 0 | 1 | 2 = 1) => ({
    key,
    qos,
    noLocal: false,
    retainAsPublished: false,
    retainHandling: 0 as const,
    subscriptionId: 0,
  });
  const all: StoreOp[] = [{ type: "session", state: session("c1") }];
  j.push(all[0]);
  await j.drain();
  store.failing = true;
  for (let i = 0; i < 3000; i++) {
    const key = `t/${i % 3}`;
    const op: StoreOp = i % 2 === 0
      ? { type: "subscribe", clientId: "c1", sub: sub(key, (i % 3) as 0 | 1 | 2) }
      : { type: "unsubscribe", clientId: "c1", key };
    // A whole-session write in the middle (a takeover): what came before it is in it.
    if (i === 1500) {
      const s: StoreOp = { type: "session", state: session("c1", { subscriptions: [sub("w")] }) };
      all.push(s);
      j.push(s);
    }
    all.push(op);
    j.push(op);
    if (i % 500 === 0) await delay(60); // retries happen meanwhile
  }
  // 3 subscriptions and the session op: at most twice that (the failed batch and the next).
  assert.ok(j.unwritten <= 8, `${j.unwritten} ops unwritten`);
  store.failing = false;
  await j.drain();
  const model = new MemoryStore(true);
  await model.write(all);
  assert.deepEqual(await store.inner.loadSession("c1"), await model.loadSession("c1"));
  assert.deepEqual(
    (await store.inner.loadSession("c1"))?.subscriptions.map((s) => s.key).sort(),
    // The last ops: t/0 unsubscribed (i = 2997), t/1 subscribed (2998), t/2 unsubscribed.
    ["t/1", "w"],
  );
  j.close();
});
