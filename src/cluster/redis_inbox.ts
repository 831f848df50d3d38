/**
 * Node inboxes: one Redis stream per node incarnation. Publisher nodes batch
 * what they forward per destination and event-loop turn into one entry (one
 * XADD each, all in one round trip thanks to auto-pipelining); the owner reads
 * its inbox through a consumer group (which survives reconnects), hands each
 * message to the core and acknowledges (XACK + XDEL) after. Entries are never
 * trimmed unread. Control entries (session kick and its reply) travel the
 * same way, so they are ordered with the messages before them.
 */
import type { Buffer } from "node:buffer";
import { getLogger } from "@logtape/logtape";
import { CodecError, decodeBatch, type Forwarded } from "./codec.ts";
import { READ_BLOCK_MS, type RedisClient, unlessClosed } from "./redis_connection.ts";
import { SeenIds } from "./seen_ids.ts";
import type { BusHost } from "./types.ts";

const log = getLogger(["mcloudtt", "cluster"]);

/** Consumer group name of every inbox. */
export const INBOX_GROUP = "node";

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

/**
 * Reads every entry left in a dead node's inbox, oldest first: messages go to
 * `deliver`, control entries to `onControl`. Returns the number of messages.
 */
export async function drainInbox(
  cmd: RedisClient,
  key: string,
  deliver: (msg: Forwarded["msg"], groups: readonly string[], redelivery: boolean) => void,
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
          for (const { msg, groups, redelivery } of entry.batch) {
            deliver(msg, groups, redelivery);
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
          for (const { msg, groups, version, redelivery } of entry.batch) {
            this.stats.received++;
            if (msg.id !== "" && !this.seen.firstTime(msg.id)) {
              // The same XADD run twice (seen_ids.ts): a QoS 2 message must not arrive twice.
              this.stats.duplicates++;
              this.host.duplicateArrived?.();
              continue;
            }
            if (redelivery) this.host.redeliverShared(msg, groups);
            else this.host.deliverRemote(msg, groups, version);
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
