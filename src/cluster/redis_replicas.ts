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
    this.waitFor(g).then(g.resolve, g.reject).finally(() => {
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
