/**
 * The Redis store's secrets (`Store.secret`) when Redis is full: `maxmemory` with `noeviction`,
 * as infra/ deploys it, refuses every write, SET NX of a key that exists included. A node that
 * starts then must still read the secret the cluster made before; and where none was made yet, it
 * makes it once Redis has room (it waits for that to start anyway).
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { Redis } from "ioredis";
import { hashPassword } from "../../src/auth/passwords.ts";
import { RedisStore } from "../../src/store/redis.ts";
import { RawClient } from "../helpers/broker.ts";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import { RedisServer, skipWithoutRedis } from "../helpers/redis.ts";
import { authDataOf, connectScram, ScramClient } from "../helpers/scram_client.ts";

const opts = { ignore: skipWithoutRedis(), sanitizeOps: false, sanitizeResources: false };

/** Sets `maxmemory` below what `redis` holds: every write is refused with OOM from now on. */
async function fill(redis: RedisServer): Promise<void> {
  const used = Number(/used_memory:(\d+)/.exec(await redis.command("INFO", "memory"))![1]);
  await redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction");
  await redis.command("CONFIG", "SET", "maxmemory", String(Math.floor(used / 2)));
}

function store(port: number, prefix: string): RedisStore {
  const client = new Redis(port, "127.0.0.1", { lazyConnect: true, maxRetriesPerRequest: 1 });
  return new RedisStore(client, { keyPrefix: prefix, nodeId: "n1", ownsClient: true });
}

Deno.test({
  name: "redis store: a secret made before Redis filled up is read again by a new store (a SET " +
    "NX of a key that exists is refused with OOM too); one not made yet is refused",
  ...opts,
  async fn() {
    await using redis = await RedisServer.start();
    const first = store(redis.port, "full");
    await first.open();
    const made = await first.secret("decoy");
    await first.close();
    await fill(redis);
    const second = store(redis.port, "full");
    await second.open();
    try {
      assert.deepEqual(await second.secret("decoy"), made);
      await assert.rejects(second.secret("other"), /OOM/);
    } finally {
      await second.close();
    }
  },
});

Deno.test({
  name: "cluster: a node started while Redis is full, before any node made the SCRAM decoy key, " +
    "makes it once Redis has room, and the next node reads the same one",
  ...opts,
  async fn() {
    // In the repository: a node runs with the permissions a deployment has (it reads no /tmp).
    const dir = await Deno.makeTempDir({
      dir: new URL("../../", import.meta.url).pathname,
      prefix: ".test-secret-full-",
    });
    try {
      await Deno.writeTextFile(`${dir}/passwd`, `alice:${await hashPassword("pw", 1000)}\n`);
      const args = [`--auth.password_file=${dir}/passwd`];
      await using cluster = await TestCluster.start({ names: [] });
      await fill(cluster.redis);
      const adding = cluster.add("b", undefined, args);
      // Room is made only once b has been refused (no other client writes): a fixed wait raced
      // b's start on a loaded machine.
      const refused = async () =>
        Number(
          /errorstat_OOM:count=(\d+)/.exec(await cluster.redis.command("INFO", "errorstats"))
            ?.[1] ?? 0,
        );
      await eventually("b refused by the full Redis", async () => (await refused()) > 0, 30_000);
      await cluster.redis.command("CONFIG", "SET", "maxmemory", "0");
      const b = await adding;
      const c = await cluster.add("c", undefined, args);
      const saltOf = async (port: number) => {
        await using raw = await RawClient.connect(port, 5);
        await connectScram(raw, "probe", new ScramClient("nobody", "x").first());
        return Buffer.from(authDataOf(await raw.expect("auth"))).toString().split(",")[1];
      };
      assert.equal(await saltOf(b.port), await saltOf(c.port));
      assert.match(b.output(), /waiting for Redis \(OOM/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "attack: four nodes racing to make a secret read the same one (SET NX, then read); a " +
    "key an attacker with Redis access left of the wrong size or type is refused and left as it " +
    "is (a broker does not start on it rather than key its decoys with a secret of its own)",
  ...opts,
  async fn() {
    await using redis = await RedisServer.start();
    const stores = Array.from({ length: 4 }, () => store(redis.port, "race"));
    await Promise.all(stores.map((s) => s.open()));
    try {
      const made = await Promise.all(stores.map((s) => s.secret("decoy")));
      for (const m of made) assert.deepEqual(m, made[0]);
      await redis.command("SET", "race:secret:short", "0123456789");
      await assert.rejects(stores[0].secret("short"), /race:secret:short is not a secret of 32/);
      await redis.command("HSET", "race:secret:hash", "a", "b");
      await assert.rejects(stores[0].secret("hash"), /race:secret:hash: WRONGTYPE/);
      // Neither was replaced: an operator sees what was there.
      assert.equal(await redis.command("GET", "race:secret:short"), "0123456789");
    } finally {
      await Promise.all(stores.map((s) => s.close()));
    }
  },
});
