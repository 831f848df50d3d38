/**
 * The inbox writer: what a node forwards to other nodes, batched per destination and
 * event-loop turn into one stream entry (one XADD each, all in one round trip thanks to
 * auto-pipelining), written to the destination's inbox (redis_inbox.ts reads it there).
 *
 * Order per inbox: a write without an answer (a timeout, a lost connection)
 * is written again by the writer, and must still land before the writes
 * after it. ioredis cannot be left to hold those: its Redis Cluster client
 * sends one auto-pipeline per master at a time, so when the one in flight
 * ends with "Command timed out" it sends the next (the later writes) on the
 * connection its socket timeout closes a moment after, then sends that
 * pipeline again by itself ("Connection is closed." is retried) and keeps the
 * master's pipeline slot until it is answered: the timed-out write, written
 * again by the writer, came after them (seen: 1, 2, 3, then 0). So writes to
 * one inbox go a round at a time: what is queued for it while a round is in
 * flight waits in the writer and is sent, as one round, once that round is
 * settled; writes of the round left in doubt go first. Whatever ioredis sends
 * again by itself is then that round alone, in order. It adds no allocation
 * per message: the queue holds each turn's entries serialized (one buffer each,
 * see `Write`); a round may wait one more pipeline to its master under load.
 */
import type { Buffer } from "node:buffer";
import { getLogger } from "@logtape/logtape";
import { ReplyError } from "ioredis";
import {
  entryFields,
  kept,
  MAX_ENTRY_BYTES,
  type Pending,
  retainedFields,
  VERSION_BYTE,
} from "./inbox_entry.ts";
import { reconnectDelay, type RedisClient } from "./redis_connection.ts";
import type { InboxStats } from "./redis_inbox.ts";

const log = getLogger(["mcloudtt", "cluster"]);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Error replies of a Redis that cannot write for now: over `maxmemory` (OOM), loading its data,
 * a script running too long (BUSY), a Redis Cluster slot moving or down, too few replicas.
 */
const TRANSIENT_REPLY = /^(OOM|LOADING|BUSY|TRYAGAIN|CLUSTERDOWN|MASTERDOWN|NOREPLICAS)\b/;

interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
  reject: (e: Error) => void;
}

/** One turn's entries; its acknowledgements wait for all of them. */
interface Turn {
  deferred: Deferred | null;
  /** Writes not settled yet. */
  open: number;
  /** Some write was refused (its acknowledgements are failed already). */
  refused: boolean;
  /** Some write failed (for `problem`: only a turn written whole clears it). */
  faulted: boolean;
}

/**
 * One stream entry of forwarded messages for one destination's inbox, serialized when its turn
 * ends: a write waits (behind a round in flight, for an answer) holding one buffer, not the
 * records' headers and bodies. Held across a wait, those survived the young generation's
 * collections and were promoted: 24 % less delivered over two nodes at QoS 0 (cluster fan-out).
 */
interface Write {
  control: false;
  dest: string;
  /** XADD's field arguments. */
  fields: (string | Buffer)[];
  /** Records in it. */
  count: number;
  /** The fields of the records to write again after no answer (`kept`), or null for none. */
  retry: (string | Buffer)[] | null;
  retryCount: number;
  turn: Turn;
  /** Until when (Date.now() ms) it waits for Redis or is written again; 0: not set yet. */
  until: number;
  /** Written before, without an answer (not a write that only waited for its turn). */
  again: boolean;
  /** What it counts in `held` while queued or in flight (0: not counted). */
  bytes: number;
  /**
   * XADD's field arguments for its retained records alone, and how many, for `keepRetained`;
   * null when it has none (or is such a write already). The same array as `fields` when every
   * record is a retained one: nothing is encoded twice, and no record is held across a wait.
   */
  retained: { fields: (string | Buffer)[]; count: number } | null;
}

/** A control entry (kick / released) for one destination's inbox: in order with the messages. */
interface ControlWrite {
  control: true;
  dest: string;
  args: string[];
  until: number;
  resolve: (sent: boolean) => void;
  reject: (e: Error) => void;
}

type Queued = Write | ControlWrite;

function deferred(): Deferred {
  let resolve!: () => void, reject!: (e: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Whoever does not wait for it (QoS 0, async) must not turn a failure into an unhandled rejection.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

/** Collects forwarded records per destination and writes them once per event-loop turn. */
export class InboxWriter {
  private pending = new Map<string, Pending[]>();
  private turn: Deferred | null = null;
  private scheduled = false;
  /** The last failed write, until one succeeds after it. */
  private failed: { message: string; at: number } | null = null;
  /**
   * Per destination inbox with writes in flight: the writes after them, in order, which are sent
   * once those are settled (written, refused, or to be written again: first). So ioredis never
   * holds more than one round of writes to an inbox, and cannot send a later one by itself while
   * an earlier one is in doubt (see the header comment). Per inbox, not for all: a Redis Cluster
   * master that froze holds up only the inboxes it serves.
   */
  private readonly lanes = new Map<string, Queued[]>();
  /** Bytes of the writes queued or in flight per destination (bounded by `maxBytes` for QoS 0). */
  private readonly held = new Map<string, number>();
  /** Destinations holding `maxBytes` or more, and what resolves once none does. */
  private overCount = 0;
  private overUntil: Deferred | null = null;

  constructor(
    private readonly cmd: RedisClient,
    private readonly inboxKey: (node: string) => string,
    readonly stats: InboxStats,
    /** Told of every entry written to `dest` (backpressure counts them between measurements). */
    private readonly onEntry: (dest: string) => void = () => {},
    /** How long a failed write is reported after it (ms) when nothing was written since. */
    private readonly reportMs = 5000,
    /**
     * `[cluster] max_forward_bytes`: past this much queued or in flight for one destination,
     * QoS 0 records for it are dropped (0 = no bound). Without it a QoS 0 flood faster than
     * Redis took it piled up in the writer: 1.8 GB from one client's 4 connections, and the
     * node, its lease renewal queued behind it on the same connection, was declared dead.
     */
    private readonly maxBytes = 0,
    /** Told of QoS 0 records dropped at `maxBytes`. */
    private readonly onDropped: (n: number) => void = () => {},
    /** Whether a node holds a lease now (its inbox, when missing, is coming back). */
    private readonly isLive: (node: string) => boolean = () => false,
  ) {}

  /**
   * Why the last write failed, while no write succeeded since and it is at
   * most `reportMs` old (for `/readyz`: in Redis Cluster mode one master
   * can be lost while the client as a whole stays ready).
   */
  get problem(): string | null {
    const f = this.failed;
    if (f === null) return null;
    if (Date.now() - f.at > this.reportMs) {
      this.failed = null;
      return null;
    }
    return `forwarding to other nodes failed: ${f.message}`;
  }

  /**
   * Non-null while some destination holds `maxBytes` or more (queued or in flight): resolves
   * once none does. Past the bound QoS 1/2 and retained records are still written; a publisher
   * that nothing else slows down (retained QoS 0) waits for this (redis_bus.ts).
   */
  get over(): Promise<void> | null {
    return this.overUntil === null ? null : this.overUntil.promise;
  }

  /**
   * Queues one record (group header + shared body, message id) for `dest`. `alone`: the record
   * gets a stream entry of its own, as does what follows it (a record a node of an older version
   * cannot read: that node skips the whole entry, and must not lose the records beside it).
   */
  add(
    dest: string,
    header: Uint8Array,
    body: Uint8Array,
    id: string,
    version = "",
    alone = false,
  ): void {
    let list = this.pending.get(dest);
    if (list === undefined) this.pending.set(dest, list = []);
    let cur = list[list.length - 1];
    if (cur === undefined || cur.bytes > MAX_ENTRY_BYTES || alone) {
      cur = { parts: [VERSION_BYTE], ids: [], versions: null, bytes: 1, count: 0 };
      list.push(cur);
    }
    cur.parts.push(header, body);
    if (version !== "" && cur.versions === null) cur.versions = cur.ids.map(() => "");
    cur.versions?.push(version);
    cur.ids.push(id);
    cur.bytes += header.length + body.length + id.length + 1;
    cur.count++;
    // Closed: the next record starts another entry.
    if (alone) cur.bytes = MAX_ENTRY_BYTES + 1;
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  /**
   * Entries for `dest` queued behind the writes in flight to its inbox (not handed to Redis yet;
   * a write in doubt waiting to be written again counts too): what an XLEN sent now misses.
   */
  unsent(dest: string): number {
    const lane = this.lanes.get(dest);
    if (lane === undefined) return 0;
    let n = 0;
    for (const w of lane) if (!w.control) n++;
    return n;
  }

  /** Resolves when this turn's entries are in Redis; rejects when they could not be written. */
  written(): Promise<void> {
    return (this.turn ??= deferred()).promise;
  }

  private flush(): void {
    this.scheduled = false;
    const turn: Turn = { deferred: this.turn, open: 0, refused: false, faulted: false };
    const writes: Write[] = [];
    for (const [dest, list] of this.pending) {
      for (const entry of list) {
        const fields = entryFields(entry);
        const keep = kept(entry);
        writes.push({
          control: false,
          dest,
          fields,
          count: entry.count,
          retry: keep === null ? null : keep === entry ? fields : entryFields(keep),
          retryCount: keep === null ? 0 : keep.count,
          turn,
          until: 0,
          again: false,
          bytes: 0,
          retained: retainedFields(entry, fields),
        });
      }
    }
    this.pending = new Map();
    this.turn = null;
    turn.open = writes.length;
    if (this.cmd.status !== "ready") {
      const e = new Error("redis is unreachable: forwarded messages were not written");
      for (const w of writes) {
        const k = this.keepRetained(w);
        this.refuse(w, e);
        if (k !== null) this.enqueue(k);
      }
      return;
    }
    for (const w of writes) {
      if (this.maxBytes > 0 && (this.held.get(w.dest) ?? 0) >= this.maxBytes) {
        // Redis takes this node's forwards slower than they come: QoS 0 records are dropped, as
        // for a slow subscriber; the others are written (their acknowledgements wait for it).
        if (w.retry === null) {
          this.onDropped(w.count);
          this.settle(w);
          continue;
        }
        if (w.retry !== w.fields) {
          this.onDropped(w.count - w.retryCount);
          w.fields = w.retry;
          w.count = w.retryCount;
        }
      }
      this.stats.forwarded += w.count;
      this.stats.entries++;
      this.onEntry(w.dest);
      this.enqueue(w);
    }
  }

  /** Queues `w` behind what is in flight to its inbox, or sends it now when nothing is. */
  private enqueue(w: Queued): void {
    if (!w.control) this.hold(w);
    const lane = this.lanes.get(w.dest);
    if (lane !== undefined) {
      lane.push(w);
      return;
    }
    const fresh = [w];
    this.lanes.set(w.dest, fresh);
    this.drain(w.dest, fresh);
  }

  /**
   * Writes what is queued for `dest`, a round at a time: everything queued is sent at once (one
   * pipeline), and the next round waits until all of it is settled. A round's writes that got
   * no answer are written again first, in their order, while each has time left.
   */
  private async drain(dest: string, lane: Queued[]): Promise<void> {
    // Rounds in a row that left writes to write again: the pause before the next one doubles.
    let failing = 0;
    try {
      while (lane.length > 0) {
        if (this.cmd.status === "end") {
          const e = new Error("the bus stopped before forwarded messages were written");
          for (const w of lane.splice(0)) this.drop(w, e);
          break;
        }
        if (this.cmd.status !== "ready") {
          // Waits for the reconnect (a control entry does not: its sender handles the failure).
          const now = Date.now();
          const e = new Error("redis did not come back: forwarded messages not written");
          for (let i = 0; i < lane.length;) {
            const w = lane[i];
            if (w.until === 0) w.until = w.control ? now : now + this.reportMs;
            if (!this.expired(w, now)) {
              i++;
              continue;
            }
            const k = w.control ? null : this.keepRetained(w);
            this.drop(w, e);
            if (k === null) lane.splice(i, 1);
            else {
              this.hold(k);
              lane[i++] = k;
            }
          }
          await sleep(50);
          continue;
        }
        const round = lane.splice(0);
        for (const w of round) if (!w.control && w.again) this.stats.rewritten += w.count;
        const doubts = round.length === 1
          ? [await this.write(round[0])]
          : await Promise.all(round.map((w) => this.write(w)));
        const now = Date.now();
        let again = 0;
        for (const doubt of doubts) {
          if (doubt === null) continue;
          if (!this.expired(doubt, now)) {
            lane.splice(again++, 0, doubt);
            continue;
          }
          const k = this.keepRetained(doubt);
          this.refuse(doubt, new Error("redis did not take forwarded messages in time"));
          if (k !== null) {
            this.hold(k);
            lane.splice(again++, 0, k);
          }
        }
        // A pause, so a write that fails at once does not spin: the reconnect backoff (50 ms
        // doubling to 2 s). At 50 ms each, the retained records kept while Redis was full were
        // sent again at ~54 MB/s.
        if (again > 0) await sleep(reconnectDelay(failing++));
        else failing = 0;
      }
    } finally {
      if (this.lanes.get(dest) === lane) this.lanes.delete(dest);
    }
  }

  /**
   * Writes `w`. Settles it, or, when it may have run without an answer (a timeout, a lost
   * connection: Redis may run it late), returns what is to be written again: the records a
   * receiver keeps once however often they come (by their id, seen_ids.ts). Refusing them
   * instead made their publishers send them again as new messages, delivered twice when the
   * first write had run. A control entry is never written again (nothing drops a second copy):
   * its sender gets the error.
   */
  private async write(w: Queued): Promise<Write | null> {
    if (w.control) {
      try {
        w.resolve(
          await this.cmd.xadd(this.inboxKey(w.dest), "NOMKSTREAM", "*", ...w.args) !== null,
        );
      } catch (e) {
        w.reject(e as Error);
      }
      return null;
    }
    try {
      // NOMKSTREAM: a departed node's inbox is not brought back to life.
      const id = await this.cmd.xadd(this.inboxKey(w.dest), "NOMKSTREAM", "*", ...w.fields);
      if (id === null) return this.inboxGone(w);
    } catch (err) {
      const e = err as Error;
      if (this.failed === null) log.warn`forwarding to other nodes failed: ${e.message}`;
      this.failed = { message: e.message, at: Date.now() };
      w.turn.faulted = true;
      // An error reply: Redis did not run it. One that says Redis cannot write now (full,
      // loading, a Redis Cluster slot moving) is written again as a write without an answer is,
      // while it has time left: refusing it at once made a QoS 0 retained message's copy for
      // that node lost for good (its publisher is never told), and every QoS 1/2 publisher send
      // again into a Redis that was full for a moment.
      if (e instanceof ReplyError) {
        if (w.retry !== null && TRANSIENT_REPLY.test(e.message)) {
          return this.again(w, w.retry, false);
        }
        this.refuse(w, e);
        return null;
      }
      if (w.retry !== null) return this.again(w, w.retry, true);
    }
    this.settle(w);
    return null;
  }

  /** The records of `w` to write again (those kept once however often they arrive). */
  private again(w: Write, retry: (string | Buffer)[], sent: boolean): Write {
    this.release(w);
    const next = {
      ...w,
      fields: retry,
      count: w.retryCount,
      until: w.until || Date.now() + this.reportMs,
      again: sent,
      bytes: 0,
    };
    this.hold(next);
    return next;
  }

  /**
   * XADD wrote nothing: the destination's inbox does not exist. Redis lost it (a restart without
   * persistence) and its node, alive, creates it again within its reader's backoff: the records
   * are written again until then. Counting them written lost every QoS 1 message acknowledged in
   * that window (up to 304 of 1,000 with the node paused 1.5 s). A node that is not alive left,
   * and its survivor deleted the inbox: the acknowledgements are refused, so publishers send again
   * to the nodes that hold those sessions now. QoS 0 records alone are not written (at most once).
   */
  private inboxGone(w: Write): Write | null {
    if (w.retry !== null && this.isLive(w.dest)) return this.again(w, w.retry, false);
    if (w.retry === null) this.settle(w);
    else this.refuse(w, new Error(`the inbox of node ${w.dest} is gone: it left the cluster`));
    return null;
  }

  /** Past its time (a kept retained write: once its destination left). */
  private expired(w: Queued, now: number): boolean {
    return now >= w.until || (w.until === Infinity && !this.isLive(w.dest));
  }

  /**
   * The retained records of `w`, whose acknowledgements are being refused (Redis did not take
   * them in time), as a write of their own that is written again until Redis takes it or `dest`
   * leaves: every node's retained index must get them. The node that took them keeps them, and
   * so does the Redis store (its writes are retried); a retained QoS 0 message's publisher is
   * never told, so before, the other nodes served an older retained message (or none) for that
   * topic until they restarted. Their ids make a second copy harmless (seen_ids.ts), their
   * versions an older one (retain_version.ts); the lane keeps them in order with what follows.
   * Not counted in `held` yet (the caller holds it once `w` is released).
   */
  private keepRetained(w: Write): Write | null {
    const r = w.retained;
    if (r === null || !this.isLive(w.dest)) return null;
    // The refusal of `w` counts all of its records dropped: these are not.
    this.stats.dropped -= r.count;
    return {
      control: false,
      dest: w.dest,
      fields: r.fields,
      count: r.count,
      retry: r.fields,
      retryCount: r.count,
      // A turn of its own: nobody waits for it.
      turn: { deferred: null, open: 1, refused: false, faulted: false },
      until: Infinity,
      again: false,
      bytes: 0,
      retained: null,
    };
  }

  private drop(w: Queued, e: Error): void {
    if (w.control) w.reject(e);
    else this.refuse(w, e);
  }

  /** Counts `w` in what is queued or in flight for its destination. */
  private hold(w: Write): void {
    let n = 0;
    for (const f of w.fields) n += f.length;
    w.bytes = n;
    const before = this.held.get(w.dest) ?? 0;
    this.held.set(w.dest, before + n);
    const max = this.maxBytes;
    if (max > 0 && before < max && before + n >= max && this.overCount++ === 0) {
      this.overUntil = deferred();
    }
  }

  /** `w` is settled, refused or replaced: no longer counted. */
  private release(w: Write): void {
    if (w.bytes === 0) return;
    const before = this.held.get(w.dest) ?? 0;
    const left = before - w.bytes;
    w.bytes = 0;
    if (left > 0) this.held.set(w.dest, left);
    else this.held.delete(w.dest);
    const max = this.maxBytes;
    if (max > 0 && before >= max && left < max && --this.overCount === 0) {
      const until = this.overUntil;
      this.overUntil = null;
      until?.resolve();
    }
  }

  /** One write of a turn is in Redis (or was a QoS 0 one that may not be). */
  private settle(w: Write): void {
    this.release(w);
    const t = w.turn;
    if (--t.open > 0 || t.refused) return;
    if (!t.faulted) this.failed = null;
    t.deferred?.resolve();
  }

  /** Fails the acknowledgements of `w`'s turn: its messages were not (or may not have been) written. */
  private refuse(w: Write, e: Error): void {
    this.release(w);
    this.stats.dropped += w.count;
    const t = w.turn;
    t.open--;
    if (t.refused) return;
    t.refused = true;
    t.deferred?.reject(e);
  }

  /**
   * Sends a control entry (kick / released) to `dest`, after the messages forwarded there before
   * it; false when its inbox is gone.
   */
  control(dest: string, fields: Record<string, string>): Promise<boolean> {
    const args = Object.entries(fields).flat();
    return new Promise((resolve, reject) => {
      this.enqueue({ control: true, dest, args, until: 0, resolve, reject });
    });
  }
}
