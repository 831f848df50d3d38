/**
 * Errors of the cluster backend that callers outside it tell apart. Its own module, free of
 * ioredis: main.ts imports it whether or not Redis is enabled, and a single node must not load
 * the Redis client (see redis_backend.ts).
 */

/** Redis did not answer within `[redis] start_timeout_ms` of the start (redis_start.ts). */
export class RedisUnavailable extends Error {
  override readonly name = "RedisUnavailable";
}
