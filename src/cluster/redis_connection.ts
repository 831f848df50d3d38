/**
 * One place that turns `[redis]` into ioredis clients, for the cluster bus and
 * the Redis store alike: standalone (host/port or url), Sentinel and Redis
 * Cluster, with the same reconnect backoff and credentials everywhere.
 *
 * ioredis reconnects on its own; what it does with commands issued while the
 * connection is down is chosen per use (`offline`): the bus fails fast
 * (`"fail"`) so a node keeps serving local clients instead of queueing
 * without bound, a blocking reader waits (`"queue"`).
 *
 * A connection whose server vanished without closing it (a frozen process, a
 * network partition, a Redis Cluster master that was failed over while
 * unreachable) never reports an error by itself: its commands would wait
 * forever, and so would every publish acknowledgement, lease renewal and
 * inbox read behind them. `[redis] command_timeout_ms` bounds that: a
 * connection that has not answered for that long (plus the block time of a
 * blocking read) is closed, which fails what was in flight and makes ioredis
 * reconnect (Sentinel: ask the sentinels again; Cluster: reload the slot map
 * and go to the promoted replica).
 */
import { Cluster, Redis, type RedisOptions } from "ioredis";
import { getLogger } from "@logtape/logtape";
import type { Config } from "../config/schema.ts";

/** A client of any mode; the commands the broker uses exist on both. */
export type RedisClient = Redis | Cluster;

export type RedisConfig = Config["redis"];

const log = getLogger(["mcloudtt", "redis"]);

export interface RedisConnectionOptions {
  /** Shown in CLIENT LIST (`mcloudtt:<name>`) and in log lines. */
  name: string;
  /**
   * What happens to commands issued while disconnected: "fail" rejects them
   * at once, "queue" keeps them until the connection is back (for a reader
   * that blocks anyway). Default "fail".
   */
  offline?: "fail" | "queue";
  /** Batch every command issued in one event-loop turn into one write (default true). */
  autoPipelining?: boolean;
  /**
   * Resend commands that were in flight when the connection dropped (default
   * true). A reader that must re-read what it may have missed sets false.
   */
  resendInFlight?: boolean;
  /**
   * The longest BLOCK of the blocking reads sent on this connection (ms): a
   * silent connection is taken for dead that much later than
   * `[redis] command_timeout_ms`.
   */
  blockMs?: number;
}

/** How long the blocking readers (route log, inbox) wait for new entries per read, in ms. */
export const READ_BLOCK_MS = 2000;

/** Reconnect delay after `attempt` failures: 50 ms doubling to 2 s, with jitter so nodes spread out. */
export function reconnectDelay(attempt: number): number {
  const base = Math.min(2000, 50 * 2 ** Math.min(attempt, 6));
  return Math.round(base * (0.75 + Math.random() * 0.5));
}

/** The longest {@link reconnectDelay}: a node cut off from Redis is back at most this late. */
export const MAX_RECONNECT_DELAY_MS = 2500;

/** Parses `"host:port"` (IPv6 in brackets). */
export function parseHostPort(seed: string): { host: string; port: number } {
  const i = seed.lastIndexOf(":");
  let host = seed.slice(0, i);
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  return { host, port: Number(seed.slice(i + 1)) };
}

/** Where the config points, with the password masked: for logs and readiness messages. */
export function describeRedis(redis: RedisConfig): string {
  switch (redis.mode) {
    case "sentinel":
      return `sentinel ${redis.sentinel_name} via ${redis.sentinels.join(",")}`;
    case "cluster":
      return `cluster via ${seeds(redis).map((s) => `${s.host}:${s.port}`).join(",")}`;
    default:
      if (redis.url !== "") {
        const u = new URL(redis.url);
        if (u.password !== "") u.password = "***";
        return u.toString();
      }
      return `${redis.tls ? "rediss" : "redis"}://${redis.host}:${redis.port}/${redis.db}`;
  }
}

/** Host and port from `url` when set, else from `host`/`port`. */
function primary(redis: RedisConfig): { host: string; port: number } {
  if (redis.url !== "") {
    const u = new URL(redis.url);
    return {
      host: u.hostname.replace(/^\[|\]$/g, ""),
      port: u.port === "" ? 6379 : Number(u.port),
    };
  }
  return { host: redis.host, port: redis.port };
}

function seeds(redis: RedisConfig): { host: string; port: number }[] {
  return redis.cluster_nodes.length > 0 ? redis.cluster_nodes.map(parseHostPort) : [primary(redis)];
}

/** Options shared by every mode: credentials, TLS, database, backoff, offline behaviour. */
function baseOptions(redis: RedisConfig, opts: RedisConnectionOptions): RedisOptions {
  const queue = opts.offline === "queue";
  const timeout = redis.command_timeout_ms + (opts.blockMs ?? 0);
  const base: RedisOptions = {
    connectionName: `mcloudtt:${opts.name}`,
    retryStrategy: reconnectDelay,
    enableOfflineQueue: queue,
    // null: a queued command waits for the reconnect however long it takes.
    maxRetriesPerRequest: queue ? null : 1,
    enableAutoPipelining: opts.autoPipelining ?? true,
    autoResendUnfulfilledCommands: opts.resendInFlight ?? true,
    // A failover makes the old master read-only: reconnect to find the new one.
    reconnectOnError: (err) => err.message.startsWith("READONLY") ? 2 : false,
    lazyConnect: true,
    // A connection with commands in flight that receives nothing for this long is destroyed: its
    // commands fail and ioredis reconnects (or, for a Redis Cluster node, reloads the slot map).
    socketTimeout: timeout,
    // And every command settles within it, even one queued on a connection that is still being
    // (re-)established to an unresponsive host. Not for a store connection that waits for the
    // reconnect by design ("queue" without a block time): its writes would fail during an outage
    // instead of going through after it, and a stuck connection is already closed above.
    commandTimeout: queue && opts.blockMs === undefined ? undefined : timeout,
  };
  if (redis.url !== "" && redis.mode === "standalone") {
    // ioredis reads credentials, db and TLS from the URL itself.
    return base;
  }
  if (redis.username !== "") base.username = redis.username;
  if (redis.password !== "") base.password = redis.password;
  if (redis.tls) base.tls = {};
  if (redis.db !== 0) base.db = redis.db;
  return base;
}

/**
 * A new, not yet connected client for `redis` (call `connect()`; ioredis then
 * reconnects by itself). An `error` listener is attached so a lost connection
 * is logged once per outage instead of crashing the process.
 */
export function createRedisConnection(
  redis: RedisConfig,
  opts: RedisConnectionOptions,
): RedisClient {
  const base = baseOptions(redis, opts);
  let client: RedisClient;
  switch (redis.mode) {
    case "sentinel":
      client = new Redis({
        ...base,
        sentinels: redis.sentinels.map(parseHostPort),
        name: redis.sentinel_name,
        sentinelUsername: redis.username || undefined,
        sentinelPassword: redis.password || undefined,
        sentinelRetryStrategy: reconnectDelay,
        enableTLSForSentinelMode: redis.tls,
      });
      break;
    case "cluster": {
      const { retryStrategy: _r, enableOfflineQueue, ...redisOptions } = base;
      client = new Cluster(seeds(redis), {
        redisOptions,
        clusterRetryStrategy: reconnectDelay,
        enableOfflineQueue,
        enableAutoPipelining: base.enableAutoPipelining,
        maxRedirections: 16,
        // A command whose node connection closed is sent again (to the slot's new master after a
        // failover) unless the user reads what it may have missed itself: an XREADGROUP that the
        // old master ran but never answered left entries pending that a resent ">" read skips.
        retryDelayOnFailover: opts.resendInFlight === false ? 0 : 100,
        lazyConnect: true,
      });
      break;
    }
    default:
      client = redis.url !== ""
        ? new Redis(redis.url, base)
        : new Redis({ ...base, ...primary(redis) });
  }
  watchErrors(client, `${opts.name} (${describeRedis(redis)})`);
  return client;
}

/** Logs the first error of an outage and the recovery, not every retry. */
function watchErrors(client: RedisClient, label: string): void {
  let down = false;
  client.on("error", (err: Error) => {
    if (down) return;
    down = true;
    log.warn`redis ${label}: ${err.message}; reconnecting`;
  });
  client.on("ready", () => {
    if (!down) return;
    down = false;
    log.info`redis ${label}: connected again`;
  });
}

/** True when the client can take commands now. */
export function isReady(client: RedisClient): boolean {
  return client.status === "ready";
}

/**
 * Waits for a command on `client`, but fails as soon as its connection
 * closes. A command in flight on a client with `resendInFlight: false` is
 * otherwise never settled when the connection drops (ioredis drops it).
 */
export function unlessClosed<T>(client: RedisClient, command: Promise<T>): Promise<T> {
  let onClose = (): void => {};
  const closed = new Promise<never>((_, reject) => {
    onClose = () => reject(new Error("redis connection closed"));
    client.once("close", onClose);
  });
  return Promise.race([command, closed]).finally(() => client.off("close", onClose));
}

/** `<prefix>:<parts...>`: every key the broker writes starts with the configured prefix. */
export function redisKey(prefix: string, ...parts: string[]): string {
  return [prefix, ...parts].join(":");
}
