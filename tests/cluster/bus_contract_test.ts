import { MemoryHub } from "../../src/cluster/memory_hub.ts";
import { RedisServer, skipWithoutRedis } from "../helpers/redis.ts";
import { RedisClusterGroup } from "../helpers/redis_groups.ts";
import { runBusContract } from "./contract.ts";
import { redisCluster } from "./redis_cluster.ts";

runBusContract({
  name: "memory hub",
  newCluster(n) {
    const hub = new MemoryHub();
    const buses = Array.from({ length: n }, () => hub.bus());
    return Promise.resolve({
      buses,
      kill: (i) => hub.kill(buses[i].nodeId),
      close: async () => {
        for (const b of buses) await b.stop();
      },
    });
  },
});

const noRedis = skipWithoutRedis();
// One redis-server for the whole file: each cluster gets its own key prefix.
let server: Promise<RedisServer> | null = null;
const shared = () => server ??= RedisServer.start();

runBusContract({
  name: "redis",
  async newCluster(n) {
    const cluster = redisCluster(await shared(), n);
    return cluster;
  },
  skip: noRedis
    ? Object.fromEntries(
      ["*"].map((k) => [k, "redis-server is not installed"]),
    )
    : {},
  deathTimeoutMs: 5000,
});

Deno.test({
  name: "redis: stop the shared server",
  ignore: noRedis,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    if (server !== null) await (await server).stop();
  },
});

// The same contract on a Redis Cluster of three masters: the bus's keys spread over servers, so
// a script or transaction spanning hash tags fails here with CROSSSLOT.
let group: Promise<RedisClusterGroup> | null = null;
const sharedGroup = () => group ??= RedisClusterGroup.start({ masters: 3 });

runBusContract({
  name: "redis cluster",
  async newCluster(n) {
    return redisCluster(await sharedGroup(), n);
  },
  skip: noRedis ? { "*": "redis-server is not installed" } : {},
  deathTimeoutMs: 5000,
});

Deno.test({
  name: "redis cluster: stop the shared servers",
  ignore: noRedis,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    if (group !== null) await (await group).stop();
  },
});
