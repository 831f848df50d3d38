/**
 * The cluster bus on Redis: a replicated route table (RouteSync), per-node
 * inbox streams for forwarded messages and control entries (InboxWriter /
 * InboxReader), leases for liveness (Liveness), and a compare-and-set owner
 * key per client id (SessionClaims); a survivor cleans up after a dead node
 * (Departures). Four connections per node: commands (auto-pipelined,
 * failing fast while Redis is down so local clients keep being served), the
 * lease (renewals never queue behind forwarded messages, redis_liveness.ts),
 * and one blocking reader each for the route log and the inbox.
 *
 * A topic nobody on another node subscribes to costs no Redis command: the
 * decision is made on the local mirror of the route table.
 */
import { getLogger } from "@logtape/logtape";
import type { Config } from "../config/schema.ts";
import type { Message } from "../protocol/message.ts";
import { encodeBody, encodeGroups, MessageIds } from "./codec.ts";
import {
  type Dispatch,
  dispatch,
  redeliveryTarget,
  Rotation,
  type SharedPolicy,
  toEveryNode,
} from "./dispatch.ts";
import { bounded } from "./memory_hub.ts";
import {
  createRedisConnection,
  describeRedis,
  READ_BLOCK_MS,
  type RedisClient,
  type RedisConfig,
} from "./redis_connection.ts";
import { SessionClaims } from "./redis_claims.ts";
import { Departures } from "./redis_departures.ts";
import { InboxWriter } from "./inbox_writer.ts";
import { InboxReader, type InboxStats } from "./redis_inbox.ts";
import { InboxBacklog } from "./redis_backlog.ts";
import { Liveness } from "./redis_liveness.ts";
import { StateMarker } from "./redis_marker.ts";
import { StartWait } from "./redis_start.ts";
import { Resync } from "./redis_resync.ts";
import { ReplicaWait } from "./redis_replicas.ts";
import { RouteSync } from "./redis_routes.ts";
import { ClusterKeys, type ClusterScripts, defineScripts } from "./redis_scripts.ts";
import {
  type BacklogStats,
  type Bus,
  type BusHost,
  type ForwardResult,
  LOCAL_ONLY,
} from "./types.ts";

const log = getLogger(["mcloudtt", "cluster"]);

export interface RedisBusOptions {
  redis: RedisConfig;
  cluster: Config["cluster"];
  /** This process's incarnation id (see incarnationId). */
  nodeId: string;
}

/** `<node_id or hostname-pid>-<random>`: a restarted process is a new node. */
export function incarnationId(nodeId: string): string {
  let base = nodeId;
  if (base === "") {
    let host = "node";
    try {
      host = Deno.hostname();
    } catch {
      // no --allow-sys: the pid and the random suffix still make the id unique
    }
    base = `${host}-${Deno.pid}`;
  }
  const suffix = crypto.getRandomValues(new Uint8Array(4));
  return `${base}-${[...suffix].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** How long a stop waits for the route-log and inbox readers to finish their current read. */
const READER_STOP_MS = 2000;

/**
 * How often the inboxes are measured while a node is over `[cluster] max_inbox_backlog`
 * (held acknowledgements go out at most this late after it caught up).
 */
const BACKLOG_POLL_MS = 100;

export class RedisBus implements Bus {
  readonly name = "redis";
  readonly nodeId: string;
  readonly keys: ClusterKeys;
  readonly stats: InboxStats = {
    forwarded: 0,
    entries: 0,
    dropped: 0,
    received: 0,
    corrupt: 0,
    duplicates: 0,
    rewritten: 0,
  };

  private readonly cmd: RedisClient;
  /** The lease's own connection (see redis_liveness.ts). */
  private readonly leaseConn: RedisClient;
  private readonly tailConn: RedisClient;
  private readonly readConn: RedisClient;
  private readonly scripts: ClusterScripts;
  private readonly routes: RouteSync;
  private readonly writer: InboxWriter;
  private readonly liveness: Liveness;
  /** Inbox lengths of the live nodes, and the acknowledgements held for nodes behind. */
  readonly backlog: InboxBacklog;
  private reader: InboxReader | null = null;
  /** The start's wait for Redis while start() runs (a stop ends it). */
  private starting: StartWait | null = null;
  private host: BusHost | null = null;
  private readonly rotation = new Rotation();
  private readonly policy: SharedPolicy;
  private readonly sync: boolean;
  private joined = false;
  private stopped = false;
  /** Tells when Redis lost the cluster state (redis_marker.ts). */
  private readonly marker: StateMarker;
  private readonly resyncs: Resync;
  /** Owner keys and takeovers (kick / released entries). */
  private readonly claims: SessionClaims;
  /** What this node does for nodes that died or left. */
  private readonly departures: Departures;
  /** `[redis] wait_replicas`: this turn's inbox writes, confirmed by replicas (one WAIT). */
  private readonly replicas: ReplicaWait;
  private turn: { written: Promise<void>; inboxes: Set<string>; durable: Promise<void> } | null =
    null;
  /** Cluster-wide ids of the messages this node forwards. */
  private readonly ids = new MessageIds();
  /** The last message `holdUnbounded` held the publisher of, and until when (set past a bound). */
  private heldMsg: Message | null = null;
  private heldUntil: Promise<void> | null = null;

  constructor(private readonly opts: RedisBusOptions) {
    this.nodeId = opts.nodeId;
    this.keys = new ClusterKeys(opts.redis.key_prefix);
    this.policy = opts.cluster.shared_policy;
    this.sync = opts.redis.durability === "sync";
    this.cmd = createRedisConnection(opts.redis, { name: `bus:${this.nodeId}` });
    // Blocking readers: no auto-pipelining (a blocked read would hold up others), commands wait
    // for the reconnect, and an in-flight read is failed (not resent) on a lost connection so the
    // loop re-reads pending entries first.
    const blocking = {
      offline: "queue",
      autoPipelining: false,
      resendInFlight: false,
      blockMs: READ_BLOCK_MS,
    } as const;
    this.tailConn = createRedisConnection(opts.redis, {
      name: `routes:${this.nodeId}`,
      ...blocking,
    });
    this.readConn = createRedisConnection(opts.redis, {
      name: `inbox:${this.nodeId}`,
      ...blocking,
    });
    // Nothing to batch on it, and nothing else on it to wait behind.
    this.leaseConn = createRedisConnection(opts.redis, {
      name: `lease:${this.nodeId}`,
      autoPipelining: false,
    });
    this.marker = new StateMarker(this.cmd, this.keys.prefix, this.keys.marker);
    this.scripts = defineScripts(this.cmd);
    const cmdLink = { client: this.cmd, scripts: this.scripts };
    const leaseLink = { client: this.leaseConn, scripts: defineScripts(this.leaseConn) };
    this.liveness = new Liveness(this.nodeId, this.keys, cmdLink, leaseLink, {
      renewMs: opts.cluster.lease_renew_ms,
      ttlMs: opts.cluster.lease_ttl_ms,
      onDead: (node) => this.departures.dead(node),
      onExpelled: () => this.expelled(),
      onRejoined: (why) => this.resyncs.request(why),
    });
    this.routes = new RouteSync(
      this.nodeId,
      this.keys,
      this.cmd,
      this.tailConn,
      this.scripts,
      () => this.liveness.live,
      opts.cluster.route_fence_ms,
    );
    this.writer = new InboxWriter(
      this.cmd,
      (n) => this.keys.inbox(n),
      this.stats,
      (n) => this.backlog.wrote(n),
      opts.redis.command_timeout_ms,
      opts.cluster.max_forward_bytes,
      (n) => this.backlog.stats.dropped += n,
      (n) => this.liveness.live.has(n),
    );
    this.backlog = new InboxBacklog(
      this.nodeId,
      this.cmd,
      (n) => this.keys.inbox(n),
      () => this.liveness.live,
      {
        bound: opts.cluster.max_inbox_backlog,
        periodMs: opts.cluster.lease_renew_ms,
        pollMs: Math.min(BACKLOG_POLL_MS, opts.cluster.lease_renew_ms),
      },
      (n) => this.writer.unsent(n),
    );
    this.claims = new SessionClaims(
      this.nodeId,
      this.keys,
      this.cmd,
      this.scripts,
      this.liveness,
      this.writer,
      opts.cluster,
      () => this.stopped,
      (clientId, epoch) => this.host?.sessionTakenOver(clientId, epoch),
    );
    this.departures = new Departures(
      this.nodeId,
      this.keys,
      this.cmd,
      this.routes,
      this.liveness,
      this.claims,
      (node) => this.host?.nodeDown(node),
    );
    this.replicas = new ReplicaWait(
      this.cmd,
      opts.redis.wait_replicas ?? 0,
      opts.redis.wait_timeout_ms ?? 500,
    );
    this.resyncs = new Resync({
      cmd: this.cmd,
      marker: this.marker,
      liveness: this.liveness,
      claims: this.claims,
      departures: this.departures,
      routes: this.routes,
      reader: () => this.reader,
      host: () => this.host,
      active: () => this.joined && !this.stopped,
      reconcileMs: opts.cluster.reconcile_interval * 1000,
    });
  }

  /**
   * Resolves once every other live node has had a lease renewal to learn that
   * this one is alive: from then on they send it every retained message. The
   * broker loads the stored retained set after this, so a retained publish
   * elsewhere reaches either that load or this node.
   */
  async settled(): Promise<void> {
    if ([...this.liveness.live].some((n) => n !== this.nodeId)) {
      await new Promise((r) => setTimeout(r, this.opts.cluster.lease_renew_ms + 50));
    }
  }

  /** What keeps this node from being ready (/readyz adds "cluster: " to each). */
  get problems(): readonly string[] {
    const out: string[] = [];
    if (this.stopped) return ["stopped"];
    if (this.cmd.status !== "ready") {
      out.push(`redis unreachable (${describeRedis(this.opts.redis)})`);
    }
    if (!this.joined) out.push("joining");
    else if (this.resyncs.busy) out.push("resynchronising routes after reconnect");
    if (this.liveness.expelled) out.push("expelled, waiting to rejoin");
    else if (this.liveness.lapsed) out.push("lease not renewed in time");
    const forwarding = this.writer.problem;
    if (forwarding !== null) out.push(forwarding);
    const replication = this.replicas.problem;
    if (replication !== null) out.push(`forwarded QoS 1/2 messages are refused: ${replication}`);
    // Behind: its forwarders hold their publishers' acknowledgements for it; new clients are
    // better served elsewhere until it caught up.
    if (this.backlog.isOver(this.nodeId)) {
      out.push(
        `own inbox ${this.backlog.stats.own} entries behind ` +
          `(max_inbox_backlog ${this.opts.cluster.max_inbox_backlog})`,
      );
    }
    return out;
  }

  /** Nodes over `[cluster] max_inbox_backlog`: a shared group's member is picked elsewhere. */
  private readonly behind = (node: string): boolean => this.backlog.isOver(node);

  get backlogStats(): BacklogStats {
    return this.backlog.stats;
  }

  /** The local mirror of every node's routes (for tests and diagnostics). */
  get routeCount(): number {
    return this.routes.trie.size;
  }

  async start(host: BusHost): Promise<void> {
    this.host = host;
    const wait = this.starting = new StartWait("cluster", this.opts.redis.start_timeout_ms);
    const conns = [this.cmd, this.leaseConn, this.tailConn, this.readConn];
    await Promise.all(conns.map((c) => wait.ready(c)));
    const reader = this.reader = new InboxReader(
      this.nodeId,
      this.keys.inbox(this.nodeId),
      this.cmd,
      this.readConn,
      host,
      this.claims.control,
      this.stats,
      () => this.liveness.confirm(),
    );
    // Again from the top while a command fails (a Redis Cluster master down, Redis loading its
    // data): every step may run again after a part of it went through.
    await wait.retry(async () => {
      await this.marker.check();
      await this.liveness.join();
      await reader.ensureGroup();
      await this.departures.purgeDeparted();
      await this.routes.reannounce();
      await this.routes.reload();
    });
    this.routes.startTail();
    reader.start();
    this.backlog.start();
    // A lease renewal finding its data lost (Redis restarted) asks for the resync itself.
    this.leaseConn.on("ready", () => this.liveness.connectionBack());
    this.resyncs.start();
    this.starting = null;
    this.joined = true;
    log.info`node ${this.nodeId} joined the cluster on ${describeRedis(this.opts.redis)}`;
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.resyncs.stop();
    this.claims.stop();
    // Readers first, so none is blocked on the inbox deleted below. Bounded: a reader stuck on a
    // command of a connection that is being re-established must not hold up the stop; the
    // command connection is closed below, which ends whatever it was waiting for.
    await this.stopReaders();
    const others = [...this.liveness.live].some((n) => n !== this.nodeId);
    if (this.joined && this.cmd.status === "ready" && others) {
      // Hand over to a survivor, which handles this node as a dead one at its next renewal:
      // it adopts the sessions left here (offline persistent sessions, delayed wills) before
      // withdrawing this node's routes, then delivers what reached the inbox meanwhile to
      // them. Leaving outright would withdraw the routes first and lose what is published for
      // those sessions until their clients come back.
      try {
        await this.liveness.stop(false);
        await this.liveness.expire();
      } catch (e) {
        log.warn`handing over to the cluster failed: ${(e as Error).message}`;
      }
    } else if (this.joined && this.cmd.status === "ready") {
      try {
        this.routes.local.clear();
        await this.routes.purge(this.nodeId);
        await this.liveness.stop(true);
        await this.routes.forgetApplied(this.nodeId);
        await this.cmd.del(this.keys.inbox(this.nodeId));
        // No node is left to take sessions over from: the owner keys have nothing to order.
        await this.claims.releaseAll(this.nodeId);
      } catch (e) {
        log.warn`leaving the cluster cleanly failed: ${(e as Error).message}`;
      }
    }
    await this.shutdown();
  }

  /** Stops without leaving, as a crash would: routes, lease and inbox stay for others to clean up. */
  async halt(): Promise<void> {
    this.stopped = true;
    this.resyncs.stop();
    await this.shutdown();
  }

  private async shutdown(): Promise<void> {
    // A start still waiting for Redis ends (its connections are closed below).
    this.starting?.cancel();
    this.backlog.stop();
    await this.liveness.stop(false);
    await this.stopReaders();
    this.cmd.disconnect();
    this.leaseConn.disconnect();
    // The reader's own, when a stop came before the start made the reader.
    this.readConn.disconnect();
    this.joined = false;
  }

  private stopReaders(): Promise<void> {
    const done = Promise.all([this.routes.stop(), this.reader?.stop()]).then(() => {});
    return bounded(done, READER_STOP_MS);
  }

  addRoute(key: string): Promise<void> | null {
    const n = this.routes.local.get(key) ?? 0;
    this.routes.local.set(key, n + 1);
    if (n > 0) return null;
    return this.routes.add(key);
  }

  removeRoute(key: string): void {
    const n = this.routes.local.get(key) ?? 0;
    if (n > 1) {
      this.routes.local.set(key, n - 1);
      return;
    }
    this.routes.local.delete(key);
    if (n === 1) this.routes.remove(key);
  }

  forward(msg: Message, retainVersion = ""): ForwardResult {
    if (this.stopped) return LOCAL_ONLY;
    let d = dispatch(
      this.routes.trie.plan(msg.topic),
      this.nodeId,
      this.policy,
      this.rotation,
      this.backlog.anyOver ? this.behind : undefined,
    );
    const routed = d !== null && d.dests.size > 0;
    if (msg.retain) d = toEveryNode(d, this.liveness.live, this.nodeId);
    if (d === null) return LOCAL_ONLY;
    if (d.dests.size === 0) return { localGroups: d.localGroups, written: null, routed };
    // The id every copy carries, so a session reached by two of them keeps one (QoS 0 is never
    // held twice: not queued, not handed over with a session), and a node that receives an entry
    // twice (a write repeated after no answer, redis_inbox.ts) delivers it once. A retained QoS 0
    // message is written again too (every node's retained index must get it): it has one.
    if ((msg.qos !== 0 || msg.retain) && msg.id === "") msg.id = this.ids.next();
    // Encoded now: the message may be a view into a read buffer that is reused after this call.
    const body = encodeBody(msg);
    if (this.backlog.anyOver) return this.forwardBehind(msg, d, body, routed, retainVersion);
    for (const [dest, groups] of d.dests) {
      this.writer.add(dest, encodeGroups(groups), body, msg.id, retainVersion);
    }
    const over = this.writer.over; // under the bound: one field read, nothing made
    if (over !== null) this.holdUnbounded(msg, over);
    return {
      localGroups: d.localGroups,
      written: msg.qos > 0 && this.sync ? this.durable(d.dests.keys()) : null,
      routed,
    };
  }

  forwardShared(msg: Message, key: string): boolean {
    if (this.stopped) return false;
    const dest = redeliveryTarget(
      this.routes.trie.plan(msg.topic),
      key,
      this.nodeId,
      this.rotation,
      this.backlog.anyOver ? this.behind : undefined,
    );
    if (dest === null) return false;
    // A new id: the receiver may have had this message's own id already (a copy for its plain
    // subscribers), and would drop this one as the same entry written twice.
    const id = msg.qos === 0 ? "" : this.ids.next();
    // An entry of its own: a node of an older version skips an entry with this record.
    this.writer.add(dest, encodeGroups([key]), encodeBody(msg, true), id, "", true);
    return true;
  }

  /**
   * `forward` while some node is over `[cluster] max_inbox_backlog` (see
   * redis_backlog.ts): a QoS 1/2 copy for it is written, its acknowledgement
   * held until the node caught up; a QoS 0 copy is dropped (a retained one is
   * not: every node's retained index must stay current).
   */
  private forwardBehind(
    msg: Message,
    d: Dispatch,
    body: Uint8Array,
    routed: boolean,
    retainVersion: string,
  ): ForwardResult {
    const bp = this.backlog;
    let behind: string[] | null = null;
    for (const [dest, groups] of d.dests) {
      if (bp.isOver(dest)) {
        if (msg.qos === 0 && !msg.retain) {
          bp.stats.dropped++;
          continue;
        }
        if (msg.qos > 0) (behind ??= []).push(dest);
        // Retained QoS 0: written all the same, and its publisher waits for the node.
        else this.holdUnbounded(msg, bp.caughtUp(dest));
      }
      this.writer.add(dest, encodeGroups(groups), body, msg.id, retainVersion);
    }
    const over = this.writer.over;
    if (over !== null) this.holdUnbounded(msg, over);
    let written = msg.qos > 0 && this.sync ? this.durable(d.dests.keys()) : null;
    if (behind !== null) { for (const dest of behind) written = bp.hold(dest, written); }
    return { localGroups: d.localGroups, written, routed };
  }

  /**
   * `msg` was written past `max_forward_bytes` or for a node over `max_inbox_backlog`: when
   * nothing else slows its publisher down (retained QoS 0, written whatever the bounds because
   * every node's retained index must get it; QoS 1/2 whose acknowledgement does not wait for
   * Redis, durability "async"), the publisher is not read until `until` resolves. Before, one
   * client flooding retained QoS 0 messages held 2.3 GB for Redis on its node.
   */
  private holdUnbounded(msg: Message, until: Promise<void>): void {
    // A retained message whatever its QoS: its copies are written again until Redis takes them
    // (InboxWriter.keepRetained), also when its acknowledgement was refused at once (Redis
    // unreachable). Exempted, a QoS 1 publisher carrying on after each 0x80 grew a node by 25
    // MiB/s while Redis was down, and the backlog, sent when it came back, got it declared dead.
    if (!msg.retain && (msg.qos === 0 || this.sync)) return;
    this.heldMsg = msg;
    this.heldUntil = until;
  }

  heldPublisher(msg: Message): Promise<void> | null {
    if (this.heldMsg !== msg) return null;
    const until = this.heldUntil;
    this.heldMsg = this.heldUntil = null;
    return until;
  }

  /** What a QoS 1/2 acknowledgement waits for: this turn's inbox writes (and their WAIT). */
  private durable(dests: Iterable<string>): Promise<void> {
    const written = this.writer.written();
    if (!this.replicas.enabled) return written;
    let t = this.turn;
    if (t === null || t.written !== written) {
      const inboxes = new Set<string>();
      t = this.turn = { written, inboxes, durable: this.replicas.after(written, inboxes) };
      t.durable.catch(() => {});
    }
    for (const dest of dests) t.inboxes.add(this.keys.inbox(dest));
    return t.durable;
  }

  claimSession(
    clientId: string,
    numbered?: (epoch: number) => void,
    adoptingFrom?: string,
    owner?: string | null,
  ): Promise<number> {
    return this.claims.claim(clientId, numbered, adoptingFrom, owner);
  }

  releaseSession(clientId: string): void {
    this.claims.release(clientId);
  }

  /**
   * A survivor handled this node as dead while it was frozen: it adopted the
   * sessions, published the wills and drained the inbox. What this node still
   * holds is stale: its connections are closed and its sessions forgotten
   * without writing. The lease is registered again once the survivor is done
   * (then `resync` re-announces the routes of whoever connects meanwhile).
   */
  private expelled(): void {
    try {
      this.host?.expelled();
    } catch (e) {
      log.error`dropping the sessions of an expelled node failed: ${(e as Error).stack ?? e}`;
    }
  }
}
