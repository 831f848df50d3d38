/**
 * `[redis] wait_replicas` in the Redis store: a batch is written only once
 * that many replicas have it (WAIT on the connection that wrote it; in Redis
 * Cluster mode on each master written to), and fails with a ReplicationError
 * when fewer confirm it in time. Real servers: a primary with a replica, and
 * a three-master Redis Cluster with one replica each.
 */
import assert from "node:assert/strict";
import { Cluster, Redis } from "ioredis";
import { ConfigError, resolveConfig } from "../../src/config/mod.ts";
import { ReplicationError } from "../../src/cluster/redis_replicas.ts";
import { RedisStore } from "../../src/store/redis.ts";
import { RedisServer, skipWithoutRedis } from "../helpers/redis.ts";
import { RedisClusterGroup } from "../helpers/redis_groups.ts";
import { sampleSession } from "./redis_fixture.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

const session = (id: string) => ({ type: "session" as const, state: sampleSession(id) });

/**
 * Resolves once `write` is confirmed by the replicas. A replica that just woke up, or one on a
 * loaded machine, may miss one 300 ms WAIT while it catches up; a refusal that lasts is a failure.
 */
async function confirmed(write: () => Promise<void>): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      return await write();
    } catch (e) {
      if (!(e instanceof ReplicationError) || Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

Deno.test("wait_timeout_ms may pass a lease (the lease has its own connection) but not command_timeout_ms", () => {
  // A WAIT longer than lease_ttl_ms - lease_renew_ms (4,000 ms): accepted (tests/cluster/e2e_wait_lease_test.ts
  // shows the node keeps its lease meanwhile).
  const c = resolveConfig({
    redis: { enabled: true, wait_replicas: 1, wait_timeout_ms: 4500 },
    cluster: { lease_renew_ms: 2000, lease_ttl_ms: 6000 },
  });
  assert.equal(c.redis.wait_timeout_ms, 4500);
  // A WAIT is a command: the command timeout must leave it time to answer.
  assert.throws(
    () =>
      resolveConfig({
        redis: { enabled: true, wait_replicas: 1, wait_timeout_ms: 5000, command_timeout_ms: 5000 },
      }),
    (e) => e instanceof ConfigError && /redis\.command_timeout_ms/.test(e.message),
  );
  // Off: the timeout does not matter.
  resolveConfig({ redis: { enabled: true, wait_timeout_ms: 5000 } });
});

/** A store that waits for one replica, 300 ms at most, and closes `client` with itself. */
function waitingStore(client: Redis | Cluster): RedisStore {
  return new RedisStore(client, {
    keyPrefix: "t",
    nodeId: "A",
    waitReplicas: 1,
    waitTimeoutMs: 300,
    ownsClient: true,
  });
}

Deno.test({
  name:
    "redis store with wait_replicas: written once the replica has it, refused when it is frozen",
  ...opts,
  async fn() {
    await using primary = await RedisServer.start();
    await using replica = await RedisServer.start({ replicaOf: primary.port });
    const client = new Redis(primary.port, "127.0.0.1", { lazyConnect: true });
    const store = waitingStore(client);
    try {
      await store.open();
      // The replica's first sync may still run: the first write waits for it (or is refused).
      for (let i = 0;; i++) {
        try {
          await store.write([session("c1")]);
          break;
        } catch (e) {
          if (!(e instanceof ReplicationError) || i > 20) throw e;
        }
      }
      assert.equal(await replica.command("EXISTS", "t:{s:c1}:meta"), "1", "on the replica");

      replica.signal("SIGSTOP");
      const t0 = performance.now();
      await assert.rejects(store.write([session("c2")]), ReplicationError);
      assert.ok(performance.now() - t0 >= 250, "waited for the timeout");
      // Redis took it all the same: only the confirmation is missing.
      assert.ok(await store.loadSession("c2"));
      replica.signal("SIGCONT");
      await confirmed(() => store.write([session("c3")]));
    } finally {
      replica.signal("SIGCONT");
      await store.close();
    }
  },
});

Deno.test({
  name: "redis cluster store with wait_replicas: WAIT goes to the master of each written session",
  ...opts,
  async fn() {
    await using group = await RedisClusterGroup.start({ masters: 3, replicas: 1 });
    const client = new Cluster(
      group.seeds.map((s) => ({ host: "127.0.0.1", port: Number(s.split(":")[1]) })),
      { lazyConnect: true, redisOptions: { maxRetriesPerRequest: 2 } },
    );
    client.on("error", () => {});
    const store = waitingStore(client);
    try {
      await store.open();
      // Two sessions on different masters.
      const ids = Array.from({ length: 20 }, (_, i) => `s${i}`);
      const masters = await Promise.all(ids.map((id) => group.masterOf(`t:{s:${id}}:meta`)));
      const x = ids[0];
      const y = ids.find((_, i) => masters[i] !== masters[0])!;
      await confirmed(() => store.write([session(x), session(y)]));

      // x's master loses its replica: writes to x are refused, writes to y still confirmed.
      const [frozen] = await group.replicasOf(masters[0]);
      frozen.signal("SIGSTOP");
      try {
        await assert.rejects(store.write([session(x)]), ReplicationError);
        await confirmed(() => store.write([session(y)]));
        await assert.rejects(store.write([session(x), session(y)]), ReplicationError);
      } finally {
        frozen.signal("SIGCONT");
      }
      await confirmed(() => store.write([session(x), session(y)]));
    } finally {
      await store.close();
    }
  },
});
