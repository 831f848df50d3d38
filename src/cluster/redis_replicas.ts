/**
 * `[redis] wait_replicas`: an acknowledged write must be on that many
 * replicas, not only on the primary. Redis replicates asynchronously, so a
 * failover (Sentinel or Redis Cluster promoting a replica) can lose writes
 * the primary had already confirmed; WAIT closes that window for the writes
 * an acknowledgement depends on.
 *
 * WAIT counts the replicas that have everything written on *this
 * connection* so far, and it blocks the connection while it waits. So: it
 * is sent once the writes it covers have been answered, on the very
 * connection (in Redis Cluster mode, the connection to each master) that
 * carried them; at most one WAIT per connection is outstanding, and
 * confirmations asked for meanwhile are merged into the next one (group
 * commit: one WAIT covers every write before it). A connection that was
 * lost between the writes and the WAIT's answer proves nothing (the WAIT ran
 * on a new connection, perhaps on a new primary without those writes): that
 * counts as a failure.
 *
 * A failure is remembered for `/readyz` (`problem`) until a later WAIT on
 * those masters succeeds: the next batch's, or a probe sent when readiness is
 * asked while nothing else is waiting. So a node whose writes cannot be
 * replicated (a Redis Cluster master promoted while its only replica was
 * lost, every replica down) says so, and says it is fine again once a
 * replica is back, with or without traffic.
 */
import { Cluster, type Redis } from "ioredis";
import calculateSlot from "cluster-key-slot";
import { MqttError, ReasonCode } from "../protocol/reason_codes.ts";
import type { RedisClient } from "./redis_connection.ts";

/** A write Redis took, but fewer replicas than `[redis] wait_replicas` confirmed it in time. */
export class ReplicationError extends MqttError {
  constructor(message: string) {
    super(ReasonCode.UnspecifiedError, message);
    this.name = "ReplicationError";
  }
}

interface Group {
  keys: Set<string>;
  /** Connection losses counted when the earliest write of the group was sent. */
  mark: number;
  resolve: () => void;
  reject: (e: Error) => void;
  promise: Promise<void>;
}

const slotOf = calculateSlot as unknown as (key: string) => number;

export class ReplicaWait {
  /** Connections lost (or cluster nodes dropped) since the client was created. */
  private drops = 0;
  private running = false;
  private next: Group | null = null;
  /** The last WAIT's failure (null once one succeeded after it), and the keys it covered. */
  private failure: { message: string; keys: Set<string> } | null = null;
  /** When readiness last sent a probe WAIT (ms). */
  private probedAt = 0;

  constructor(
    private readonly client: RedisClient,
    /** Replicas each write must reach; 0 = WAIT is never sent. */
    readonly replicas: number,
    readonly timeoutMs: number,
  ) {
    if (replicas === 0) return;
    if (client instanceof Cluster) {
      client.on("+node", (node: Redis) => node.on("close", () => this.drops++));
      client.on("-node", () => this.drops++);
    } else {
      client.on("close", () => this.drops++);
    }
  }

  get enabled(): boolean {
    return this.replicas > 0;
  }

  /**
   * Why acknowledgements that need replicas are refused now, or null. While
   * it lasts, each call (at most once per `timeoutMs`, and only when no WAIT
   * is under way) sends a probe WAIT to the masters of the failed write, so
   * the problem clears once they have their replicas back.
   */
  get problem(): string | null {
    const f = this.failure;
    if (f === null) return null;
    const now = Date.now();
    if (!this.running && this.next === null && now - this.probedAt >= this.timeoutMs) {
      this.probedAt = now;
      this.confirm(this.drops, f.keys).catch(() => {});
    }
    return f.message;
  }

  /**
   * Resolves once the writes `written` waits for are on `replicas` replicas;
   * rejects with {@link ReplicationError} when fewer confirmed them within
   * the timeout. `keys` (read when the writes are done, so the caller may
   * still add to it) name the keys written, which pick the Redis Cluster
   * masters to ask. Call it before the writes are sent.
   */
  after(written: Promise<unknown>, keys: Set<string>): Promise<void> {
    if (!this.enabled) return written.then(() => {});
    const mark = this.drops;
    return written.then(() => this.confirm(mark, keys));
  }

  /** Joins the next WAIT (or starts it when none is outstanding). */
  private confirm(mark: number, keys: Set<string>): Promise<void> {
    if (keys.size === 0) return Promise.resolve();
    let g = this.next;
    if (g === null) {
      let resolve!: () => void, reject!: (e: Error) => void;
      const promise = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      g = this.next = { keys: new Set(), mark, resolve, reject, promise };
    }
    g.mark = Math.min(g.mark, mark);
    for (const k of keys) g.keys.add(k);
    if (!this.running) this.run();
    return g.promise;
  }

  private run(): void {
    const g = this.next;
    if (g === null) return;
    this.next = null;
    this.running = true;
    this.waitFor(g).then(
      () => {
        // Cleared only by a WAIT that covered every key of the failed one (their masters).
        const f = this.failure;
        if (f !== null && [...f.keys].every((k) => g.keys.has(k))) this.failure = null;
        g.resolve();
      },
      (e: Error) => {
        this.failure = { message: e.message, keys: g.keys };
        g.reject(e);
      },
    ).finally(() => {
      this.running = false;
      this.run();
    });
  }

  private async waitFor(g: Group): Promise<void> {
    const conns = this.connectionsOf(g.keys);
    const counts = await Promise.all(conns.map((c) => c.wait(this.replicas, this.timeoutMs)));
    if (this.drops !== g.mark) {
      throw new ReplicationError(
        "the Redis connection was lost after the write: its replication cannot be confirmed",
      );
    }
    const got = Math.min(...counts.map(Number));
    if (got < this.replicas) {
      throw new ReplicationError(
        `only ${got} of ${this.replicas} Redis replicas confirmed the write within ` +
          `${this.timeoutMs} ms (redis.wait_replicas)`,
      );
    }
  }

  /** The connections that carried writes to `keys`: the client, or each key's cluster master. */
  private connectionsOf(keys: Set<string>): Redis[] {
    const client = this.client;
    if (!(client instanceof Cluster)) return [client];
    const masters = new Map<string, Redis>();
    for (const n of client.nodes("master")) masters.set(`${n.options.host}:${n.options.port}`, n);
    const out = new Set<Redis>();
    for (const key of keys) {
      const slot = slotOf(key);
      const node = masters.get(client.slots[slot]?.[0] ?? "");
      if (node === undefined) {
        throw new ReplicationError(`no Redis Cluster master is known for slot ${slot}`);
      }
      out.add(node);
    }
    return [...out];
  }
}
