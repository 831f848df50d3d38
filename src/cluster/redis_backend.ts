/**
 * The Redis backend of a clustered broker: its bus and its store, built together because the
 * store writes under the bus's node id. broker.ts loads this module only when `[redis]
 * enabled`: ioredis and the cluster code are a large part of the process's memory (measured:
 * the idle broker's resident set and heap, README "Where it stands"), which a single node
 * should not carry.
 */
import type { Config } from "../config/schema.ts";
import type { Clock } from "../ops/clock.ts";
import { createRedisStore } from "../store/redis.ts";
import type { Store } from "../store/types.ts";
import { incarnationId, RedisBus } from "./redis_bus.ts";
import { createRedisConnection } from "./redis_connection.ts";
import type { Bus } from "./types.ts";

/** The Redis bus (not started) for `config`. */
export function createRedisBus(config: Config): Bus {
  return new RedisBus({
    redis: config.redis,
    cluster: config.cluster,
    nodeId: incarnationId(config.cluster.node_id),
  });
}

/**
 * The Redis store (not opened) for `config`: sessions must move between nodes, and they are
 * written under `bus`'s node id so a dead node's sessions can be found.
 */
export function createClusterStore(config: Config, bus: Bus, clock: Clock): Store {
  // The store sends its own pipelines; ioredis auto-pipelining garbles callBuffer("EVALSHA").
  const client = createRedisConnection(config.redis, {
    name: "store",
    offline: "queue",
    autoPipelining: false,
  });
  return createRedisStore(config, client, {
    nodeId: bus.nodeId,
    now: () => clock.now(),
    ownsClient: true,
  });
}
