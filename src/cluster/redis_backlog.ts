/**
 * Inbox backpressure: how far behind each node is with its inbox, and what a
 * forwarder does about a node that is too far behind.
 *
 * The figure is the inbox stream's length (XLEN): entries not read yet plus
 * entries read and waiting for their acknowledgement (XACK + XDEL follow the
 * store write). Every node measures the inboxes of the live nodes itself, once
 * per lease renewal (every `pollMs` while one is over the bound): XLEN is O(1),
 * one pipelined round trip for all of them, and needs nothing from the slow
 * node, so a node that is frozen (a GC or VM pause, SIGSTOP) or too busy to
 * report its own figure is still seen to fall behind.
 *
 * A node at or past `[cluster] max_inbox_backlog` entries is "over": QoS 1/2
 * messages forwarded to it are still written (nothing acknowledged may be
 * lost, and the copy is safe in Redis), but their acknowledgement waits until
 * its backlog is back under the bound, so each publisher is held at its
 * Receive Maximum and slows to the pace of the slowest node it publishes to;
 * QoS 0 copies for it are dropped and counted, as a slow subscriber's QoS 0
 * is. Local subscribers and other nodes get their copies at once.
 */
import { getLogger } from "@logtape/logtape";
import type { RedisClient } from "./redis_connection.ts";
import type { BacklogStats } from "./types.ts";

const log = getLogger(["mcloudtt", "cluster"]);

export interface BacklogOptions {
  /** `[cluster] max_inbox_backlog`: 0 turns backpressure off (the figures are still measured). */
  bound: number;
  /** How often the inboxes are measured (the lease renewal period). */
  periodMs: number;
  /** How often while a node is over the bound (held acknowledgements wait for this). */
  pollMs: number;
}

interface Waiter {
  promise: Promise<void>;
  resolve: () => void;
}

export class InboxBacklog {
  readonly stats: BacklogStats = { own: 0, over: 0, held: 0, dropped: 0 };
  /** Entries in each live node's inbox at the last measurement. */
  readonly lengths = new Map<string, number>();
  /**
   * Entries this node wrote to each inbox that its last measurement did not see
   * (written since it was sent, or queued then and written after it): added to
   * the measured length, so a node falling behind is noticed as the entries are
   * written, not a measurement later.
   */
  private readonly since = new Map<string, number>();
  /** When the pending timer fires (Date.now() ms). */
  private timerAt = 0;
  /** Nodes over the bound; empty in the common case, so the hot path checks one size. */
  private readonly overNodes = new Set<string>();
  private readonly waiters = new Map<string, Waiter>();
  /** The last combination handed out by `hold`: one turn's publishes share one promise. */
  private last: { a: Promise<void>; b: Promise<void>; both: Promise<void> } | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private running = false;
  private measuring: Promise<void> | null = null;

  constructor(
    private readonly self: string,
    private readonly cmd: RedisClient,
    private readonly inboxKey: (node: string) => string,
    /** The live nodes (this one included), as the last lease renewal saw them. */
    private readonly live: () => ReadonlySet<string>,
    private readonly opts: BacklogOptions,
    /** Entries for a node queued in this node's writer, not sent to Redis yet. */
    private readonly unsent: (node: string) => number,
  ) {}

  /** True when at least one node is over the bound (the hot path's only check). */
  get anyOver(): boolean {
    return this.overNodes.size !== 0;
  }

  isOver(node: string): boolean {
    return this.overNodes.has(node);
  }

  start(): void {
    this.running = true;
    this.schedule();
  }

  /** Stops measuring; held acknowledgements are let go (their copies are in Redis). */
  stop(): void {
    this.running = false;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.since.clear();
    for (const w of this.waiters.values()) w.resolve();
    this.waiters.clear();
    this.overNodes.clear();
    this.stats.over = 0;
  }

  /**
   * What a QoS 1/2 acknowledgement for a copy sent to `node` (over the bound)
   * waits for, combined with `before` (what it waits for anyway).
   */
  hold(node: string, before: Promise<void> | null): Promise<void> {
    this.stats.held++;
    const w = this.caughtUp(node);
    if (before === null || before === w) return w;
    const last = this.last;
    if (last !== null && last.a === before && last.b === w) return last.both;
    const both = Promise.all([before, w]).then(() => {});
    // A failed write is the caller's to report; nobody else must see an unhandled rejection.
    both.catch(() => {});
    this.last = { a: before, b: w, both };
    return both;
  }

  /**
   * Resolves once `node` (over the bound) caught up: what a publisher nothing else slows down
   * (retained QoS 0, written for every node whatever its backlog) waits for before it is read
   * again.
   */
  caughtUp(node: string): Promise<void> {
    let w = this.waiters.get(node);
    if (w === undefined) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.waiters.set(node, w = { promise, resolve });
    }
    return w.promise;
  }

  /** The InboxWriter wrote an entry to `node`'s inbox. */
  wrote(node: string): void {
    const n = (this.since.get(node) ?? 0) + 1;
    this.since.set(node, n);
    const bound = this.opts.bound;
    if (bound === 0 || this.overNodes.has(node)) return;
    // A node not measured yet (it joined since the last measurement) holds at least what this
    // node wrote to it since: before, nothing held a flood for it until the next measurement, up
    // to a lease renewal later (CI: 123 entries with a bound of 30).
    const measured = this.lengths.get(node) ?? 0;
    if (measured + n >= bound) this.behind(node, measured + n);
  }

  /** Measures every live node's inbox now (also called by tests through the timer). */
  measure(): Promise<void> {
    return this.measuring ??= this.measureNow().finally(() => this.measuring = null);
  }

  private schedule(): void {
    if (!this.running) return;
    const wait = this.overNodes.size > 0 ? this.opts.pollMs : this.opts.periodMs;
    if (this.timer !== null) {
      if (this.timerAt <= Date.now() + wait) return;
      clearTimeout(this.timer);
    }
    this.timerAt = Date.now() + wait;
    this.timer = setTimeout(async () => {
      this.timer = null;
      try {
        await this.measure();
      } catch (e) {
        // Redis unreachable: the figures stay as they were, held acknowledgements keep waiting.
        log.debug`measuring inbox backlogs failed: ${(e as Error).message}`;
      }
      this.schedule();
    }, wait);
  }

  private behind(node: string, n: number): void {
    this.overNodes.add(node);
    this.stats.over = this.overNodes.size;
    const bound = this.opts.bound;
    if (node === this.self) {
      log
        .warn`this node's inbox holds ${n} entries (cluster.max_inbox_backlog ${bound}): it is behind, other nodes hold their publishers`;
    } else {
      log
        .warn`node ${node} is behind: ${n} inbox entries (cluster.max_inbox_backlog ${bound}); holding acknowledgements of messages for it`;
    }
    // Its catching up is watched more closely (held acknowledgements wait for it).
    this.schedule();
  }

  private async measureNow(): Promise<void> {
    if (this.cmd.status !== "ready") return;
    const nodes = [...this.live()];
    if (!nodes.includes(this.self)) nodes.push(this.self);
    // Auto-pipelined: one round trip for every node. Each XLEN goes out on the connection the
    // entries are written on, after those written so far and before those written from now on.
    // Entries still queued in the writer (behind a round in flight) go out after it: they stay
    // counted. Forgetting them let a node under a slow Redis read as caught up while its inbox
    // was still growing (CI: 173 entries with a bound of 30).
    this.since.clear();
    for (const node of nodes) {
      const queued = this.unsent(node);
      if (queued > 0) this.since.set(node, queued);
    }
    const lengths = await Promise.all(nodes.map((n) => this.cmd.xlen(this.inboxKey(n))));
    const bound = this.opts.bound;
    this.lengths.clear();
    for (let i = 0; i < nodes.length; i++) {
      const node = nodes[i];
      const n = lengths[i];
      this.lengths.set(node, n);
      if (node === this.self) this.stats.own = n;
      const estimate = n + (this.since.get(node) ?? 0);
      const over = bound > 0 && estimate >= bound;
      if (over && !this.overNodes.has(node)) this.behind(node, estimate);
      else if (!over && this.overNodes.delete(node)) {
        log.info`node ${node} caught up: ${n} inbox entries`;
        this.release(node);
      }
    }
    // A node that is gone (left, or dead: a survivor delivers its inbox) holds nothing back.
    for (const node of [...this.overNodes]) {
      if (!this.lengths.has(node)) {
        this.overNodes.delete(node);
        this.release(node);
      }
    }
    for (const node of [...this.waiters.keys()]) {
      if (!this.overNodes.has(node)) this.release(node);
    }
    this.stats.over = this.overNodes.size;
  }

  private release(node: string): void {
    const w = this.waiters.get(node);
    if (w === undefined) return;
    this.waiters.delete(node);
    w.resolve();
  }
}
