/**
 * The Redis store: sessions and retained messages shared by every node of a
 * cluster, so a persistent session resumes on any node and a retained message
 * is seen by subscribers everywhere.
 *
 * Key layout (P = `[redis] key_prefix`); the hash tag `{...}` keeps each
 * session's keys in one Redis Cluster slot so one script can update them, and
 * it is the tag of the cluster bus's keys of the same client (`P:{s:<id>}:own`)
 * and node (`P:{n:<node>}:inbox`):
 *   P:{s:<clientId>}:meta      hash: scalar fields, will, owner node + epoch
 *   P:{s:<clientId>}:subs      list: subscriptions (JSON), in the core's order
 *   P:{s:<clientId>}:subk      hash: subscription key -> its entry in subs, so that SUBSCRIBE
 *                              and UNSUBSCRIBE change one entry without reading the list
 *   P:{s:<clientId>}:q         list: "<seq>|<delivery>", oldest first
 *   P:{s:<clientId>}:inflight  list: "<packet id>|<inflight entry>", in send order
 *   P:{s:<clientId>}:qos2      list: incoming QoS 2 packet ids
 *   P:{s:<clientId>}:rc        list: ids of the messages its client acknowledged last, oldest
 *                              first (`[cluster] dedupe_window` of them)
 *   P:{n:<nodeId>}:sessions    set: client ids this node wrote (node death)
 *   P:{ret}:t:<topic>          string: retained message (PX until its expiry)
 *   P:{ret}:index              set: retained topics
 *
 * Every session key expires at the session's expiresAt (plus a grace so the
 * owning node acts on expiry first); a connected session has no TTL. Writes
 * are fenced once a node claimed the session (`claimSession`, called when
 * the cluster made this node its owner): from then on a write from any other
 * node fails with {@link StaleSessionError} and changes nothing.
 */
import { Cluster, type Redis } from "ioredis";
import { Buffer } from "node:buffer";
import { getLogger } from "@logtape/logtape";
import { MqttError, ReasonCode } from "../protocol/reason_codes.ts";
import { MissingSessionError } from "./errors.ts";
import {
  type ClusterStore,
  type RetainedCount,
  type RetainedPageSize,
  SECRET_BYTES,
  type SessionState,
  type StoredMessage,
  type StoredWill,
  type StoreOp,
  topicBetween,
} from "./types.ts";
import { decodeWill, encodeMessage } from "./redis_codec.ts";
import { ADOPT, APPLY, LOAD, RETAIN, TAKE_WILL } from "./redis_scripts.ts";
import { KEY_NAMES, RedisKeys, Script } from "./redis_keys.ts";
import { buf, decodeSession, logBad, str } from "./redis_session_codec.ts";
import { DEFAULT_DEDUPE_WINDOW } from "./apply.ts";
import { applyArgs, chunks, type SessionOp, WRITE_CHUNK_BYTES } from "./redis_batch.ts";
import { TOMBSTONE_MS } from "../router/retained.ts";
import { ReplicaWait } from "../cluster/redis_replicas.ts";
import { StartWait } from "../cluster/redis_start.ts";
import { RetainedReader } from "./redis_retained.ts";

const log = getLogger(["mcloudtt", "store", "redis"]);

/** A connected ioredis client: standalone/Sentinel (`Redis`) or Redis Cluster. */
export type RedisClient = Redis | Cluster;

export interface RedisStoreOptions {
  /** `[redis] key_prefix`; must not contain `{` or `}` (they delimit hash tags). */
  readonly keyPrefix: string;
  /** This node's id (`[cluster] node_id`): the owner written into sessions it loads. */
  readonly nodeId: string;
  /**
   * How long after its expiresAt a detached session's keys stay in Redis, so
   * the node holding it publishes the will and deletes it before Redis does.
   */
  readonly ttlGraceMs?: number;
  /**
   * How long an ownership marker (claim) of a session that is not stored is
   * kept (`[redis] session_claim_ttl_ms`).
   */
  readonly tombstoneMs?: number;
  /** The broker's clock, ms since the epoch: TTLs count from it. */
  readonly now?: () => number;
  /** Close (quit) the client with the store; false when the client is shared. */
  readonly ownsClient?: boolean;
  /**
   * `[redis] wait_replicas`: a batch is written once this many replicas have
   * it too (one WAIT per batch); fewer within `waitTimeoutMs` fails the
   * batch with a ReplicationError. Default 0 (the primary's answer suffices).
   */
  readonly waitReplicas?: number;
  /** `[redis] wait_timeout_ms` (default 500). */
  readonly waitTimeoutMs?: number;
  /** `[cluster] dedupe_window`: how many acknowledged ids a session's rc list keeps (256). */
  readonly dedupeWindow?: number;
  /**
   * `[redis] retained_scan_topics`: retained topics held at once (twice this while one SSCAN
   * collects them) to hand the retained messages over in topic order (redis_retained.ts).
   */
  readonly retainedScanTopics?: number;
  /** `[redis] write_chunk_bytes`: payload bytes of sessions' ops encoded and sent at a time. */
  readonly writeChunkBytes?: number;
  /** `[redis] start_timeout_ms`: how long `open()` waits for Redis to answer (default 0). */
  readonly startTimeoutMs?: number;
}

export const DEFAULT_TTL_GRACE_MS = 60_000;
export const DEFAULT_TOMBSTONE_MS = 3_600_000;

/**
 * A write for sessions this node no longer owns: another node loaded them
 * (took them over) since. Nothing of those sessions was written; the core
 * closes their connections here (0x8E Session taken over).
 */
export class StaleSessionError extends MqttError {
  constructor(
    readonly clientIds: readonly string[],
    readonly owners: readonly string[],
    /** Sessions of the same batch the store lost (see MissingSessionError). */
    readonly missing: readonly string[] = [],
  ) {
    super(
      ReasonCode.SessionTakenOver,
      `sessions owned by another node: ${
        clientIds.map((c, i) => `${c} (${owners[i] || "?"})`).join(", ")
      }`,
    );
    this.name = "StaleSessionError";
  }
}

const applyScript = new Script(APPLY);
const loadScript = new Script(LOAD);
const adoptScript = new Script(ADOPT);
const takeWillScript = new Script(TAKE_WILL);

export class RedisStore implements ClusterStore {
  readonly name = "redis";
  readonly durable = true;
  readonly shared = true;
  readonly keys: RedisKeys;
  readonly nodeId: string;
  private readonly graceMs: number;
  private readonly tombstoneMs: number;
  private readonly now: () => number;
  private readonly ownsClient: boolean;
  private closed = false;
  /** Client ids already in this node's index set (saves an SADD per write). */
  private readonly indexed = new Set<string>();
  private readonly replicas: ReplicaWait;
  private readonly window: string;
  /** Reads the retained messages in topic order (redis_retained.ts). */
  private readonly retained: RetainedReader;
  /** `[redis] write_chunk_bytes`. */
  private readonly chunkBytes: number;
  /** `[redis] start_timeout_ms`. */
  private readonly startTimeoutMs: number;
  /** The wait of an open() under way. */
  private opening: StartWait | null = null;

  constructor(readonly client: RedisClient, opts: RedisStoreOptions) {
    this.keys = new RedisKeys(opts.keyPrefix);
    this.nodeId = opts.nodeId;
    this.graceMs = opts.ttlGraceMs ?? DEFAULT_TTL_GRACE_MS;
    this.tombstoneMs = opts.tombstoneMs ?? DEFAULT_TOMBSTONE_MS;
    this.now = opts.now ?? Date.now;
    this.ownsClient = opts.ownsClient ?? false;
    this.replicas = new ReplicaWait(client, opts.waitReplicas ?? 0, opts.waitTimeoutMs ?? 500);
    this.window = String(opts.dedupeWindow ?? DEFAULT_DEDUPE_WINDOW);
    this.retained = new RetainedReader(client, this.keys, opts.retainedScanTopics);
    this.chunkBytes = opts.writeChunkBytes ?? WRITE_CHUNK_BYTES;
    this.startTimeoutMs = opts.startTimeoutMs ?? 0;
  }

  /** Session writes that need `[redis] wait_replicas` replicas and could not get them. */
  get problems(): readonly string[] {
    const p = this.replicas.problem;
    return p === null ? [] : [`session writes are refused: ${p}`];
  }

  /**
   * Connects a lazy client that was not connected yet, waiting up to `startTimeoutMs` for Redis
   * (redis_start.ts), and checks that Redis answers.
   */
  async open(): Promise<void> {
    const wait = this.opening = new StartWait("store", this.startTimeoutMs);
    try {
      await wait.ready(this.client);
      await wait.retry(() => this.client.ping());
    } finally {
      this.opening = null;
    }
  }

  /** Quits the client when the store owns it; else the client's creator closes it. */
  async close(): Promise<void> {
    // An open() still waiting for Redis ends (a start that was stopped).
    this.opening?.cancel();
    if (!this.ownsClient || this.closed) return;
    this.closed = true;
    // QUIT would wait in the offline queue of a connection that is not up (a start that waited
    // for Redis and was stopped).
    if (this.client.status !== "ready") return this.client.disconnect();
    await this.client.quit().catch(() => this.client.disconnect());
  }

  async write(ops: readonly StoreOp[]): Promise<void> {
    const now = this.now();
    const retained = this.client.multi();
    let retainedOps = 0;
    // A range deletion names no topics: it needs the index (all of it, so the core never sends
    // one to a shared store, whose retained messages are the cluster's), and the batch's own.
    const indexed = ops.some((op) => op.type === "retain-delete-range")
      ? await this.retained.allTopics()
      : null;
    /** Each session's ops, in order: encoded a chunk of sessions at a time (`chunks`). */
    const bySession = new Map<string, SessionOp[]>();
    for (const op of ops) {
      if (op.type === "retain") {
        retainedOps++;
        indexed?.add(op.msg.topic);
        this.retainOp(retained, op.msg, now, op.version ?? "");
        continue;
      }
      if (op.type === "retain-delete") {
        retainedOps++;
        this.retainScript(retained, op.topic, "", op.version ?? "", 0, op.tombstone ?? false);
        continue;
      }
      if (op.type === "retain-delete-range") {
        for (const t of indexed!) {
          if (!topicBetween(t, op.after, op.before)) continue;
          retainedOps++;
          this.retainScript(retained, t, "", "", 0, false);
        }
        continue;
      }
      const cid = op.type === "session" ? op.state.clientId : op.clientId;
      let list = bySession.get(cid);
      if (list === undefined) bySession.set(cid, list = []);
      list.push(op);
    }
    const retainedSent = retainedOps > 0 ? Promise.allSettled([retained.exec()]) : null;
    // With wait_replicas, one WAIT after the writes (on each master they touched). Each is
    // caught at once: a failure is thrown below, after every chunk was sent.
    const replicated: Promise<void>[] = [];
    const confirm = (sent: Promise<unknown>, keys: Set<string>) => {
      const r = this.replicas.after(sent, keys);
      r.catch(() => {});
      replicated.push(r);
    };
    if (retainedSent !== null) confirm(retainedSent, new Set([this.keys.retainedIndex]));
    const stale: string[] = [];
    const owners: string[] = [];
    const missing: string[] = [];
    let failure: unknown = null;
    const index: Promise<unknown>[] = [];
    for (const cids of chunks(bySession, this.chunkBytes)) {
      /** Last session/session-delete per client: whether the index should list it. */
      const indexChange = new Map<string, boolean>();
      const head = [
        this.nodeId,
        String(this.graceMs),
        String(this.tombstoneMs),
        String(now),
        this.window,
      ];
      const groups = cids.map((cid) => applyArgs(head, bySession.get(cid)!, indexChange));
      // A chunk's scripts are sent at once (ioredis writes them back to back): one round trip;
      // each session's ops are atomic and in order.
      const sent = Promise.allSettled(
        cids.map((cid, i) => applyScript.run(this.client, this.keys.session(cid), groups[i])),
      );
      confirm(sent, new Set(cids.map((c) => this.keys.session(c)[0])));
      const results = await sent;
      for (let i = 0; i < results.length; i++) {
        const r = results[i];
        if (r.status === "rejected") {
          failure ??= r.reason;
          continue;
        }
        const cid = cids[i];
        const reply = r.value as unknown[];
        if (str(reply[0]) === "missing") {
          missing.push(cid);
          continue;
        }
        if (str(reply[0]) === "stale") {
          stale.push(cid);
          owners.push(str(reply[1]));
          // Another node owns it now: this node's index must not keep it.
          this.sessionLeft(cid);
          continue;
        }
        for (const k of reply.slice(1)) {
          log.warn("replaced the unreadable {key} of session {clientId} (wrong Redis type)", {
            key: KEY_NAMES[Number(k) - 1],
            clientId: cid,
          });
        }
        const listed = indexChange.get(cid);
        if (listed === true && !this.indexed.has(cid)) {
          this.indexed.add(cid);
          index.push(this.client.sadd(this.keys.nodeSessions(this.nodeId), cid));
        } else if (listed === false) {
          this.indexed.delete(cid);
          index.push(this.client.srem(this.keys.nodeSessions(this.nodeId), cid));
        }
      }
    }
    if (retainedSent !== null) {
      const [r] = await retainedSent;
      if (r.status === "rejected") failure ??= r.reason;
      else {
        const err = (r.value as [Error | null, unknown][] | null)?.find(([e]) => e !== null)?.[0];
        if (err) failure ??= err;
      }
    }
    await Promise.all(index);
    if (failure !== null) throw failure;
    // What was written for the other sessions is confirmed first: a stale refusal is final
    // (the journal does not retry it), so everything else must be as durable as a success.
    await Promise.all(replicated);
    if (stale.length > 0) throw new StaleSessionError(stale, owners, missing);
    if (missing.length > 0) throw new MissingSessionError(missing);
  }

  private retainOp(
    multi: ReturnType<RedisClient["multi"]>,
    msg: StoredMessage,
    now: number,
    version: string,
  ): void {
    // Relative to the node's clock, like the message's expiresAt.
    const ttl = msg.expiresAt > 0 ? Math.ceil(msg.expiresAt - now) : 0;
    if (msg.expiresAt > 0 && ttl <= 0) {
      return this.retainScript(multi, msg.topic, "", version, 0, false);
    }
    this.retainScript(multi, msg.topic, buf(encodeMessage(msg)), version, ttl, false);
  }

  /**
   * Sets (or, with an empty `value`, deletes) a topic's retained message unless Redis holds a
   * newer version of it: two nodes updating one topic at once leave the newer update in Redis,
   * as on every node (retain_version.ts).
   */
  private retainScript(
    multi: ReturnType<RedisClient["multi"]>,
    topic: string,
    value: string | Buffer,
    version: string,
    ttl: number,
    tombstone: boolean,
  ): void {
    const k = this.keys;
    multi.eval(
      RETAIN,
      3,
      k.retained(topic),
      k.retainedVersion(topic),
      k.retainedIndex,
      topic,
      value,
      version,
      String(ttl),
      tombstone ? String(TOMBSTONE_MS) : "0",
    );
  }

  /** Every stored session (a single node's start-up, tools); claims nothing. */
  async loadSessions(): Promise<SessionState[]> {
    const out: SessionState[] = [];
    for (const node of this.masters()) {
      let cursor = "0";
      do {
        const [next, keys] = await node.scan(cursor, "MATCH", this.keys.metaPattern, "COUNT", 500);
        cursor = next;
        const cids = keys.map((k) => this.keys.clientIdOfMeta(k)).filter((c) => c !== null);
        const states = await Promise.all(cids.map((cid) => this.loadSession(cid)));
        for (const s of states) if (s !== null) out.push(s);
      } while (cursor !== "0");
    }
    return out;
  }

  private masters(): Redis[] {
    return this.client instanceof Cluster ? this.client.nodes("master") : [this.client];
  }

  /** One session as stored now, or null when none (or none readable) is stored; claims nothing. */
  async loadSession(clientId: string): Promise<SessionState | null> {
    return (await this.load(clientId, false)).state;
  }

  /**
   * Fences the session for this node: from now on writes of any other node
   * fail (epoch + 1, returned). Call it once the cluster made this node the
   * owner and the previous owner has written back what it had (the bus's
   * `claimSession` resolved); a node that was stopped (SIGSTOP) and wakes up
   * later can then no longer overwrite the session.
   */
  async claimSession(clientId: string): Promise<number> {
    return (await this.load(clientId, true)).epoch;
  }

  private async load(
    clientId: string,
    claim: boolean,
  ): Promise<{ state: SessionState | null; epoch: number }> {
    const reply = await loadScript.run(this.client, this.keys.session(clientId), [
      claim ? this.nodeId : "",
      String(this.tombstoneMs),
    ]) as [Buffer, number[], Buffer[][] | null];
    const [ep, bad, data] = reply;
    logBad(clientId, bad);
    if (claim && data !== null) this.indexNode(clientId);
    return {
      epoch: Number(str(ep)) || 0,
      state: data === null ? null : decodeSession(clientId, data),
    };
  }

  sessionLeft(clientId: string): void {
    this.indexed.delete(clientId);
    this.client.srem(this.keys.nodeSessions(this.nodeId), clientId).catch((e) =>
      log.warn("could not unindex session {clientId}: {error}", { clientId, error: String(e) })
    );
  }

  private indexNode(clientId: string): void {
    if (this.indexed.has(clientId)) return;
    this.indexed.add(clientId);
    // Best effort: the index is a hint for node death, checked against meta.node.
    this.client.sadd(this.keys.nodeSessions(this.nodeId), clientId).catch((e) =>
      log.warn("could not index session {clientId}: {error}", { clientId, error: String(e) })
    );
  }

  retainedPages(size: RetainedPageSize, after?: string): AsyncIterable<StoredMessage[]> {
    return this.retained.pages(size, after);
  }

  countRetained(after: string | null, now: number): Promise<RetainedCount> {
    return this.retained.count(after, now);
  }

  /**
   * One key of no expiry, set only if absent (SET NX): the first node to ask makes it, the
   * others and every later start read the same bytes. Read first: a Redis that is full
   * (`noeviction`) refuses every SET, even one that would change nothing.
   */
  async secret(name: string): Promise<Uint8Array> {
    const key = this.keys.secret(name);
    let value: Buffer | null;
    try {
      value = await this.client.getBuffer(key);
      if (value === null) {
        const fresh = crypto.getRandomValues(new Uint8Array(SECRET_BYTES));
        await this.client.set(key, Buffer.from(fresh), "NX");
        value = await this.client.getBuffer(key);
      }
    } catch (e) {
      // What Redis says (WRONGTYPE, OOM) names no key: the operator must know which one to fix.
      throw new Error(`redis: ${key}: ${e instanceof Error ? e.message : e}`, { cause: e });
    }
    if (value === null || value.length !== SECRET_BYTES) {
      throw new Error(`redis: ${key} is not a secret of ${SECRET_BYTES} bytes`);
    }
    return new Uint8Array(value);
  }

  // ---- node death: called by the core when the bus reports nodeDown(nodeId)

  /** Client ids of the sessions `nodeId` owns (its index, checked against each session's owner). */
  async sessionsOfNode(nodeId: string): Promise<string[]> {
    const key = this.keys.nodeSessions(nodeId);
    const owned: string[] = [];
    let cursor = "0";
    do {
      const [next, cids] = await this.client.sscan(key, cursor, "COUNT", 500);
      cursor = next;
      const owners = await Promise.all(
        cids.map((cid) =>
          this.client.hmget(this.keys.session(cid)[0], "node", "w").catch(() => [null, null])
        ),
      );
      cids.forEach((cid, i) => {
        // The claim when there is one, else the last writer (as the adopt script decides).
        if ((owners[i][0] ?? owners[i][1]) === nodeId) owned.push(cid);
      });
    } while (cursor !== "0");
    return owned;
  }

  /**
   * Takes over a session of the dead node `deadNodeId`: succeeds on exactly
   * one node (it must still name the dead node as owner). A session that was
   * connected there is now detached: it expires after its Session Expiry
   * Interval from now and its will is due after its delay. Returns the state
   * (this node now owns it), or null when another node adopted it first or it
   * is gone. Publish its will through {@link takeWill}.
   */
  async adoptSession(clientId: string, deadNodeId: string): Promise<SessionState | null> {
    const reply = await adoptScript.run(this.client, this.keys.session(clientId), [
      deadNodeId,
      this.nodeId,
      String(this.now()),
      String(this.graceMs),
      String(this.tombstoneMs),
    ]) as [Buffer, number[], Buffer[][] | null] | null;
    if (reply === null) return null;
    const [, bad, data] = reply;
    logBad(clientId, bad);
    if (data === null) return null;
    this.indexNode(clientId);
    this.client.srem(this.keys.nodeSessions(deadNodeId), clientId).catch(() => {});
    return decodeSession(clientId, data);
  }

  /**
   * Removes the session's will from the store and returns it, when this node
   * owns the session and the will is still there: so a will is published
   * once cluster-wide even when several nodes race (or the client came back
   * on another node, which then owns the session and gets it instead).
   */
  async takeWill(clientId: string): Promise<StoredWill | null> {
    const reply = await takeWillScript.run(this.client, [this.keys.session(clientId)[0]], [
      this.nodeId,
    ]) as Buffer | null;
    if (reply === null) return null;
    try {
      return decodeWill(reply);
    } catch (e) {
      log.warn("dropped the unreadable will of session {clientId}: {error}", {
        clientId,
        error: e instanceof Error ? e.message : String(e),
      });
      return null;
    }
  }

  /** Drops a dead node's index once its sessions are adopted. */
  async forgetNode(nodeId: string): Promise<void> {
    await this.client.del(this.keys.nodeSessions(nodeId));
  }
}

/** What `createRedisStore` reads from the configuration (`[redis] key_prefix`, `wait_*`). */
export interface RedisStoreConfig {
  readonly redis: {
    readonly key_prefix?: string;
    readonly wait_replicas?: number;
    readonly wait_timeout_ms?: number;
    readonly session_ttl_grace_ms?: number;
    readonly session_claim_ttl_ms?: number;
    readonly retained_scan_topics?: number;
    readonly write_chunk_bytes?: number;
    readonly start_timeout_ms?: number;
  };
  readonly cluster?: { readonly dedupe_window?: number };
}

/**
 * The Redis store for a broker. `client` is connected by the caller (the
 * cluster's connection factory); `nodeId` is the bus's node id (its
 * incarnation), `now` the broker's clock.
 */
export function createRedisStore(
  config: RedisStoreConfig,
  client: RedisClient,
  opts: Omit<RedisStoreOptions, "keyPrefix">,
): RedisStore {
  return new RedisStore(client, {
    waitReplicas: config.redis.wait_replicas,
    waitTimeoutMs: config.redis.wait_timeout_ms,
    ttlGraceMs: config.redis.session_ttl_grace_ms,
    tombstoneMs: config.redis.session_claim_ttl_ms,
    dedupeWindow: config.cluster?.dedupe_window,
    retainedScanTopics: config.redis.retained_scan_topics,
    writeChunkBytes: config.redis.write_chunk_bytes,
    startTimeoutMs: config.redis.start_timeout_ms,
    ...opts,
    keyPrefix: config.redis.key_prefix ?? "mcloudtt",
  });
}
