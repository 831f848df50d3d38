/**
 * A node that starts while Redis does not answer yet waits for it, up to
 * `[redis] start_timeout_ms`, instead of exiting at the first refused
 * connection. Redis is often not there yet when the broker starts: both are
 * deployed together, its pod is being rescheduled, it is loading its AOF
 * (`LOADING`), or one master of a Redis Cluster is down (`CLUSTERDOWN`). A
 * process that exits at once is restarted by its orchestrator with a growing
 * delay (Kubernetes: up to five minutes), so it came back long after Redis did.
 *
 * What waiting cannot cure fails at once: wrong credentials or missing
 * permissions (`WRONGPASS`, `NOAUTH`, `NOPERM`) are the operator's to fix.
 */
import { getLogger } from "@logtape/logtape";
import { RedisUnavailable } from "./errors.ts";
import { reconnectDelay, type RedisClient } from "./redis_connection.ts";

const log = getLogger(["mcloudtt", "redis"]);

/** How often a start still waiting for Redis says so. */
const WAIT_LOG_MS = 10_000;

/** An error waiting cannot cure: wrong credentials, missing permissions. */
export function isFatalRedisError(e: unknown): boolean {
  const m = e instanceof Error ? e.message : String(e);
  return /^(WRONGPASS|NOAUTH|NOPERM)\b/.test(m);
}

/** Thrown by a wait that `cancel()` ended (its owner was stopped). */
export class StartCancelled extends Error {
  override readonly name = "StartCancelled";
}

/** One start's wait for Redis: every step of it shares the same deadline. */
export class StartWait {
  private readonly deadline: number;
  private loggedAt = 0;
  /** Rejects once `cancel()` is called: every wait races it. */
  private readonly cancelled: Promise<never>;
  private cancelNow: () => void = () => {};
  private done = false;

  constructor(
    /** What waits, for log lines and errors: "store", "cluster". */
    private readonly what: string,
    private readonly timeoutMs: number,
  ) {
    this.deadline = Date.now() + timeoutMs;
    this.cancelled = new Promise<never>((_, reject) => {
      this.cancelNow = () => reject(new StartCancelled(`${what}: stopped while starting`));
    });
    this.cancelled.catch(() => {});
  }

  /**
   * Ends the wait: what waits rejects with StartCancelled. A connection that ioredis is
   * reconnecting reports nothing when it is disconnected, so closing it does not end the wait.
   */
  cancel(): void {
    this.done = true;
    this.cancelNow();
  }

  /**
   * Resolves once `client` is connected; ioredis retries meanwhile with its
   * backoff. Rejects with the error itself when it is fatal, and with
   * RedisUnavailable once the deadline passed.
   */
  async ready(client: RedisClient): Promise<void> {
    if (this.done) throw new StartCancelled(`${this.what}: stopped while starting`);
    if (client.status === "ready") return;
    if (client.status === "wait") client.connect().catch(() => {});
    let last: unknown = null;
    let cleanup = () => {};
    const connected = new Promise<void>((resolve, reject) => {
      const onReady = () => resolve();
      const onEnd = () => reject(new Error(`redis connection closed: ${describe(last)}`));
      const onError = (e: unknown) => {
        last = e;
        if (isFatalRedisError(e)) reject(this.refused(e));
        else if (Date.now() >= this.deadline) reject(this.unavailable(e));
        else this.waiting(e);
      };
      // 0: no waiting, yet the first attempt is made (it fails with its first error, above).
      const timer = this.timeoutMs > 0
        ? setTimeout(() => reject(this.unavailable(last)), this.left())
        : undefined;
      client.on("ready", onReady);
      client.on("end", onEnd);
      client.on("error", onError);
      cleanup = () => {
        clearTimeout(timer);
        client.off("ready", onReady);
        client.off("end", onEnd);
        client.off("error", onError);
      };
    });
    try {
      await Promise.race([connected, this.cancelled]);
    } finally {
      cleanup();
    }
  }

  /**
   * Runs `step` until it succeeds: commands fail while a Redis Cluster
   * master is down or Redis loads its data. A step must be safe to run
   * again after a part of it went through.
   */
  async retry<T>(step: () => Promise<T>): Promise<T> {
    for (let attempt = 0;; attempt++) {
      try {
        return await step();
      } catch (e) {
        if (this.done) throw new StartCancelled(`${this.what}: stopped while starting`);
        if (isFatalRedisError(e)) throw this.refused(e);
        if (Date.now() >= this.deadline) throw this.unavailable(e);
        this.waiting(e);
        let timer: ReturnType<typeof setTimeout> | undefined;
        const pause = new Promise((r) => {
          timer = setTimeout(r, Math.min(reconnectDelay(attempt), this.left()));
        });
        try {
          await Promise.race([pause, this.cancelled]);
        } finally {
          clearTimeout(timer);
        }
      }
    }
  }

  private left(): number {
    return Math.max(0, this.deadline - Date.now());
  }

  private waiting(e: unknown): void {
    const now = Date.now();
    if (now - this.loggedAt < WAIT_LOG_MS) return;
    this.loggedAt = now;
    log.warn`${this.what}: waiting for Redis (${describe(e)}); giving up in ${
      Math.ceil(this.left() / 1000)
    } s (redis.start_timeout_ms)`;
  }

  private refused(e: unknown): Error {
    return new Error(
      `${this.what}: Redis refused this node (check redis.username and redis.password, or ` +
        `the credentials in redis.url, and the user's permissions): ${describe(e)}`,
      { cause: e },
    );
  }

  private unavailable(e: unknown): RedisUnavailable {
    return new RedisUnavailable(
      `${this.what}: Redis did not answer within redis.start_timeout_ms (${this.timeoutMs} ms)` +
        (e === null ? "" : `: ${describe(e)}`),
      e === null ? undefined : { cause: e },
    );
  }
}

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * Connects a lazily created client, retrying (with the client's backoff) until Redis answers,
 * for at most `timeoutMs`: a StartWait of its own.
 */
export function connectRedis(client: RedisClient, timeoutMs = 30_000): Promise<void> {
  return new StartWait("redis", timeoutMs).ready(client);
}
