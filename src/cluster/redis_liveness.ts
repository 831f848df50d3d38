/**
 * Node liveness: each node renews a lease (a deadline on Redis's clock in a
 * sorted set, so pod clocks do not matter) and, in the same script, reads
 * which leases ran out. A dead node is handled by exactly one survivor, the
 * one whose SET NX on the node's claim key succeeds; the claim expires, so if
 * that survivor dies midway another one takes over.
 */
import { getLogger } from "@logtape/logtape";
import { MAX_RECONNECT_DELAY_MS, type RedisClient } from "./redis_connection.ts";
import type { ClusterKeys, ClusterScripts } from "./redis_scripts.ts";

const log = getLogger(["mcloudtt", "cluster"]);

export interface LivenessOptions {
  renewMs: number;
  ttlMs: number;
  /** Withdraws the dead node's routes, calls the host, cleans its keys. */
  onDead(node: string): Promise<void>;
  /** This node's lease had run out and another node may have handled it as dead. */
  onExpelled(): void;
}

export class Liveness {
  /** Live nodes at the last tick (this one included once joined). */
  live: ReadonlySet<string> = new Set();
  /** Redis time of the last successful renewal (ms), and the local time it was seen. */
  private renewedAt = 0;
  private timer: ReturnType<typeof setInterval> | null = null;
  private joined = false;
  private ticking = false;
  private handling = new Set<string>();
  /** Until then (local ms) expired leases are not acted on: see `tick`. */
  private graceUntil = 0;

  constructor(
    private readonly self: string,
    private readonly keys: ClusterKeys,
    private readonly cmd: RedisClient,
    private readonly scripts: ClusterScripts,
    private readonly opts: LivenessOptions,
  ) {}

  /** True when the last renewal is older than the lease: other nodes may think we are dead. */
  get lapsed(): boolean {
    return this.joined && Date.now() - this.renewedAt > this.opts.ttlMs;
  }

  /** Registers the lease (again, after a Redis restart) and starts the timer. */
  async join(): Promise<void> {
    await this.tick(false);
    this.joined = true;
    this.timer ??= setInterval(() => {
      this.tick(true).catch((e) => log.debug`lease renewal failed: ${(e as Error).message}`);
    }, this.opts.renewMs);
  }

  /** Stops renewing; `leave` also removes the lease so others need not wait for it to run out. */
  async stop(leave: boolean): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    if (leave && this.joined) await this.cmd.zrem(this.keys.nodes, this.self);
    this.joined = false;
  }

  /** Ends this node's lease now (it stays listed, as expired, until a survivor handles it). */
  async expire(): Promise<void> {
    await this.cmd.zadd(this.keys.nodes, "XX", 0, this.self);
  }

  async tick(mustExist: boolean): Promise<void> {
    if (this.ticking || this.cmd.status !== "ready") return;
    this.ticking = true;
    // Missed renewals mean this node could not reach Redis (an outage, a Sentinel or Cluster
    // failover): other nodes were cut off too, and may come back later (their reconnect
    // backoff) with leases that ran out meanwhile. They get a lease's time plus that backoff
    // to renew before any is handled as dead (which would publish the wills of clients that
    // are still connected there).
    const { ttlMs, renewMs } = this.opts;
    const cutOff = this.joined && Date.now() - this.renewedAt > 2 * renewMs;
    try {
      const t = await this.scripts.leaseTick(
        this.keys.nodes,
        this.self,
        this.opts.ttlMs,
        mustExist,
      );
      this.renewedAt = Date.now();
      if (cutOff) this.graceUntil = this.renewedAt + ttlMs + MAX_RECONNECT_DELAY_MS;
      this.live = new Set(t.live);
      if (t.expelled) {
        const ttl = this.opts.ttlMs;
        log
          .error`node ${this.self} was declared dead by the cluster (lease not renewed for ${ttl} ms); rejoining`;
        this.opts.onExpelled();
      }
      if (Date.now() < this.graceUntil) return;
      for (const node of t.expired) {
        if (node !== this.self && !this.handling.has(node)) this.claim(node);
      }
    } finally {
      this.ticking = false;
    }
  }

  private claim(node: string): void {
    this.handling.add(node);
    (async () => {
      const ok = await this.cmd.set(
        this.keys.deadClaim(node),
        this.self,
        "PX",
        Math.max(30_000, 5 * this.opts.ttlMs),
        "NX",
      );
      if (ok !== "OK") return;
      log.warn`node ${node} stopped renewing its lease: taking over its cleanup`;
      await this.opts.onDead(node);
      // Only now is it gone for good; had we died before, another survivor would claim it.
      await this.cmd.zrem(this.keys.nodes, node);
    })().catch((e) => log.warn`handling dead node ${node}: ${(e as Error).message}`)
      .finally(() => this.handling.delete(node));
  }

  /**
   * True when `node` holds a lease that has not run out (on Redis's clock). A
   * node that died keeps its entry until a survivor has handled it, so the
   * entry alone does not say it is alive.
   */
  async isLive(node: string): Promise<boolean> {
    const res = await this.cmd.multi().zscore(this.keys.nodes, node).time().exec();
    if (res === null) throw new Error("lease lookup was aborted");
    for (const [err] of res) if (err) throw err;
    const deadline = res[0][1] as string | null;
    const [sec, usec] = res[1][1] as [string, string];
    return deadline !== null && Number(deadline) >= Number(sec) * 1000 + Number(usec) / 1000;
  }

  /** Resolves once `node`'s lease has run out (checked every renewal), or when `stop()` says so. */
  async ended(node: string, stop: () => boolean): Promise<void> {
    while (!stop()) {
      await new Promise((r) => setTimeout(r, this.opts.renewMs));
      if (stop()) return;
      if (!(await this.isLive(node).catch(() => true))) return;
    }
  }
}
