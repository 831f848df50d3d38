/**
 * The Store contract against the Redis store and a real redis-server. Each
 * store gets its own key prefix on one server (an empty namespace); reopen is
 * a new store with a new connection on the same prefix, as a restarted node.
 */
import { Cluster, Redis } from "ioredis";
import { RedisServer, skipWithoutRedis } from "../helpers/redis.ts";
import { RedisClusterGroup } from "../helpers/redis_groups.ts";
import { RedisStore } from "../../src/store/redis.ts";
import { runStoreContract } from "./contract.ts";

const ignore = skipWithoutRedis();
let server: RedisServer | null = null;
let group: RedisClusterGroup | null = null;
let stores = 0;

/**
 * The contract's fixtures use fixed timestamps, some in 2023. A Redis store
 * lets keys expire from the broker's clock (TTLs), so the stores here run on
 * a clock set before them, as the core's injected clock would be.
 */
const CLOCK = 1_600_000_000_000;

/** A client not connected yet, as the connection factory hands it over: `open()` connects it. */
async function connect(): Promise<Redis> {
  server ??= await RedisServer.start();
  return new Redis(server.port, "127.0.0.1", {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 2,
  });
}

if (ignore) {
  Deno.test({
    name: "redis store contract (skipped: redis-server is not installed)",
    ignore,
    fn() {},
  });
} else {
  // Retained topics are read in windows of 4 (`[redis] retained_scan_topics`), so that the
  // contract's retained cases span several of them; the Redis Cluster below uses the default.
  runStoreContract<RedisStore>({
    name: "redis",
    newStore: async () =>
      new RedisStore(await connect(), {
        keyPrefix: `contract${++stores}`,
        nodeId: "node-1",
        now: () => CLOCK,
        ownsClient: true,
        retainedScanTopics: 4,
      }),
    reopen: async (old) =>
      new RedisStore(await connect(), {
        keyPrefix: old.keys.prefix,
        nodeId: "node-1",
        now: () => CLOCK,
        ownsClient: true,
        retainedScanTopics: 4,
      }),
    skip: [],
  });

  // The same contract on a Redis Cluster of three masters: sessions and retained messages land
  // on different servers, and loading every session scans every master.
  const connectCluster = async (): Promise<Cluster> => {
    group ??= await RedisClusterGroup.start({ masters: 3 });
    const c = new Cluster(
      group.seeds.map((s) => ({ host: "127.0.0.1", port: Number(s.split(":")[1]) })),
      {
        lazyConnect: true,
        redisOptions: { maxRetriesPerRequest: 2 },
      },
    );
    c.on("error", () => {});
    return c;
  };
  runStoreContract<RedisStore>({
    name: "redis cluster",
    newStore: async () =>
      new RedisStore(await connectCluster(), {
        keyPrefix: `contract${++stores}`,
        nodeId: "node-1",
        now: () => CLOCK,
        ownsClient: true,
      }),
    reopen: async (old) =>
      new RedisStore(await connectCluster(), {
        keyPrefix: old.keys.prefix,
        nodeId: "node-1",
        now: () => CLOCK,
        ownsClient: true,
      }),
    skip: [],
  });

  Deno.test({
    name: "redis store contract: stop redis-server",
    sanitizeResources: false,
    sanitizeOps: false,
    fn: async () => {
      await server?.stop();
      server = null;
      await group?.stop();
      group = null;
    },
  });
}
