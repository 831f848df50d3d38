/**
 * The cluster seam's entry point: the bus a broker uses, chosen from config in
 * one place. Without `[redis] enabled` a broker is one node (`localBus`).
 */
import type { Config } from "../config/schema.ts";
import { incarnationId, RedisBus } from "./redis_bus.ts";
import { type Bus, localBus } from "./types.ts";

export type { Bus, BusHost, ForwardResult } from "./types.ts";
export { LOCAL_ONLY, localBus } from "./types.ts";
export { MemoryBus, MemoryHub } from "./memory_hub.ts";
export { incarnationId, RedisBus } from "./redis_bus.ts";
export { createRedisConnection, describeRedis, type RedisClient } from "./redis_connection.ts";

/** The Redis bus when `[redis] enabled`, else the single-node bus. Not started yet. */
export function createBus(config: Config): Bus {
  if (!config.redis.enabled) return localBus;
  return new RedisBus({
    redis: config.redis,
    cluster: config.cluster,
    nodeId: incarnationId(config.cluster.node_id),
  });
}
