/**
 * The forwarding writes Redis never answered, written again (redis_inbox.ts
 * InboxWriter): what waits behind one, on a Redis Cluster whose masters fail
 * independently.
 */
import assert from "node:assert/strict";
import { resolveConfig } from "../../src/config/mod.ts";
import { RedisBus } from "../../src/cluster/redis_bus.ts";
import { ClusterKeys } from "../../src/cluster/redis_scripts.ts";
import { delay } from "../helpers/broker.ts";
import { RedisClusterGroup, type RedisServer, skipWithoutRedis } from "../helpers/redis.ts";
import { message, until } from "./contract.ts";
import { FAST_CLUSTER, startBuses } from "./redis_cluster.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

/** `[redis] command_timeout_ms` of these buses. */
const COMMAND_TIMEOUT_MS = 1000;

/** A node id whose inbox is (or is not, `on: false`) served by `master`. */
async function idServedBy(
  group: RedisClusterGroup,
  keys: ClusterKeys,
  name: string,
  master: RedisServer,
  on: boolean,
): Promise<string> {
  for (let i = 0;; i++) {
    const id = `${name}-${i}`;
    if (((await group.masterOf(keys.inbox(id))) === master) === on) return id;
  }
}

Deno.test({
  name: "redis cluster: a forward in doubt on a frozen master holds up only the writes to " +
    "that master's inboxes, not forwarding to nodes whose inboxes live elsewhere",
  ...opts,
  async fn() {
    await using group = await RedisClusterGroup.start({ masters: 3 });
    const prefix = `t${crypto.randomUUID().slice(0, 8)}`;
    const keys = new ClusterKeys(prefix);
    // The master frozen is neither the route table's nor the leases': only b's inbox is there.
    const busy = new Set([await group.masterOf(keys.table), await group.masterOf(keys.nodes)]);
    const frozen = group.masters.find((m) => !busy.has(m));
    assert.ok(frozen !== undefined, "a master holds neither routes nor leases");
    const config = resolveConfig({
      redis: {
        enabled: true,
        mode: "cluster",
        cluster_nodes: group.seeds,
        key_prefix: prefix,
        command_timeout_ms: COMMAND_TIMEOUT_MS,
      },
      cluster: { ...FAST_CLUSTER, lease_ttl_ms: 10_000, takeover_timeout_ms: 2000 },
    });
    const bus = (nodeId: string) =>
      new RedisBus({ redis: config.redis, cluster: config.cluster, nodeId });
    const ids = [
      await idServedBy(group, keys, "a", frozen, false),
      await idServedBy(group, keys, "b", frozen, true),
      await idServedBy(group, keys, "c", frozen, false),
    ];
    await using nodes = await startBuses(ids.map(bus));
    const [a, b, c] = nodes.buses;
    const [, hb, hc] = nodes.hosts;
    await b.addRoute("to-b/#");
    await c.addRoute("to-c/#");
    await until(() => a.routeCount >= 2, 3000, "routes on a");
    try {
      frozen.signal("SIGSTOP");
      // Forwards to b, one per turn: each write waits on the frozen master, then is in doubt.
      const toB: Promise<boolean>[] = [];
      for (let i = 0; i < 4; i++) {
        const written = a.forward(message(`to-b/${i}`, { qos: 1 })).written;
        toB.push(written === null ? Promise.resolve(false) : written.then(() => true, () => false));
        await delay(10);
      }
      // Past the first one's command timeout: a forward to c now finds b's writes in doubt.
      await delay(COMMAND_TIMEOUT_MS + 200);
      const sent = performance.now();
      const written = a.forward(message("to-c/x", { qos: 1 })).written;
      await written;
      const ackMs = performance.now() - sent;
      await until(() => hc.delivered.length === 1, 15_000, "delivery on c");
      const deliveredMs = performance.now() - sent;
      console.log(
        `forward to c while b's master froze: written after ${Math.round(ackMs)} ms, ` +
          `delivered after ${Math.round(deliveredMs)} ms`,
      );
      assert.ok(deliveredMs < 500, `c got its message ${Math.round(deliveredMs)} ms late`);
      // Back within the command timeout: b's writes go through, once each. (Not asserted: their
      // order. ioredis's cluster client resends the writes whose connection closed by itself,
      // and not the one that had timed out first, which then comes last.)
      frozen.signal("SIGCONT");
      assert.deepEqual(await Promise.all(toB), [true, true, true, true]);
      await until(() => hb.delivered.length >= 4, 5000, "delivery on b");
      await delay(200);
      assert.deepEqual(hb.topics().sort(), ["to-b/0", "to-b/1", "to-b/2", "to-b/3"]);
    } finally {
      frozen.signal("SIGCONT");
    }
  },
});
