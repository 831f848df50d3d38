/**
 * Group commit of state changes into a durable `Store`: operations collect
 * while the event loop works and are written as one batch once the current
 * turn's work is done; while a batch is being written the next one collects,
 * so a slow disk makes batches bigger, not more frequent.
 *
 * A batch the store could not write is never dropped: it is written again
 * (with backoff) before anything newer, together with what collected
 * meanwhile, until it succeeds; whoever waits for it (acknowledgements to
 * publishers, the cluster inbox's XACK, a takeover's write-back) waits for
 * that success. Every store applies a replayed batch idempotently (a batch
 * may have been applied in part, or applied but not confirmed). While more
 * than `maxUnwritten` operations are unwritten the journal is `full`: the
 * core refuses new QoS 1/2 publishes instead of acknowledging what it could
 * not keep (see publish_flow.ts).
 *
 * An op that replaces a whole piece of state (a session's `session` or `session-delete`, a
 * topic's `retain` or `retain-delete`) makes the unwritten ops before it with the same key
 * pointless: they are dropped when it is pushed, so that what waits while the store fails is
 * bounded by the state it describes (sessions, retained topics), not by how often it changed.
 * (A client publishing QoS 0 retained updates of 100 kB to 10 topics grew a broker whose store
 * failed by 260 MB a second; QoS 0 is never refused.) Likewise a `subscribe` or `unsubscribe`
 * replaces the unwritten one of the same session and subscription key: a client toggling one
 * subscription while the store fails adds one op, not one per packet. A whole-session op drops
 * the unwritten subscription ops of its session (it holds their effect), and a session with
 * `SUBSCRIPTION_OPS_AT` of them waiting writes itself whole instead: one toggling ever new
 * filters adds at most that many, not one per filter (3,000 toggled filters waited as 3,000 ops,
 * though the session held one subscription). (A subscription op after a whole-session op is applied
 * on top of it: the order of the ops that stay is kept. The session's set of subscriptions ends
 * as written op by op; their order in the store may not: a filter added, then changed before the
 * store took it, is stored after the filters added in between. The core gives that order no
 * meaning: at most the order of the Subscription Identifiers of a message matching several of a
 * session's filters differs after a restart, which MQTT leaves open.)
 */
import { getLogger } from "@logtape/logtape";
import type { Message } from "../protocol/message.ts";
import { MessageIds } from "../protocol/message_ids.ts";
import { MqttError, ReasonCode } from "../protocol/reason_codes.ts";
import { MissingSessionError } from "../store/errors.ts";
import type { Store, StoreOp } from "../store/types.ts";

const log = getLogger(["mcloudtt", "store"]);

interface Deferred {
  readonly promise: Promise<void>;
  readonly resolve: () => void;
  readonly reject: (e: unknown) => void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Nobody may be listening (a QoS 0 publish): do not report the failure as unhandled.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

/** Delay before retry `attempt` (1, 2, ...) of a failed batch: 50 ms doubling to 2 s. */
export function retryDelay(attempt: number): number {
  return Math.min(2000, 50 * 2 ** Math.min(attempt - 1, 6));
}

/** Default of `[storage] max_unwritten_ops`. */
export const DEFAULT_MAX_UNWRITTEN = 100_000;

/** The broker stopped before the store took these operations. */
export class JournalClosedError extends Error {
  constructor(readonly unwritten: number) {
    super(`the broker stopped with ${unwritten} store operations unwritten`);
    this.name = "JournalClosedError";
  }
}

export interface JournalOptions {
  /**
   * `acksWait`: packets that let a client forget something (PUBACK, PUBREC,
   * PUBREL, PUBCOMP, SUBACK, UNSUBACK) wait for the batch holding the change
   * they confirm (`[storage] sync = "ack-after-write"`); false sends them at
   * once ("async").
   */
  readonly acksWait?: boolean;
  /** `[storage] max_unwritten_ops`: past it the journal is `full`. */
  readonly maxUnwritten?: number;
  /**
   * Told of a batch the store refused for sessions another node owns now
   * (an MqttError 0x8E carrying `clientIds`), with its number (see
   * `flushed`). Everything else in such a batch was written; it is not
   * retried.
   */
  readonly onStale?: (e: MqttError & { clientIds: readonly string[] }, batch: number) => void;
  /**
   * Told of sessions a shared store no longer holds (a MissingSessionError, or the `missing` of
   * a stale refusal): it pushes their whole state again. Everything else in the batch was
   * written; whoever waited for it waits for those pushes instead.
   */
  readonly onMissing?: (clientIds: readonly string[]) => void;
}

/** Emptied slots of the collecting ops are compacted once there are this many (and half). */
const COMPACT_AT = 1024;

/**
 * Subscription ops of one session collecting unwritten past which its next change is written
 * whole instead (which replaces them): a client subscribing to and unsubscribing from ever new
 * filters while the store fails adds one op per filter, not per subscription it holds.
 */
export const SUBSCRIPTION_OPS_AT = 1024;

export class Journal {
  /** Ops collecting for the next batch; null where a later op of the same key replaced one. */
  private ops: (StoreOp | null)[] = [];
  /** The slot in `ops` of each session's last `session`/`session-delete` op (new per batch). */
  private sessionAt = new Map<string, number>();
  /** The slot in `ops` of each topic's last `retain`/`retain-delete` op (new per batch). */
  private retainAt = new Map<string, number>();
  /** The slot in `ops` of each session subscription's last `subscribe`/`unsubscribe` op. */
  private subAt = new Map<string, number>();
  /**
   * The slots in `ops` of each session's subscription ops (some emptied since): a whole-session
   * op empties them, as it holds their effect.
   */
  private subsOf = new Map<string, number[]>();
  /** Null slots in `ops`. */
  private superseded = 0;
  /** Ops pushed so far. */
  private pushed = 0;
  /** Waiters for `ops` (created when somebody asks). */
  private waiting: Deferred | null = null;
  /** The batch handed to the store and not yet written (in flight, or waiting for its retry). */
  private batch: StoreOp[] | null = null;
  /** Waiters for `batch`. */
  private batchDone: Deferred | null = null;
  private writing = false;
  private scheduled = false;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  /** Failed attempts of the current batch in a row; 0 while the store takes writes. */
  private attempts = 0;
  /** When the current run of failures started (ms since epoch), 0 when none. */
  private failingSince = 0;
  private lastReport = 0;
  private closed = false;
  /** Batches handed to the store so far (retries count again): the stale callback gets the number. */
  flushed = 0;
  /** Batches written, ops written, failed attempts, refused publishes: read by ops. */
  readonly stats = { batches: 0, ops: 0, failures: 0 };
  readonly acksWait: boolean;
  readonly maxUnwritten: number;
  private readonly onStale: (
    e: MqttError & { clientIds: readonly string[] },
    batch: number,
  ) => void;
  private readonly onMissing: (clientIds: readonly string[]) => void;
  /** Ids for the messages this journal hands the store first (`identify`). */
  private readonly ids = new MessageIds();

  constructor(private readonly store: Store, opts: JournalOptions = {}) {
    this.acksWait = opts.acksWait ?? true;
    this.maxUnwritten = opts.maxUnwritten ?? DEFAULT_MAX_UNWRITTEN;
    this.onStale = opts.onStale ?? (() => {});
    this.onMissing = opts.onMissing ?? (() => {});
  }

  /**
   * Ops pushed so far, counting those a later op replaced: a publish compares it before and
   * after routing to know whether its acknowledgement waits for a write.
   */
  get size(): number {
    return this.pushed;
  }

  /** Ops not written yet: collecting, in flight or waiting for a retry. */
  get unwritten(): number {
    return this.ops.length - this.superseded + (this.batch === null ? 0 : this.batch.length);
  }

  /** True while more than `maxUnwritten` ops wait: new QoS 1/2 publishes are refused. */
  get full(): boolean {
    return this.unwritten > this.maxUnwritten;
  }

  /** True once `close()` ran: nothing pushed since will be written. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Since when (ms since epoch) store writes have been failing; 0 while they succeed. */
  get failingFor(): number {
    return this.failingSince === 0 ? 0 : Date.now() - this.failingSince;
  }

  /**
   * Gives `msg` an id (`Message.id`) unless it has one, before a queue or in-flight entry of it
   * goes to the store: every stored copy of a message then carries the same id, and the
   * sessions restored from them (after a restart, or adopted or moved in a cluster) share one
   * Message again, counted once against limits.max_queued_bytes_total (session/stored.ts).
   * Before, only a message that crossed the cluster bus had one: a message queued for N
   * sessions on one node came back as N copies. Once per message (the same Message is handed to
   * every session), and only with a durable store: the memory store has no journal.
   */
  identify(msg: Message): void {
    if (msg.id === "") msg.id = this.ids.next();
  }

  /** Queues `op` for the next batch (replacing an unwritten op it makes pointless). */
  push(op: StoreOp): void {
    this.pushed++;
    const key = replacingKey(op);
    if (key !== null) {
      const at = this.slots(key.kind);
      const before = at.get(key.key);
      if (before !== undefined) {
        this.ops[before] = null;
        this.superseded++;
      }
      at.set(key.key, this.ops.length);
      if (key.kind === "session") this.dropSubscriptionOps(key.key);
      else if (key.kind === "subscription") {
        this.subscriptionSlots(key.session!).push(this.ops.length);
      }
    }
    this.ops.push(op);
    if (this.superseded >= COMPACT_AT && this.superseded * 2 > this.ops.length) this.compact();
    if (!this.writing && !this.scheduled && this.retryTimer === null) {
      this.scheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  /**
   * Unwritten subscription ops of session `clientId` collecting for the next batch (an upper
   * bound: replaced ones count until the next batch).
   */
  subscriptionOps(clientId: string): number {
    return this.subsOf.get(clientId)?.length ?? 0;
  }

  private subscriptionSlots(clientId: string): number[] {
    let slots = this.subsOf.get(clientId);
    if (slots === undefined) this.subsOf.set(clientId, slots = []);
    return slots;
  }

  /** Empties the slots of `clientId`'s subscription ops: a whole-session op replaces them. */
  private dropSubscriptionOps(clientId: string): void {
    const slots = this.subsOf.get(clientId);
    if (slots === undefined) return;
    this.subsOf.delete(clientId);
    for (const i of slots) {
      const op = this.ops[i];
      if (op === null || (op.type !== "subscribe" && op.type !== "unsubscribe")) continue;
      this.ops[i] = null;
      this.superseded++;
      this.subAt.delete(replacingKey(op)!.key);
    }
  }

  /** The slot map of ops that replace each other by `kind` of key. */
  private slots(kind: KeyKind): Map<string, number> {
    return kind === "session" ? this.sessionAt : kind === "retained" ? this.retainAt : this.subAt;
  }

  /** Drops the emptied slots of `ops` (a store failing for long, state changing fast). */
  private compact(): void {
    const live: StoreOp[] = [];
    this.sessionAt = new Map();
    this.retainAt = new Map();
    this.subAt = new Map();
    this.subsOf = new Map();
    for (const op of this.ops) {
      if (op === null) continue;
      const key = replacingKey(op);
      if (key !== null) this.slots(key.kind).set(key.key, live.length);
      if (key?.kind === "subscription") this.subscriptionSlots(key.session!).push(live.length);
      live.push(op);
    }
    this.ops = live;
    this.superseded = 0;
  }

  /** Takes the collected ops (without emptied slots), leaving none. */
  private take(): StoreOp[] {
    const ops = this.superseded === 0
      ? this.ops as StoreOp[]
      : this.ops.filter((op): op is StoreOp => op !== null);
    this.ops = [];
    this.superseded = 0;
    // New maps rather than clear(): see sqlite.ts on cleared Maps in the old generation.
    if (this.sessionAt.size > 0) this.sessionAt = new Map();
    if (this.retainAt.size > 0) this.retainAt = new Map();
    if (this.subAt.size > 0) this.subAt = new Map();
    if (this.subsOf.size > 0) this.subsOf = new Map();
    return ops;
  }

  /** True when a collected op replaces `op` (an op of a failed batch being written again). */
  private replaced(op: StoreOp): boolean {
    const key = replacingKey(op);
    if (key === null) return false;
    // A whole-session op collected since holds a subscription op's effect too.
    if (key.kind === "subscription" && this.sessionAt.has(key.session!)) return true;
    return this.slots(key.kind).has(key.key);
  }

  /**
   * Resolves when every op pushed so far is written (never while the store
   * fails: the batch is retried); rejects only for sessions another node
   * took over, or when the broker stopped first. Null when nothing is pending.
   */
  get pending(): Promise<void> | null {
    if (this.ops.length === 0) {
      // Batches are written in order, each only after the one before: the last is enough.
      if (this.batch === null) return null;
      return (this.batchDone ??= deferred()).promise;
    }
    return (this.waiting ??= deferred()).promise;
  }

  /**
   * What an acknowledgement of the ops pushed so far waits for: `pending`
   * when acknowledgements wait for the store, else null.
   */
  get ackWait(): Promise<void> | null {
    return this.acksWait ? this.pending : null;
  }

  /** Writes what has collected (with the failed batch first, when there is one). */
  private flush(): void {
    this.scheduled = false;
    if (this.writing || this.retryTimer !== null || this.closed) return;
    let done = this.waiting;
    const failed = this.batch;
    if (failed === null && this.ops.length === 0) return;
    let ops: StoreOp[];
    if (failed !== null) {
      // A retry: the failed batch first, then what came since, as one batch (order kept), less
      // the failed ops that a later one replaces (so that the batch stays bounded too).
      if (this.ops.length > 0) {
        const kept = this.sessionAt.size + this.retainAt.size + this.subAt.size > 0
          ? failed.filter((op) => !this.replaced(op))
          : failed;
        ops = kept.concat(this.take());
      } else ops = failed;
      done = merge(this.batchDone, done);
    } else ops = this.take();
    this.waiting = null;
    this.batch = ops;
    this.batchDone = done;
    this.writing = true;
    const n = ++this.flushed;
    this.store.write(ops).then(
      () => this.written(ops),
      (e) => this.failed(ops, n, e),
    );
  }

  private written(ops: StoreOp[]): void {
    this.writing = false;
    if (this.batch !== ops) return; // closed meanwhile
    this.stats.batches++;
    this.stats.ops += ops.length;
    if (this.failingSince !== 0) {
      log.warn("store writes recovered after {attempts} failed attempts in {s} s", {
        attempts: this.attempts,
        s: Math.round(this.failingFor / 100) / 10,
      });
    }
    this.attempts = 0;
    this.failingSince = 0;
    const done = this.batchDone;
    this.batch = null;
    this.batchDone = null;
    done?.resolve();
    if (this.ops.length > 0) this.flush();
  }

  private failed(ops: StoreOp[], n: number, e: unknown): void {
    this.writing = false;
    if (this.batch !== ops) return; // closed meanwhile
    if (isStale(e)) {
      // The store wrote everything else; those sessions are another node's now.
      log.warn("store write refused for sessions another node took over: {error}", {
        error: e.message,
      });
      const done = this.batchDone;
      this.batch = null;
      this.batchDone = null;
      this.onStale(e, n);
      const missing = (e as { missing?: readonly string[] }).missing ?? [];
      if (missing.length > 0) this.rewrite(missing);
      done?.reject(e);
      if (this.ops.length > 0) this.flush();
      return;
    }
    if (e instanceof MissingSessionError) {
      // The store wrote everything else. The acknowledgements waiting for this batch wait for
      // the sessions' whole state (which includes what was refused) to be written instead.
      const done = this.batchDone;
      this.batch = null;
      this.batchDone = null;
      this.rewrite(e.clientIds);
      if (this.ops.length > 0) {
        this.waiting = merge(done, this.waiting);
        this.flush();
      } else done?.resolve();
      return;
    }
    this.stats.failures++;
    const attempt = ++this.attempts;
    const now = Date.now();
    if (this.failingSince === 0) this.failingSince = now;
    // Loud, but not once per retry: the first failure, then every 10 s.
    if (attempt === 1 || now - this.lastReport >= 10_000) {
      this.lastReport = now;
      log.error(
        "store write of {n} operations failed (attempt {attempt}, failing for {s} s, " +
          "{unwritten} operations unwritten): {error}; retrying",
        {
          n: ops.length,
          attempt,
          s: Math.round((now - this.failingSince) / 100) / 10,
          unwritten: this.unwritten,
          error: e instanceof Error ? e.message : String(e),
        },
      );
    }
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.flush();
    }, retryDelay(attempt));
  }

  /** Has the core push the whole state of sessions the store lost (MissingSessionError). */
  private rewrite(clientIds: readonly string[]): void {
    log.warn(
      "the store lost {n} sessions (Redis restarted without its data?): writing them again " +
        "from memory: {clientIds}",
      { n: clientIds.length, clientIds: clientIds.slice(0, 10).join(", ") },
    );
    this.onMissing(clientIds);
  }

  /** Resolves when everything pushed so far has been written (or the journal closed). */
  async drain(): Promise<void> {
    for (;;) {
      const p = this.pending;
      if (p === null || this.closed) return;
      await p.catch(() => {});
    }
  }

  /**
   * The broker stops: no more retries; whoever waits for what is unwritten
   * is told it failed. Returns the number of operations left unwritten.
   */
  close(): number {
    if (this.closed) return 0;
    this.closed = true;
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const left = this.unwritten;
    const e = new JournalClosedError(left);
    this.batchDone?.reject(e);
    this.waiting?.reject(e);
    this.batch = null;
    this.batchDone = null;
    this.take();
    this.waiting = null;
    if (left > 0) log.error("{error}", { error: e.message });
    return left;
  }
}

type KeyKind = "session" | "retained" | "subscription";

/**
 * The key under which `op` replaces every earlier op: a session's whole state, a topic's
 * retained message, or one subscription of a session (its state after the op does not depend
 * on the ops before: a whole-session op between them already holds the earlier op's effect);
 * null for the other ops that change part of a session.
 */
function replacingKey(op: StoreOp): { kind: KeyKind; key: string; session?: string } | null {
  switch (op.type) {
    case "session":
      return { kind: "session", key: op.state.clientId };
    case "session-delete":
      return { kind: "session", key: op.clientId };
    case "retain":
      return { kind: "retained", key: op.msg.topic };
    case "retain-delete":
      return { kind: "retained", key: op.topic };
    case "subscribe":
      // A client id cannot hold U+0000 (MQTT strings exclude it): the pair is unambiguous.
      return { kind: "subscription", key: `${op.clientId}\0${op.sub.key}`, session: op.clientId };
    case "unsubscribe":
      return { kind: "subscription", key: `${op.clientId}\0${op.key}`, session: op.clientId };
  }
  return null;
}

/** One waiter for two (a retried batch merged with what collected since); only on failures. */
function merge(a: Deferred | null, b: Deferred | null): Deferred | null {
  if (a === null) return b;
  if (b === null) return a;
  const d = deferred();
  d.promise.then(() => {
    a.resolve();
    b.resolve();
  }, (e) => {
    a.reject(e);
    b.reject(e);
  });
  return d;
}

/** A refusal of sessions another node owns: carries their client ids. */
function isStale(e: unknown): e is MqttError & { clientIds: readonly string[] } {
  return e instanceof MqttError && e.code === ReasonCode.SessionTakenOver &&
    Array.isArray((e as { clientIds?: unknown }).clientIds);
}
