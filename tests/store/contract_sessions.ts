/**
 * The Store contract's cases for sessions: every field of a state round-trips, the ops on its
 * queue, inflight messages, QoS 2 ids and subscriptions, deletion, and messages shared between
 * sessions. Run by `runStoreContract` (contract.ts) under the names listed in `CONTRACT_CASES`.
 */
import assert from "node:assert/strict";
import type { Store, StoreOp } from "../../src/store/types.ts";
import { expectLoaded, writeAndCompare } from "./contract_model.ts";
import {
  ALL_BYTES,
  delivery,
  fullSession,
  inflight,
  message,
  session,
  subscription,
} from "./fixtures.ts";

/** The session cases, by name. */
export const SESSION_CASES = {
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
} satisfies Record<string, (store: Store) => Promise<void>>;
