/**
 * Node inboxes: one Redis stream per node incarnation. Publisher nodes batch
 * what they forward per destination and event-loop turn into one entry (one
 * XADD each, all in one round trip thanks to auto-pipelining); the owner reads
 * its inbox through a consumer group (which survives reconnects), hands each
 * message to the core and acknowledges (XACK + XDEL) after. Entries are never
 * trimmed unread. Control entries (session kick and its reply) travel the
 * same way, so they are ordered with the messages before them.
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
 * per message (the queue holds the entries already built per turn); a round
 * may wait one more pipeline to its master under load.
 */
import { Buffer } from "node:buffer";
import { getLogger } from "@logtape/logtape";
import { ReplyError } from "ioredis";
import { CodecError, decodeBatch, encodeIds, type Forwarded } from "./codec.ts";
import { READ_BLOCK_MS, type RedisClient, unlessClosed } from "./redis_connection.ts";
import { SeenIds } from "./seen_ids.ts";
import type { BusHost } from "./types.ts";

const log = getLogger(["mcloudtt", "cluster"]);

/** Consumer group name of every inbox. */
export const INBOX_GROUP = "node";

/** An entry is closed and another started past this size. */
const MAX_ENTRY_BYTES = 1 << 20;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Counters for tests, logs and metrics. */
export interface InboxStats {
  /** Messages handed to XADD (one per destination). */
  forwarded: number;
  /** Stream entries written (batches). */
  entries: number;
  /** Messages not written because Redis was unreachable. */
  dropped: number;
  /** Messages received and handed to the core. */
  received: number;
  /** Entries skipped because they could not be decoded. */
  corrupt: number;
  /** Messages dropped because this inbox had brought them already (seen_ids.ts). */
  duplicates: number;
  /** QoS 1/2 (and retained) messages written again after a write whose outcome was unknown. */
  rewritten: number;
}

interface Pending {
  parts: Uint8Array[];
  /** The records' cluster-wide message ids ("" for none). */
  ids: string[];
  /** The records' retained versions ("" for none); null while no record has one. */
  versions: string[] | null;
  bytes: number;
  count: number;
}

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

const VERSION_BYTE = new Uint8Array([1]);

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

  constructor(
    private readonly cmd: RedisClient,
    private readonly inboxKey: (node: string) => string,
    readonly stats: InboxStats,
    /** Told of every entry written to `dest` (backpressure counts them between measurements). */
    private readonly onEntry: (dest: string) => void = () => {},
    /** How long a failed write is reported after it (ms) when nothing was written since. */
    private readonly reportMs = 5000,
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

  /** Queues one record (group header + shared body, message id) for `dest`. */
  add(dest: string, header: Uint8Array, body: Uint8Array, id: string, version = ""): void {
    let list = this.pending.get(dest);
    if (list === undefined) this.pending.set(dest, list = []);
    let cur = list[list.length - 1];
    if (cur === undefined || cur.bytes > MAX_ENTRY_BYTES) {
      cur = { parts: [VERSION_BYTE], ids: [], versions: null, bytes: 1, count: 0 };
      list.push(cur);
    }
    cur.parts.push(header, body);
    if (version !== "" && cur.versions === null) cur.versions = cur.ids.map(() => "");
    cur.versions?.push(version);
    cur.ids.push(id);
    cur.bytes += header.length + body.length + id.length + 1;
    cur.count++;
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(() => this.flush());
    }
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
        });
      }
    }
    this.pending = new Map();
    this.turn = null;
    turn.open = writes.length;
    if (this.cmd.status !== "ready") {
      const e = new Error("redis is unreachable: forwarded messages were not written");
      for (const w of writes) this.refuse(w, e);
      return;
    }
    for (const w of writes) {
      this.stats.forwarded += w.count;
      this.stats.entries++;
      this.onEntry(w.dest);
      this.enqueue(w);
    }
  }

  /** Queues `w` behind what is in flight to its inbox, or sends it now when nothing is. */
  private enqueue(w: Queued): void {
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
            if (now < w.until) i++;
            else this.drop(lane.splice(i, 1)[0], e);
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
          if (now < doubt.until) lane.splice(again++, 0, doubt);
          else this.refuse(doubt, new Error("redis did not answer: forwarded messages in doubt"));
        }
        // A pause, so a write that fails at once does not spin.
        if (again > 0) await sleep(50);
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
      await this.cmd.xadd(this.inboxKey(w.dest), "NOMKSTREAM", "*", ...w.fields);
    } catch (err) {
      const e = err as Error;
      if (this.failed === null) log.warn`forwarding to other nodes failed: ${e.message}`;
      this.failed = { message: e.message, at: Date.now() };
      w.turn.faulted = true;
      // An error reply: Redis did not run it.
      if (e instanceof ReplyError) {
        this.refuse(w, e);
        return null;
      }
      if (w.retry !== null) {
        return {
          ...w,
          fields: w.retry,
          count: w.retryCount,
          until: w.until || Date.now() + this.reportMs,
          again: true,
        };
      }
    }
    this.settle(w);
    return null;
  }

  private drop(w: Queued, e: Error): void {
    if (w.control) w.reject(e);
    else this.refuse(w, e);
  }

  /** One write of a turn is in Redis (or was a QoS 0 one that may not be). */
  private settle(w: Write): void {
    const t = w.turn;
    if (--t.open > 0 || t.refused) return;
    if (!t.faulted) this.failed = null;
    t.deferred?.resolve();
  }

  /** Fails the acknowledgements of `w`'s turn: its messages were not (or may not have been) written. */
  private refuse(w: Write, e: Error): void {
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

/**
 * The records of `p` a receiver keeps once however often they arrive (those with a message id:
 * QoS 1/2 and retained ones), as a new entry; null when there are none. Other QoS 0 records are
 * left out: sent again they could arrive twice, and QoS 0 is at most once.
 */
function kept(p: Pending): Pending | null {
  const ids = p.ids;
  let n = 0;
  for (let i = 0; i < ids.length; i++) if (ids[i] !== "") n++;
  if (n === 0) return null;
  if (n === p.count) return p;
  const out: Pending = { parts: [VERSION_BYTE], ids: [], versions: null, bytes: 1, count: 0 };
  for (let i = 0; i < p.count; i++) {
    if (p.ids[i] === "") continue;
    const version = p.versions?.[i] ?? "";
    const header = p.parts[1 + 2 * i], body = p.parts[2 + 2 * i];
    out.parts.push(header, body);
    if (version !== "" && out.versions === null) out.versions = out.ids.map(() => "");
    out.versions?.push(version);
    out.ids.push(p.ids[i]);
    out.bytes += header.length + body.length + p.ids[i].length + 1;
    out.count++;
  }
  return out;
}

/** The fields of one stream entry of forwarded messages (`v` only when a record has a version). */
function entryFields(p: Pending): (string | Buffer)[] {
  const fields: (string | Buffer)[] = [
    "t",
    "m",
    "d",
    Buffer.concat(p.parts),
    "i",
    encodeIds(p.ids),
  ];
  if (p.versions !== null) fields.push("v", encodeIds(p.versions));
  return fields;
}

/**
 * Reads every entry left in a dead node's inbox, oldest first: messages go to
 * `deliver`, control entries to `onControl`. Returns the number of messages.
 */
export async function drainInbox(
  cmd: RedisClient,
  key: string,
  deliver: (msg: Forwarded["msg"], groups: readonly string[]) => void,
  onControl: ControlHandler,
): Promise<number> {
  let start = "-";
  let n = 0;
  for (;;) {
    const entries = await cmd.xrangeBuffer(key, start, "+", "COUNT", 100);
    if (entries.length === 0) return n;
    for (const [rawId, fields] of entries) {
      const id = rawId.toString();
      start = `(${id}`;
      try {
        const entry = parseEntry(fields);
        if (entry.type === "control") onControl(entry.fields);
        else {
          for (const { msg, groups } of entry.batch) {
            deliver(msg, groups);
            n++;
          }
        }
      } catch (e) {
        if (!(e instanceof CodecError)) throw e;
        log.warn`skipping entry ${id} of dead inbox ${key}: ${e.message}`;
      }
    }
  }
}

type Entry = { type: "messages"; batch: Forwarded[] } | {
  type: "control";
  fields: Map<string, string>;
};

/** One inbox entry: a batch of messages (`t` = m) or a kick / released (`t` = k / r). */
function parseEntry(fields: Buffer[]): Entry {
  const map = new Map<string, Buffer>();
  for (let i = 0; i + 1 < fields.length; i += 2) map.set(fields[i].toString(), fields[i + 1]);
  const type = map.get("t")?.toString();
  if (type === "m") {
    const data = map.get("d");
    if (data === undefined) throw new CodecError("no data field");
    return {
      type: "messages",
      batch: decodeBatch(data, map.get("i")?.toString("latin1"), map.get("v")?.toString("latin1")),
    };
  }
  if (type === "k" || type === "r") {
    const text = new Map<string, string>();
    for (const [k, v] of map) text.set(k, v.toString());
    return { type: "control", fields: text };
  }
  throw new CodecError(`unknown entry type ${JSON.stringify(type)}`);
}

/** What the reader does with control entries. */
export interface ControlHandler {
  (fields: Map<string, string>): void;
}

/** Reads this node's inbox and hands messages to the host. */
export class InboxReader {
  private running = false;
  private loop: Promise<void> | null = null;
  /** Read delivered-but-unacknowledged entries first (after a start or a lost connection). */
  private pendingFirst = true;
  /** Where the next read of the pending entries starts: past the last one read ("0": all). */
  private pendingFrom = "0";
  /**
   * Entries handed to the core and not yet acknowledged (XACK waits for the
   * store, or failed and is being retried): a re-read of the pending entries
   * skips them (delivering them again would queue every message of theirs
   * once more for each re-read, and a message its client acknowledged
   * meanwhile would reach it twice).
   */
  private readonly unacked = new Set<string>();
  /** XACKs failing in a row (Redis unreachable): for the retry delay and one log line. */
  private ackFailures = 0;
  private ackRetry: ReturnType<typeof setTimeout> | null = null;
  /** Entries whose XACK is to be retried (failed), oldest first. */
  private ackLater: string[] = [];
  private paused = false;
  /** Ids of the messages this inbox brought lately. */
  private readonly seen = new SeenIds();
  /** What every XREADGROUP of this reader starts with: its group, its name, 64 entries. */
  private readonly group: ["GROUP", string, string, "COUNT", number];

  constructor(
    private readonly self: string,
    private readonly key: string,
    private readonly cmd: RedisClient,
    private readonly reader: RedisClient,
    private readonly host: BusHost,
    private readonly onControl: ControlHandler,
    readonly stats: InboxStats,
    /**
     * Null when entries may be delivered now; else whether they may once the
     * lease is confirmed (false: this node was expelled, and the survivor that
     * handled it delivered them from the inbox instead).
     */
    private readonly confirm: () => Promise<boolean> | null = () => null,
  ) {
    this.group = ["GROUP", INBOX_GROUP, self, "COUNT", 64];
  }

  /** Creates the inbox and its consumer group (again after a Redis restart). */
  async ensureGroup(): Promise<void> {
    try {
      await this.cmd.xgroup("CREATE", this.key, INBOX_GROUP, "0", "MKSTREAM");
    } catch (e) {
      if (!String((e as Error).message).startsWith("BUSYGROUP")) throw e;
    }
  }

  start(): void {
    this.running = true;
    this.loop ??= this.readForever();
  }

  async stop(): Promise<void> {
    this.running = false;
    if (this.ackRetry !== null) clearTimeout(this.ackRetry);
    this.ackRetry = null;
    this.reader.disconnect();
    await this.loop;
  }

  private async readForever(): Promise<void> {
    let failures = 0;
    while (this.running) {
      if (this.host.storeFull) {
        // The store is failing and the journal at its bound: what is in the inbox stays there
        // (unacknowledged, safe) until the store catches up, instead of piling up in memory.
        if (!this.paused) log.warn`store behind (storage.max_unwritten_ops): inbox reading paused`;
        this.paused = true;
        await sleep(100);
        continue;
      }
      if (this.paused) log.info`store caught up: inbox reading resumed`;
      this.paused = false;
      try {
        const r = this.reader;
        const g = this.group;
        // The pending entries from where the last read of them ended; else new ones, blocking.
        const res = await unlessClosed(
          r,
          this.pendingFirst
            ? r.xreadgroupBuffer(...g, "STREAMS", this.key, this.pendingFrom)
            : r.xreadgroupBuffer(...g, "BLOCK", READ_BLOCK_MS, "STREAMS", this.key, ">"),
        );
        failures = 0;
        const entries = (res as [Buffer, [Buffer, Buffer[]][]][] | null)?.[0]?.[1] ?? [];
        if (this.pendingFirst) {
          // Pending entries are read in order, each once: the next read starts past these.
          if (entries.length === 0) {
            this.pendingFirst = false;
            this.pendingFrom = "0";
          } else this.pendingFrom = entries[entries.length - 1][0].toString();
        }
        if (entries.length === 0) continue;
        // Read after a freeze longer than the lease: another node may have handled this one as
        // dead and delivered these entries to the sessions it adopted.
        const confirmed = this.confirm();
        if (confirmed !== null && !(await confirmed)) {
          log
            .warn`dropped ${entries.length} inbox entries read while expelled (delivered by the node that handled this one)`;
          continue;
        }
        this.handle(entries);
      } catch (e) {
        if (!this.running) break;
        const msg = (e as Error).message ?? String(e);
        this.pendingFirst = true;
        this.pendingFrom = "0";
        if (msg.startsWith("NOGROUP")) {
          log.warn`inbox ${this.key} or its group vanished (Redis restarted?): recreating`;
          await this.ensureGroup().catch(() => {});
          continue;
        }
        if (failures++ === 0) log.warn`inbox read: ${msg}`;
        await sleep(Math.min(1000, 50 * failures));
      }
    }
  }

  private handle(entries: [Buffer, Buffer[]][]): void {
    const ids: string[] = [];
    for (const [rawId, fields] of entries) {
      const id = rawId.toString();
      // Delivered already, its acknowledgement waiting for the store: that one acknowledges it.
      if (this.unacked.has(id)) continue;
      ids.push(id);
      // A pending re-read returns entries already deleted as null fields.
      if (!Array.isArray(fields)) continue;
      try {
        const entry = parseEntry(fields);
        if (entry.type === "control") this.onControl(entry.fields);
        else {
          for (const { msg, groups, version } of entry.batch) {
            this.stats.received++;
            if (msg.id !== "" && !this.seen.firstTime(msg.id)) {
              // The same XADD run twice (seen_ids.ts): a QoS 2 message must not arrive twice.
              this.stats.duplicates++;
              this.host.duplicateArrived?.();
              continue;
            }
            this.host.deliverRemote(msg, groups, version);
          }
        }
      } catch (e) {
        if (e instanceof CodecError) {
          this.stats.corrupt++;
          log.warn`skipping inbox entry ${id}: ${e.message}`;
        } else {
          log.error`delivering inbox entry ${id} failed: ${(e as Error).stack ?? e}`;
        }
      }
    }
    if (ids.length === 0) return;
    // Acknowledged only once what the deliveries queued for persistent sessions is written
    // (the store's connection is another one, so Redis could apply the two in either order).
    // The journal retries a failed write until it succeeds, so this waits for the store to be
    // back; a crash before leaves them pending for the node that handles this one's death.
    for (const id of ids) this.unacked.add(id);
    const written = this.host.deliveredWritten();
    if (written === null) return this.ack(ids);
    const ack = () => this.ack(ids);
    written.then(ack, ack);
  }

  /**
   * XACK + XDEL of entries handled. A failed XACK (Redis unreachable) is
   * retried until it succeeds or the node stops: until then the entries stay
   * in `unacked`, so the re-read of pending entries after the reconnect does
   * not deliver them again.
   */
  private ack(ids: string[]): void {
    this.cmd.xack(this.key, INBOX_GROUP, ...ids).then(() => {
      this.ackFailures = 0;
      for (const id of ids) this.unacked.delete(id);
      this.cmd.xdel(this.key, ...ids).catch(() => {});
    }, (e: Error) => {
      if (!this.running) return;
      if (this.ackFailures++ === 0) log.warn`inbox acknowledgement failed, retrying: ${e.message}`;
      // One timer for every failed XACK: all are retried together.
      for (const id of ids) this.ackLater.push(id);
      this.ackRetry ??= setTimeout(() => {
        this.ackRetry = null;
        const later = this.ackLater;
        this.ackLater = [];
        if (this.running && later.length > 0) this.ack(later);
      }, Math.min(2000, 50 * 2 ** Math.min(this.ackFailures, 6)));
    });
  }
}
