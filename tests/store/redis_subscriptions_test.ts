/**
 * The Redis store's subscription ops against a real redis-server: the `subs` list (what older
 * versions read and write) stays the core's order; its index (`subk`) is rebuilt when an older
 * version wrote the list alone; deleting a session leaves none of its keys; ops on a session
 * Redis lost are refused by name; and one op's Redis work does not grow with the session.
 */
import assert from "node:assert/strict";
import { RedisServer, skipWithoutRedis } from "../helpers/redis.ts";
import { commandStats } from "../helpers/redis_resp.ts";
import { MissingSessionError } from "../../src/store/errors.ts";
import { MemoryStore } from "../../src/store/memory.ts";
import { encodeSubscription } from "../../src/store/redis_codec.ts";
import type { StoredSubscription, StoreOp } from "../../src/store/types.ts";
import { redisClient, sampleSession, storeNode } from "./redis_fixture.ts";

const ignore = skipWithoutRedis();

function sub(key: string, over: Partial<StoredSubscription> = {}): StoredSubscription {
  return {
    key,
    qos: 1,
    noLocal: false,
    retainAsPublished: false,
    retainHandling: 0,
    subscriptionId: 0,
    ...over,
  };
}

/** What the memory model loads after `batches`. */
async function model(batches: StoreOp[][]) {
  const m = new MemoryStore(true);
  for (const b of batches) await m.write(b);
  return m;
}

Deno.test(
  "redis store: subscription ops on a session stored by the previous version (the subs list " +
    "alone) apply in place, and the list older versions read keeps the core's order",
  { ignore },
  async () => {
    await using server = await RedisServer.start();
    await using store = await storeNode(server, "A");
    await using redis = await redisClient(server);
    const first: StoreOp[] = [{ type: "session", state: sampleSession("c1") }];
    await store.write(first);
    // What the previous version left: no index.
    await redis.del("t:{s:c1}:subk");
    const ops: StoreOp[] = [
      { type: "subscribe", clientId: "c1", sub: sub("c/温度") },
      { type: "subscribe", clientId: "c1", sub: sub("a/#", { qos: 0, subscriptionId: 3 }) },
      { type: "unsubscribe", clientId: "c1", key: "$share/g/b/+" },
      { type: "subscribe", clientId: "c1", sub: sub("d") },
    ];
    await store.write(ops);
    const want = await model([first, ops]);
    assert.deepStrictEqual(await store.loadSession("c1"), await want.loadSession("c1"));
    // The list an older node reads: every change, in the router's order (a replaced one where
    // it was).
    assert.deepEqual(await redis.lrange("t:{s:c1}:subs", 0, -1), [
      encodeSubscription(sub("a/#", { qos: 0, subscriptionId: 3 })),
      encodeSubscription(sub("c/温度")),
      encodeSubscription(sub("d")),
    ]);
    assert.equal(await redis.hlen("t:{s:c1}:subk"), 3);
  },
);

Deno.test(
  "redis store: after an older version rewrote the subs list alone, the index is rebuilt from it",
  { ignore },
  async () => {
    await using server = await RedisServer.start();
    await using store = await storeNode(server, "A");
    await using redis = await redisClient(server);
    await store.write([
      { type: "session", state: sampleSession("c1") },
      { type: "subscribe", clientId: "c1", sub: sub("c") },
    ]);
    assert.equal(await redis.hlen("t:{s:c1}:subk"), 3);
    // An older node's whole write: the list replaced (as many entries as the index has), the
    // index (unknown to it) left as it was, itself the last writer.
    await redis.del("t:{s:c1}:subs");
    await redis.rpush("t:{s:c1}:subs", ...["x", "y", "w"].map((k) => encodeSubscription(sub(k))));
    await redis.hset("t:{s:c1}:meta", "w", "older-node");
    await store.write([
      { type: "unsubscribe", clientId: "c1", key: "x" },
      { type: "subscribe", clientId: "c1", sub: sub("y", { qos: 2 }) },
      { type: "unsubscribe", clientId: "c1", key: "a/#" },
    ]);
    assert.deepEqual(
      (await store.loadSession("c1"))?.subscriptions,
      [sub("y", { qos: 2 }), sub("w")],
    );
    assert.deepEqual((await redis.hkeys("t:{s:c1}:subk")).sort(), ["w", "y"]);
    // And an older node's write that does not touch subscriptions (a queued message) is not
    // taken for one that did: the index is checked again, and still right.
    await redis.hset("t:{s:c1}:meta", "w", "older-node");
    await store.write([{ type: "unsubscribe", clientId: "c1", key: "w" }]);
    assert.deepEqual((await store.loadSession("c1"))?.subscriptions, [sub("y", { qos: 2 })]);
  },
);

Deno.test(
  "redis store: deleting a session leaves none of its keys; the index expires with the session",
  { ignore },
  async () => {
    await using server = await RedisServer.start();
    await using store = await storeNode(server, "A", { ttlGraceMs: 1000 });
    await using redis = await redisClient(server);
    const expiresAt = Date.now() + 10_000;
    await store.write([
      { type: "session", state: sampleSession("c1", { expiresAt }) },
      { type: "subscribe", clientId: "c1", sub: sub("more") },
      { type: "session", state: sampleSession("c2") },
    ]);
    const ttl = await redis.pttl("t:{s:c1}:subk");
    assert.ok(ttl > 9_000 && ttl <= 11_000, `subk PTTL ${ttl}`);
    await store.write([{ type: "session-delete", clientId: "c1" }]);
    assert.deepEqual(await redis.keys("t:{s:c1}:*"), []);
    assert.equal(await store.loadSession("c1"), null);
    // The other session keeps its own.
    assert.equal((await store.loadSession("c2"))?.subscriptions.length, 2);
  },
);

Deno.test(
  "redis store: subscription ops on a session Redis no longer holds are refused by name and " +
    "write nothing",
  { ignore },
  async () => {
    await using server = await RedisServer.start();
    await using store = await storeNode(server, "A");
    await using redis = await redisClient(server);
    await store.write([{ type: "session", state: sampleSession("c1") }]);
    await redis.flushall();
    for (
      const op of [
        { type: "subscribe", clientId: "c1", sub: sub("x") },
        { type: "unsubscribe", clientId: "c1", key: "a/#" },
      ] satisfies StoreOp[]
    ) {
      const e = await store.write([op]).then(() => null, (e: unknown) => e);
      assert.ok(e instanceof MissingSessionError, `got ${e}`);
      assert.deepEqual(e.clientIds, ["c1"]);
    }
    assert.deepEqual(await redis.keys("*"), []);
  },
);

Deno.test(
  "redis store: the Redis commands of a subscribe or unsubscribe do not grow with the " +
    "session's subscriptions",
  { ignore },
  async () => {
    await using server = await RedisServer.start();
    await using store = await storeNode(server, "A");
    const many = Array.from({ length: 3000 }, (_, i) => sub(`many/${i}`));
    await store.write([
      { type: "session", state: sampleSession("big", { subscriptions: many }) },
      { type: "session", state: sampleSession("small", { subscriptions: [] }) },
      // The first change after a whole write builds the index (once per connection).
      { type: "subscribe", clientId: "big", sub: sub("first") },
      { type: "subscribe", clientId: "small", sub: sub("first") },
    ]);
    /** Redis commands (scripts' own calls included) run by 20 changes of `clientId`. */
    const commands = async (clientId: string) => {
      const before = await commandStats(server);
      for (let i = 0; i < 10; i++) {
        await store.write([{ type: "subscribe", clientId, sub: sub(`new/${i}`) }]);
        await store.write([{ type: "unsubscribe", clientId, key: `new/${i}` }]);
      }
      const after = await commandStats(server);
      const out: Record<string, number> = {};
      for (const [k, n] of after) {
        const d = n - (before.get(k) ?? 0);
        // INFO itself, and the count of the one before.
        if (d !== 0 && k !== "info") out[k] = d;
      }
      return out;
    };
    const big = await commands("big");
    assert.deepEqual(big, await commands("small"));
    // No list of the session is read.
    assert.equal(big.lrange, undefined, JSON.stringify(big));
  },
);

Deno.test(
  "redis store: a session adopted from a dead older node that rewrote the subs list alone has " +
    "its index rebuilt (the adoption makes this node the last writer without writing subs)",
  { ignore },
  async () => {
    await using server = await RedisServer.start();
    await using store = await storeNode(server, "A");
    await using redis = await redisClient(server);
    await store.write([
      { type: "session", state: sampleSession("c1") },
      { type: "subscribe", clientId: "c1", sub: sub("c") },
    ]);
    // An older node's whole write (as in the test above), then that node dies.
    await redis.del("t:{s:c1}:subs");
    await redis.rpush("t:{s:c1}:subs", ...["x", "y", "w"].map((k) => encodeSubscription(sub(k))));
    await redis.hset("t:{s:c1}:meta", "w", "older-node");
    const adopted = await store.adoptSession("c1", "older-node");
    assert.deepEqual(adopted?.subscriptions.map((s) => s.key), ["x", "y", "w"]);
    await store.write([{ type: "unsubscribe", clientId: "c1", key: "x" }]);
    assert.deepEqual(
      (await store.loadSession("c1"))?.subscriptions.map((s) => s.key),
      ["y", "w"],
    );
    assert.deepEqual((await redis.hkeys("t:{s:c1}:subk")).sort(), ["w", "y"]);
  },
);
