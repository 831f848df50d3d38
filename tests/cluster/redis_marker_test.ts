/**
 * StateMarker (redis_marker.ts) on real Redis: when it says the cluster state was lost, and that
 * every node says so once, also when they look at the same moment.
 */
import assert from "node:assert/strict";
import calculateSlot from "cluster-key-slot";
import { resolveConfig } from "../../src/config/mod.ts";
import { createRedisConnection, type RedisClient } from "../../src/cluster/redis_connection.ts";
import { connectRedis } from "../../src/cluster/redis_start.ts";
import { StateMarker, tagForSlot } from "../../src/cluster/redis_marker.ts";
import { RedisServer, skipWithoutRedis } from "../helpers/redis.ts";
import { RedisClusterGroup } from "../helpers/redis_groups.ts";
import { redisQuery } from "../helpers/redis_resp.ts";
import { redisTarget } from "./redis_cluster.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };
const slotOf = calculateSlot as unknown as (key: string) => number;

/** `n` markers (as `n` nodes hold them) on `server`, under a prefix of their own. */
async function markers(server: RedisServer | RedisClusterGroup, n: number) {
  const prefix = `t${crypto.randomUUID().slice(0, 8)}`;
  const config = resolveConfig({ redis: { enabled: true, ...redisTarget(server) } });
  const clients: RedisClient[] = [];
  for (let i = 0; i < n; i++) {
    const c = createRedisConnection(config.redis, { name: `marker-test-${i}` });
    await connectRedis(c);
    clients.push(c);
  }
  const key = `${prefix}:{rt}:marker`;
  return {
    prefix,
    key,
    nodes: clients.map((c) => new StateMarker(c, prefix, key)),
    [Symbol.asyncDispose]: async () => {
      await Promise.all(clients.map((c) => c.quit().catch(() => {})));
    },
  };
}

Deno.test("tagForSlot: keys with the tag land in the slot asked for", () => {
  for (const slot of [0, 1, 4136, 8191, 16383]) {
    assert.equal(slotOf(`x:{${tagForSlot(slot)}}:witness`), slot);
  }
});

Deno.test({
  ...opts,
  name: "state marker, one redis-server: new cluster, steady, state lost, seen by both nodes once",
  async fn() {
    await using redis = await RedisServer.start();
    await using m = await markers(redis, 2);
    const [a, b] = m.nodes;
    assert.equal(await a.check(), true, "a new cluster: the first node writes its state");
    assert.equal(await b.check(), false, "the second node finds the marker");
    assert.deepEqual([await a.check(), await b.check()], [false, false]);
    await redis.command("FLUSHALL");
    assert.deepEqual([await b.check(), await a.check()], [true, true]);
    assert.deepEqual([await a.check(), await b.check()], [false, false]);
  },
});

Deno.test({
  ...opts,
  name: "state marker, redis cluster: each master holds a witness; one deleted makes every " +
    "node rewrite once, also when both look at once",
  async fn() {
    await using group = await RedisClusterGroup.start({ masters: 3 });
    await using m = await markers(group, 2);
    const [a, b] = m.nodes;
    assert.equal(await a.check(), true);
    assert.equal(await b.check(), false);
    // One witness per master, each holding the marker's value.
    const witnesses: string[] = [];
    for (const master of group.masters) {
      const keys = await redisQuery(master.port, "KEYS", `${m.prefix}:*:witness`) as string[];
      assert.equal(keys.length, 1, `master ${master.port}: ${keys}`);
      witnesses.push(keys[0]);
    }
    const marker = await group.masterOf(m.key);
    const valueNow = await marker.command("GET", m.key);
    for (const w of witnesses) {
      assert.equal(await (await group.masterOf(w)).command("GET", w), valueNow);
    }

    for (const w of witnesses) {
      const master = await group.masterOf(w);
      if (master === marker) continue;
      // That master lost its data (as a restart without persistence does).
      await master.command("FLUSHALL");
      assert.deepEqual(
        await Promise.all([a.check(), b.check()]),
        [true, true],
        "both nodes rewrite",
      );
      assert.deepEqual(await Promise.all([a.check(), b.check()]), [false, false], "once");
      const after = await marker.command("GET", m.key);
      assert.notEqual(after, valueNow, "a new marker value");
      for (const x of witnesses) {
        assert.equal(await (await group.masterOf(x)).command("GET", x), after, `witness ${x}`);
      }
      break;
    }

    // The marker's own master lost it: the same, without witnesses to go by.
    await marker.command("DEL", m.key);
    assert.deepEqual([await b.check(), await a.check()], [true, true]);
    assert.deepEqual([await a.check(), await b.check()], [false, false]);
  },
});
