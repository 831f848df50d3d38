/**
 * The cluster seam's exports. Without `[redis] enabled` a broker is one node (`localBus`);
 * with it, broker.ts imports the Redis bus and store (redis_backend.ts) when it is built, so a
 * single node never loads them. Importing this module loads them.
 */

export type { Bus, BusHost, ForwardResult } from "./types.ts";
export { LOCAL_ONLY, localBus } from "./types.ts";
export { MemoryBus, MemoryHub } from "./memory_hub.ts";
export { incarnationId, RedisBus } from "./redis_bus.ts";
export { createRedisConnection, describeRedis, type RedisClient } from "./redis_connection.ts";
export { createClusterStore, createRedisBus } from "./redis_backend.ts";
