/**
 * The Store contract: what every `Store` (memory with `durable: true`,
 * SQLite, Redis) must do, as one set of tests that each implementation runs
 * with its own factory. The meaning of each op is `src/store/apply.ts`; the
 * model-based case feeds random journals to the store under test and to a
 * `MemoryStore` and compares what both load.
 *
 * The cases about sessions are in contract_sessions.ts, those about retained messages in
 * contract_retained.ts, what they compare with in contract_model.ts; this file lists every
 * case, holds those about the store as a whole (batches, reopen, secrets) and runs them.
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
import { SECRET_BYTES, type Store, type StoreOp } from "../../src/store/types.ts";
import { expectLoaded, model, writeAndCompare } from "./contract_model.ts";
import { RETAINED_CASES } from "./contract_retained.ts";
import { SESSION_CASES } from "./contract_sessions.ts";
import {
  ALL_BYTES,
  delivery,
  fullSession,
  inflight,
  journalArb,
  loadRetained,
  message,
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

function cases<S extends Store>(): Record<ContractCase, Body<S>> {
  return {
    "starts empty": async (store) => {
      assert.deepEqual(await store.loadSessions(), []);
      assert.deepEqual(await loadRetained(store), []);
      assert.equal(await store.loadSession("c1"), null);
      await store.write([]);
      assert.deepEqual(await store.loadSessions(), []);
    },

    ...SESSION_CASES,

    ...RETAINED_CASES,

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
