/**
 * Node liveness: each node renews a lease (a deadline on Redis's clock in a
 * sorted set, so pod clocks do not matter) and, in the same script, reads
 * which leases ran out. A dead node is handled by exactly one survivor, the
 * one whose SET NX on the node's claim key succeeds while the lease is still
 * run out; the claim expires, so if that survivor dies midway another one
 * takes over. Once handled, the claim says "done" for an hour.
 *
 * A node that was only frozen (SIGSTOP, a long GC or VM pause) and wakes up
 * finds its claim at its next renewal: it is expelled (its sessions were
 * adopted, its clients' wills published), drops what it held, and registers
 * its lease again once the survivor is done. Until a renewal has answered,
 * a node whose last renewal is older than a lease does nothing that could
 * collide with the survivor (`confirm`).
 *
 * The lease goes over a connection of its own, not the command connection
 * that forwards messages: there a renewal queued behind megabytes of XADDs (a
 * publish flood, a slow Redis pipe) arrived after the lease ran out, and the
 * cluster declared a healthy node dead. It is still renewed only while the
 * command connection is ready: a node that cannot forward, claim or release
 * (its command connection lost, or closed by `command_timeout_ms` after
 * answering nothing) must not claim to be a member for ever; after a lease it
 * is handled as dead, as when one connection carried both. Nothing sent on
 * the command connection relies on the lease's order beside it: every step
 * that needs one after the other awaits the first (the dead-node handling
 * between its claim and "done", a resync after its renewal).
 */
import { getLogger } from "@logtape/logtape";
import { MAX_RECONNECT_DELAY_MS, type RedisClient } from "./redis_connection.ts";
import { type ClusterKeys, type ClusterScripts, LeaseState } from "./redis_scripts.ts";

const log = getLogger(["mcloudtt", "cluster"]);

export interface LivenessOptions {
  renewMs: number;
  ttlMs: number;
  /** Withdraws the dead node's routes, calls the host, cleans its keys. */
  onDead(node: string): Promise<void>;
  /**
   * A survivor has handled (or is handling) this node as dead: its sessions
   * belong to other nodes now. Called once per expulsion, before anything
   * read meanwhile is delivered.
   */
  onExpelled(): void;
  /** The lease is registered again (after an expulsion, or after Redis lost it): resync. */
  onRejoined(why: string): void;
}

/** How long a handled node's claim says "done", so a node frozen that long still learns it. */
const DONE_MS = 3_600_000;

/** A connection and the scripts registered on it. */
export interface LeaseLink {
  client: RedisClient;
  scripts: ClusterScripts;
}

export class Liveness {
  /** Live nodes at the last tick (this one included once joined). */
  live: ReadonlySet<string> = new Set();
  /** Redis time of the last successful renewal (ms), and the local time it was seen. */
  private renewedAt = 0;
  private timer: ReturnType<typeof setInterval> | null = null;
  private joined = false;
  /** The renewal under way: it resolves false when it found this node expelled. */
  private ticking: Promise<boolean> | null = null;
  private handling = new Set<string>();
  /** Expelled and waiting for the survivor to finish before registering again. */
  private out = false;
  /** Until then (local ms) expired leases are not acted on: see `renew`. */
  private graceUntil = 0;

  /** A connection to Redis came back since the last renewal (see `renew`). */
  private reconnected = false;
  /** Nodes live when Redis lost the leases, counted live until `keepUntil` (`stateLost`). */
  private kept: Set<string> | null = null;
  private keepUntil = 0;

  constructor(
    private readonly self: string,
    private readonly keys: ClusterKeys,
    /** The command connection (forwarding): renewals need it ready; stop and expire go on it. */
    private readonly cmd: LeaseLink,
    /** The lease's own connection: renewals, dead-node claims and lease lookups. */
    private readonly lease: LeaseLink,
    private readonly opts: LivenessOptions,
  ) {}

  /**
   * Where a lease command goes: its own connection, or the command connection while that one
   * is being re-established (a node is then no worse off than with one connection for both).
   */
  private get via(): LeaseLink {
    return this.lease.client.status === "ready" ? this.lease : this.cmd;
  }

  /**
   * The command or the lease connection is back after a drop (the bus's reconnect handlers
   * say so): either may have come back to a promoted replica.
   */
  connectionBack(): void {
    if (this.joined) this.reconnected = true;
  }

  /**
   * Redis lost the leases (a restart without persistence; in Redis Cluster mode, the master that
   * holds them): every other node's lease is missing until its own next renewal. The nodes live
   * before stay live meanwhile, for a lease plus the reconnect backoff, unless their lease turns
   * up run out. Read as departed, their routes were withdrawn (QoS 1 messages acknowledged for
   * their subscribers were dropped: 296-308 of 1,200 with one node paused 1.5 s) and retained
   * messages were not sent to them (missing in their memory for good).
   */
  stateLost(): void {
    const kept = this.kept ?? new Set<string>();
    for (const n of this.live) if (n !== this.self) kept.add(n);
    this.kept = kept;
    this.keepUntil = Date.now() + this.opts.ttlMs + MAX_RECONNECT_DELAY_MS;
    const live = new Set(this.live);
    for (const n of kept) live.add(n);
    this.live = live;
  }

  /**
   * Until when (Date.now() ms) the nodes live before Redis lost the state count as live (0 when
   * it was not lost): the other nodes' routes are kept that long too (redis_resync.ts).
   */
  get keptUntil(): number {
    return this.kept === null ? 0 : this.keepUntil;
  }

  /** `live` with the nodes kept live after Redis lost the leases (see `stateLost`). */
  private withKept(live: readonly string[], expired: readonly string[]): Set<string> {
    const out = new Set(live);
    const kept = this.kept;
    if (kept === null) return out;
    if (Date.now() >= this.keepUntil) {
      this.kept = null;
      return out;
    }
    for (const n of expired) kept.delete(n);
    for (const n of kept) out.add(n);
    return out;
  }

  /** True when the last renewal is older than the lease: other nodes may think we are dead. */
  get lapsed(): boolean {
    return this.joined && Date.now() - this.renewedAt > this.opts.ttlMs;
  }

  /** True between learning of an expulsion and registering the lease again. */
  get expelled(): boolean {
    return this.out;
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
    // On the command connection: behind what this node wrote before it left.
    if (leave && this.joined) await this.cmd.client.zrem(this.keys.nodes, this.self);
    this.joined = false;
  }

  /**
   * Ends this node's lease now (it stays listed, as expired, until a survivor handles it). On
   * the command connection, so the survivor's handling comes after this node's last writes.
   */
  async expire(): Promise<void> {
    await this.cmd.client.zadd(this.keys.nodes, "XX", 0, this.self);
  }

  /**
   * Renews the lease now (or joins the renewal under way). Resolves true while
   * this node is a member, false when the renewal found it expelled (handled
   * as dead by a survivor; `onExpelled` has run by then).
   */
  tick(mustExist: boolean): Promise<boolean> {
    if (this.ticking !== null) return this.ticking;
    // Not while the command connection is down: this node could not forward, claim or release,
    // and must not go on claiming to be a member (see the header).
    if (this.cmd.client.status !== "ready") {
      return Promise.reject(new Error("redis is not ready"));
    }
    const t = this.renew(mustExist).finally(() => this.ticking = null);
    this.ticking = t;
    return t;
  }

  /**
   * Null while the lease is surely held (renewed less than a lease ago), so
   * what this node does now cannot collide with a survivor handling it as
   * dead. Otherwise (after a freeze: SIGSTOP, a long GC or VM pause, or while
   * Redis is unreachable) the answer of the next renewal that gets through:
   * true when still a member, false when expelled or stopped.
   */
  confirm(): Promise<boolean> | null {
    if (!this.lapsed && !this.out) return null;
    return this.confirmSlow();
  }

  private async confirmSlow(): Promise<boolean> {
    while (this.joined) {
      try {
        if (this.cmd.client.status === "ready") return await this.tick(true);
      } catch {
        // retried below
      }
      await new Promise((r) => setTimeout(r, this.opts.renewMs));
    }
    return false;
  }

  private async renew(mustExist: boolean): Promise<boolean> {
    // The time the request leaves, not the reply's: the deadline Redis sets counts from a moment
    // between the two, so `lapsed` turns true no later than the lease runs out on Redis's clock.
    const sentAt = Date.now();
    // Missed renewals mean this node could not reach Redis (an outage, a Sentinel or Cluster
    // failover): other nodes were cut off too, and may come back later (their reconnect
    // backoff) with leases that ran out meanwhile. They get a lease's time plus that backoff
    // to renew before any is handled as dead (which would publish the wills of clients that
    // are still connected there).
    const { ttlMs, renewMs } = this.opts;
    const t = await this.via.scripts.leaseTick(
      [this.keys.nodes, this.keys.deadClaim(this.self)],
      this.self,
      this.opts.ttlMs,
      mustExist,
    );
    // Counted to the answer, not to the request: ioredis may hold a request through an outage and
    // send it again until it goes through (Redis Cluster retries it through a failover), so a
    // renewal sent right before the outage can be the one answered right after it.
    // A reconnection, however short, counts too: it may have been a failover to a replica that
    // lagged, whose leases are as old as its copy (seen in CI: a second Sentinel failover 15 s
    // after the first, node b back first after 200 ms, node a's lease there older than a lease,
    // a declared dead and its clients closed while it was connected and renewing).
    const cutOff = this.joined &&
      (Date.now() - this.renewedAt > 2 * renewMs || this.reconnected);
    this.reconnected = false;
    if (t.state === LeaseState.Vanished) this.stateLost();
    const before = this.live;
    const live = this.withKept(t.live, t.expired);
    if (cutOff) this.graceUntil = Date.now() + ttlMs + MAX_RECONNECT_DELAY_MS;
    // Within the grace, the nodes live before whose leases ran out meanwhile were most likely
    // cut off as this one was: they stay live until they renew, or are handled as dead after it.
    // Read as gone, they got no retained messages published meanwhile, and the copies kept for
    // them (InboxWriter.keepRetained) were dropped: the node that renewed first won.
    if (Date.now() < this.graceUntil) {
      for (const n of t.expired) if (before.has(n)) live.add(n);
    }
    this.live = live;
    if (Date.now() >= this.graceUntil) {
      for (const node of t.expired) {
        if (node !== this.self && !this.handling.has(node)) this.claim(node);
      }
    }
    if (t.state === LeaseState.Handling || t.state === LeaseState.Handled) {
      if (!this.out) {
        const ttl = this.opts.ttlMs;
        log
          .error`node ${this.self} was declared dead by the cluster (lease not renewed for ${ttl} ms): dropping its clients and sessions, rejoining`;
        this.out = true;
        this.opts.onExpelled();
      }
      if (t.state === LeaseState.Handling) return false;
    }
    this.renewedAt = sentAt;
    if (this.out) {
      // Registered again: handled (or its claim ran out with the survivor gone).
      this.out = false;
      this.opts.onRejoined("expelled");
      return false;
    }
    if (t.state === LeaseState.Vanished) this.opts.onRejoined("lease vanished");
    return true;
  }

  private claim(node: string): void {
    this.handling.add(node);
    (async () => {
      const keys: [string, string] = [this.keys.nodes, this.keys.deadClaim(node)];
      const claimMs = Math.max(30_000, 5 * this.opts.ttlMs);
      if (!(await this.via.scripts.deadClaim(keys, node, this.self, claimMs))) return;
      log.warn`node ${node} stopped renewing its lease: taking over its cleanup`;
      await this.opts.onDead(node);
      // Only now is it gone for good; had we died before, another survivor would claim it.
      // (onDead's writes were answered: they ran before this, whichever connection it takes.)
      await this.via.scripts.deadDone(keys, node, DONE_MS);
    })().catch((e) => log.warn`handling dead node ${node}: ${(e as Error).message}`)
      .finally(() => this.handling.delete(node));
  }

  /**
   * True when `node` holds a lease that has not run out (on Redis's clock). A
   * node that died keeps its entry until a survivor has handled it, so the
   * entry alone does not say it is alive.
   */
  async isLive(node: string): Promise<boolean> {
    const res = await this.via.client.multi().zscore(this.keys.nodes, node).time().exec();
    if (res === null) throw new Error("lease lookup was aborted");
    for (const [err] of res) if (err) throw err;
    const deadline = res[0][1] as string | null;
    const [sec, usec] = res[1][1] as [string, string];
    return deadline !== null && Number(deadline) >= Number(sec) * 1000 + Number(usec) / 1000;
  }

  /**
   * True while `node` is listed as a member: alive, or dead and not yet
   * handled by a survivor (which removes it once it adopted its sessions).
   */
  async unhandled(node: string): Promise<boolean> {
    return (await this.via.client.zscore(this.keys.nodes, node)) !== null;
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
