/**
 * The replicated route table, seen from one node: this node's routes are
 * written to Redis by script (absolute counts, so retries and re-announces
 * are harmless), and every node's routes are mirrored into a local trie by
 * loading the table and tailing the route log on a dedicated blocking
 * connection. A SUBACK can wait for the fence: every live node has applied
 * the log entry of the new route.
 */
import { getLogger } from "@logtape/logtape";
import {
  READ_BLOCK_MS,
  reconnectDelay,
  type RedisClient,
  unlessClosed,
} from "./redis_connection.ts";
import type { ClusterKeys, ClusterScripts } from "./redis_scripts.ts";
import { RouteTrie } from "./route_trie.ts";

const log = getLogger(["mcloudtt", "cluster"]);

/** Compares stream ids `ms-seq`: negative, zero or positive. */
export function compareIds(a: string, b: string): number {
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am !== bm ? am - bm : (as ?? 0) - (bs ?? 0);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class RouteSync {
  readonly trie: RouteTrie;
  /** Local subscriber count per route key (the Bus hears first/last only; counts guard repeats). */
  readonly local = new Map<string, number>();
  /** Last route-log id applied to the trie. */
  private lastId = "0-0";
  /** Bumped by every reload: a tail read issued before it is stale. */
  private generation = 0;
  private running = false;
  private waiters: { id: string; resolve: () => void }[] = [];
  private tailLoop: Promise<void> | null = null;
  /** Routes whose last write failed, and the timer that writes them again (`writeAgainLater`). */
  private readonly unwritten = new Set<string>();
  private again: ReturnType<typeof setTimeout> | null = null;
  private againAttempts = 0;
  private stopped = false;

  constructor(
    private readonly self: string,
    private readonly keys: ClusterKeys,
    private readonly cmd: RedisClient,
    private readonly tail: RedisClient,
    private readonly scripts: ClusterScripts,
    /** Live nodes as last seen by the lease tick. */
    private readonly liveNodes: () => ReadonlySet<string>,
    private readonly fenceMs: number,
  ) {
    this.trie = new RouteTrie(self);
  }

  private tableKeys(node: string): [string, string, string] {
    return [this.keys.table, this.keys.log, this.keys.nodeRoutes(node)];
  }

  /** Writes this node's count for `key`; resolves to the log id when the route appeared or went. */
  write(key: string, count: number): Promise<string | null> {
    return this.scripts.routeSet(this.tableKeys(this.self), this.self, key, count);
  }

  /** First local subscriber of `key`: live locally now, and for other nodes once the script (and fence) are done. */
  async add(key: string): Promise<void> {
    this.trie.set(key, this.self, true);
    let id: string | null;
    try {
      id = await this.write(key, this.local.get(key) ?? 1);
    } catch (e) {
      log.warn`route ${key} not written yet: ${(e as Error).message}`;
      this.writeAgainLater(key);
      return;
    }
    if (id !== null && this.fenceMs > 0) await this.fence(id);
  }

  /** Last local subscriber of `key` went away. */
  remove(key: string): void {
    this.trie.set(key, this.self, false);
    this.write(key, 0).catch((e) => {
      log.warn`route ${key} not withdrawn yet: ${(e as Error).message}`;
      this.writeAgainLater(key);
    });
  }

  /**
   * A route write failed: the routes whose writes failed are written again (with the count this
   * node holds then) until that goes through. A reconnect's resync writes every route again too,
   * but Redis may refuse a write on a connection that stays up (OOM under `maxmemory`, a script
   * error): the subscription then stayed unknown to the other nodes, and their publishers'
   * messages never reached it, until the reconcile timer (5 minutes) ran.
   */
  private writeAgainLater(key: string): void {
    this.unwritten.add(key);
    if (this.again !== null || this.stopped) return;
    const wait = reconnectDelay(this.againAttempts);
    this.again = setTimeout(async () => {
      this.again = null;
      const keys = [...this.unwritten];
      this.unwritten.clear();
      const results = await Promise.allSettled(
        keys.map((k) => this.write(k, this.local.get(k) ?? 0)),
      );
      const failed = keys.filter((_, i) => results[i].status === "rejected");
      if (failed.length === 0) {
        this.againAttempts = 0;
        log.info`${keys.length} route(s) written again`;
        return;
      }
      this.againAttempts++;
      log.debug`writing ${failed.length} route(s) again failed; retrying`;
      for (const k of failed) this.writeAgainLater(k);
    }, wait);
  }

  /** Withdraws every route of `node` from the shared table (and the trie). */
  async purge(node: string): Promise<number> {
    this.trie.dropNode(node);
    return await this.scripts.routePurge(this.tableKeys(node), node);
  }

  /**
   * Makes the shared table say exactly what this node holds: re-announces
   * every local route and withdraws ones left over (after an outage or a
   * Redis restart).
   */
  async reannounce(): Promise<void> {
    const written = await this.cmd.smembers(this.keys.nodeRoutes(this.self));
    const stale = written.filter((k) => !this.local.has(k));
    await Promise.all([
      ...[...this.local].map(([key, n]) => this.write(key, n)),
      ...stale.map((key) => this.write(key, 0)),
    ]);
  }

  /** Loads the whole table: the log position first, then the table, atomically. */
  async reload(keepRemote = false): Promise<void> {
    const res = await this.cmd.multi()
      .xrevrange(this.keys.log, "+", "-", "COUNT", 1)
      .hgetall(this.keys.table)
      .exec();
    if (res === null) throw new Error("route table load was aborted");
    for (const [err] of res) if (err) throw err;
    const last = res[0][1] as [string, string[]][];
    const table = res[1][1] as Record<string, string>;
    this.generation++;
    // Kept after Redis lost the table: other nodes have not announced theirs again yet.
    if (!keepRemote) this.trie.clearRemote();
    for (const [field, count] of Object.entries(table)) {
      const nl = field.indexOf("\n");
      if (nl < 0) {
        log.warn`skipping a malformed route table field ${JSON.stringify(field)}`;
        continue;
      }
      const node = field.slice(0, nl);
      if (node !== this.self && Number(count) > 0) this.trie.set(field.slice(nl + 1), node, true);
    }
    this.lastId = last.length > 0 ? last[0][0] : "0-0";
    this.applied();
  }

  /** Nodes with at least one route in the shared table. */
  async tableNodes(): Promise<Set<string>> {
    const nodes = new Set<string>();
    let cursor = "0";
    do {
      const [next, fields] = await this.cmd.hscan(this.keys.table, cursor, "COUNT", 1000);
      cursor = next;
      for (let i = 0; i < fields.length; i += 2) {
        const nl = fields[i].indexOf("\n");
        if (nl > 0) nodes.add(fields[i].slice(0, nl));
      }
    } while (cursor !== "0");
    return nodes;
  }

  /** Starts tailing the route log (after `reload`). */
  startTail(): void {
    this.running = true;
    this.tailLoop ??= this.tailForever();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.stopped = true;
    if (this.again !== null) clearTimeout(this.again);
    this.again = null;
    for (const w of this.waiters) w.resolve();
    this.waiters = [];
    this.tail.disconnect();
    await this.tailLoop;
  }

  private async tailForever(): Promise<void> {
    let failures = 0;
    while (this.running) {
      const gen = this.generation;
      try {
        const res = await unlessClosed(
          this.tail,
          this.tail.xread(
            "COUNT",
            1000,
            "BLOCK",
            READ_BLOCK_MS,
            "STREAMS",
            this.keys.log,
            this.lastId,
          ),
        );
        failures = 0;
        if (res === null || gen !== this.generation) continue;
        for (const [, entries] of res) {
          for (const [id, fields] of entries) this.apply(id, fields);
        }
        this.applied();
      } catch (e) {
        if (!this.running) break;
        if (failures++ === 0) log.warn`route log tail: ${(e as Error).message}`;
        await sleep(Math.min(1000, 50 * failures));
      }
    }
  }

  private apply(id: string, fields: string[]): void {
    this.lastId = id;
    let key: string | undefined, node: string | undefined, present: string | undefined;
    for (let i = 0; i + 1 < fields.length; i += 2) {
      if (fields[i] === "k") key = fields[i + 1];
      else if (fields[i] === "n") node = fields[i + 1];
      else if (fields[i] === "p") present = fields[i + 1];
    }
    if (key === undefined || node === undefined || (present !== "1" && present !== "0")) {
      log.warn`skipping a malformed route log entry ${id}`;
      return;
    }
    // This node's own routes are kept locally; a late echo must not undo a newer local change.
    if (node === this.self) return;
    this.trie.set(key, node, present === "1");
  }

  /** Publishes how far this node has applied the log and wakes fence waiters. */
  private applied(): void {
    const id = this.lastId;
    this.cmd.hset(this.keys.applied, this.self, id).catch(() => {});
    if (this.waiters.length === 0) return;
    this.waiters = this.waiters.filter((w) => {
      if (compareIds(id, w.id) < 0) return true;
      w.resolve();
      return false;
    });
  }

  /** Waits (at most fenceMs) until every live node has applied log entry `id`. */
  private async fence(id: string): Promise<void> {
    const deadline = Date.now() + this.fenceMs;
    // Our own tail sees the entry at about the time the others do.
    if (compareIds(this.lastId, id) < 0) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.waiters.push({ id, resolve });
        timer = setTimeout(resolve, this.fenceMs);
      });
      clearTimeout(timer);
    }
    while (this.running && Date.now() < deadline) {
      const applied = await this.cmd.hgetall(this.keys.applied).catch(() => null);
      if (applied === null) return;
      const behind = [...this.liveNodes()].filter((n) =>
        n !== this.self && (applied[n] === undefined || compareIds(applied[n], id) < 0)
      );
      if (behind.length === 0) return;
      await sleep(2);
    }
    log.debug`route fence for ${id} timed out after ${this.fenceMs} ms`;
  }

  /**
   * Waits (at most the fence time) until every live node has applied the
   * route log as it is now: after a purge, no node forwards to the purged
   * node any more.
   */
  async settle(): Promise<void> {
    const last = await this.cmd.xrevrange(this.keys.log, "+", "-", "COUNT", 1);
    if (last.length > 0 && this.fenceMs > 0) await this.fence(last[0][0]);
  }

  /** Forgets the applied position of a dead node. */
  async forgetApplied(node: string): Promise<void> {
    await this.cmd.hdel(this.keys.applied, node);
  }
}
