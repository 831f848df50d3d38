/**
 * The bounded row queue between the publish path and a destination
 * (BigQuery, a JSON-lines file). `offer` only checks the topic, keeps the
 * message and returns; rows are built, batched and sent later, off the
 * publish call. Failed sends are retried with backoff; when the destination
 * stays away, the overflow policy decides: drop the oldest rows (counted), or
 * spill to disk and replay in order once it is back.
 */
import type { Logger } from "@logtape/logtape";
import type { Message } from "../protocol/message.ts";
import { TopicSelector } from "./filter.ts";
import { RowIds, type TopicRow, toRow } from "./row.ts";
import { SpillStore } from "./spill.ts";
import { settleLeftovers } from "./leftovers.ts";
import { Aborted, raceTimeout, sleepUnless } from "./timing.ts";
import { type Entry, memoryBytes, type SegmentRef } from "./entry.ts";
import { newStats, observeLatency, RateLimitedLog, type SinkStats } from "./stats.ts";
import type { PublishInfo, Sink } from "./types.ts";
import {
  type Destination,
  type Outcome,
  PermanentError,
  type QueueOptions,
  rowBytes,
  type SendResult,
  TooLargeError,
} from "./destination.ts";

export {
  type Destination,
  type Outcome,
  PermanentError,
  type QueueOptions,
  type RowRejection,
  type SendResult,
  TooLargeError,
  TransientError,
} from "./destination.ts";

interface Batch {
  pending: Entry[];
}

/** `{"rows":[...],"skipInvalidRows":true,"ignoreUnknownValues":false}` around the rows, with room. */
const BATCH_ENVELOPE = 256;

/** Spill segments hold this many batches, so replay reads a few files rather than many tiny ones. */
const BATCHES_PER_SEGMENT = 16;
/** A spill segment holds at most this part of max_queue_bytes (its text plus its rows fit in it). */
const SEGMENT_SHARE = 4;

export class QueueSink implements Sink {
  readonly name: string;
  readonly stats: SinkStats;
  private readonly selector: TopicSelector;
  private readonly ids: RowIds;
  private readonly spill: SpillStore | null;
  /** Waiting rows, oldest first; `head` is the index of the oldest (cheap shift). */
  private mem: Entry[] = [];
  private head = 0;
  /** Bytes held by the rows in `mem` (memoryBytes), bounded by maxQueueBytes. */
  private memBytes = 0;
  /** Rows read back from the spill store, waiting to be sent. */
  private replay: Entry[] = [];
  /** Rows split off a batch the destination found too large; sent before anything else. */
  private split: Entry[] = [];
  /** True while rows go to the spill store: set on overflow, cleared once the store is drained. */
  private spilling = false;
  private loading = false;
  private readonly batches = new Set<Batch>();
  /** Segment deletions under way (stop waits for them). */
  private readonly removals = new Set<Promise<void>>();
  private flushDue = false;
  private pumpScheduled = false;
  private blockedUntil = 0;
  private blockTimer: ReturnType<typeof setTimeout> | undefined;
  private flushTimer: ReturnType<typeof setInterval> | undefined;
  private started = false;
  private stopping = false;
  private readonly abort = new AbortController();
  private readonly dropLog: RateLimitedLog;
  private readonly retryLog: RateLimitedLog;
  private readonly rejectLog: RateLimitedLog;

  constructor(
    private readonly dest: Destination,
    private readonly opts: QueueOptions,
    private readonly log: Logger,
  ) {
    this.name = dest.name;
    this.stats = newStats(dest.name);
    this.selector = new TopicSelector(opts.include, opts.exclude);
    this.ids = new RowIds(opts.nodeId);
    this.spill = opts.overflow === "spill"
      ? new SpillStore(
        opts.spillDir,
        opts.spillMaxBytes,
        opts.batchSize * BATCHES_PER_SEGMENT,
        // Replay reads a segment whole, its text and then its rows, while the queue is empty.
        // Bounded by rows alone, a segment of large rows grew to spill_max_bytes (1 GiB): replaying
        // 138 MB with max_queue_bytes = 4 MiB took the broker from 171 to 589 MiB.
        Math.max(1, Math.floor(opts.maxQueueBytes / SEGMENT_SHARE)),
        (e, rows) => {
          this.stats.dropped += rows;
          this.dropLog.note(`topic log (${this.name}): cannot write the spill store: ${e}`);
        },
      )
      : null;
    this.dropLog = new RateLimitedLog((m) => log.warn(m));
    this.retryLog = new RateLimitedLog((m) => log.warn(m));
    this.rejectLog = new RateLimitedLog((m) => log.error(m));
  }

  async start(): Promise<void> {
    if (this.spill) {
      try {
        await this.spill.open();
      } catch (e) {
        throw new Error(
          `topic log (${this.name}): cannot use the spill directory ${this.opts.spillDir}: ${e}`,
        );
      }
      this.stats.spillBytes = this.spill.bytes;
      if (!this.spill.empty) {
        this.log.info(
          `topic log (${this.name}): replaying ${this.spill.bytes} bytes spilled by an earlier run`,
        );
        this.spilling = true;
      }
    }
    await this.dest.start();
    this.started = true;
    const timer = setInterval(() => {
      this.flushDue = true;
      this.pump();
    }, this.opts.flushIntervalMs);
    // The flush timer alone must not keep a process (or a test) alive.
    Deno.unrefTimer(timer as unknown as number);
    this.flushTimer = timer;
    this.pump();
  }

  offer(msg: Message, info: PublishInfo): void {
    try {
      if (!this.selector.accepts(msg.topic)) return;
      if (this.stopping) {
        this.stats.dropped++;
        this.dropLog.note(`topic log (${this.name}): message offered after stop, dropped`);
        return;
      }
      this.admit({
        row: null,
        msg: msg.own(),
        info,
        // The core may leave receivedAt at 0 (it reuses one info per connection); offer runs
        // inside the publish call, so now is when the message arrived.
        at: info.receivedAt || Date.now(),
        id: this.ids.next(),
        done: null,
        seg: null,
        bytes: 0,
        held: 0,
      });
    } catch (e) {
      // offer() must never throw into the publish path.
      this.stats.dropped++;
      this.dropLog.note(`topic log (${this.name}): cannot queue a message: ${e}`);
    }
  }

  /** Queues a ready row (the adapter's path); `done` says what became of it. */
  enqueue(row: TopicRow, done?: (o: Outcome) => void): void {
    if (this.stopping) {
      this.stats.dropped++;
      done?.("dropped");
      return;
    }
    this.admit({
      row,
      msg: null,
      info: null,
      at: 0,
      id: row.id,
      done: done ?? null,
      seg: null,
      bytes: 0,
      held: 0,
    });
  }

  private get memLength(): number {
    return this.mem.length - this.head;
  }

  private admit(e: Entry): void {
    this.stats.queued++;
    // A payload alone over batch_max_bytes can never be sent: refused before its row is built.
    // Building and sizing it cost several times the payload, and a 100 MB payload of control
    // characters (six bytes each in JSON) passed V8's largest string and ended the broker.
    const max = this.opts.batchMaxBytes;
    if (max > 0) {
      const least = e.msg !== null ? e.msg.payload.byteLength : e.row!.payload.length;
      if (least + BATCH_ENVELOPE > max) return this.rejectTooLarge(e, least);
    }
    if (this.spilling) {
      this.toSpill(e);
      return;
    }
    e.held = memoryBytes(e);
    const full = () =>
      this.memLength > 0 &&
      (this.memLength >= this.opts.maxQueue || this.memBytes + e.held > this.opts.maxQueueBytes);
    if (full()) {
      const bound = `${this.opts.maxQueue} rows or ${this.opts.maxQueueBytes} bytes`;
      if (this.spill) {
        this.spilling = true;
        this.log.warn(
          `topic log (${this.name}): queue full (${bound}), spilling to ${this.opts.spillDir}`,
        );
        this.toSpill(e);
        return;
      }
      while (full()) {
        const old = this.mem[this.head];
        this.mem[this.head++] = undefined as unknown as Entry;
        this.memBytes -= old.held;
        this.finish(old, "dropped", false);
        this.stats.dropped++;
      }
      this.dropLog.note(`topic log (${this.name}): queue full (${bound}), dropping the oldest`);
    }
    this.mem.push(e);
    this.memBytes += e.held;
    this.stats.queueLength = this.memLength;
    this.stats.queueBytes = this.memBytes;
    if (this.batchReady) this.schedulePump();
  }

  /** A full batch waits in memory: by rows, or by bytes (then the rows are large). */
  private get batchReady(): boolean {
    return this.memLength >= this.opts.batchSize ||
      (this.opts.batchMaxBytes > 0 && this.memBytes >= this.opts.batchMaxBytes);
  }

  private toSpill(e: Entry): void {
    const spill = this.spill!;
    const row = this.materialize(e);
    const ok = spill.append(row, (written) => {
      // A failed write is counted as dropped by the store's onWriteError.
      if (!written) return e.done?.("dropped");
      this.stats.spilled++;
      this.stats.spillBytes = spill.bytes;
      e.done?.("spilled");
    });
    this.stats.spillBytes = spill.bytes;
    if (!ok) {
      this.stats.dropped++;
      e.done?.("dropped");
      this.dropLog.note(
        `topic log (${this.name}): spill store full (${this.opts.spillMaxBytes} bytes), dropping`,
      );
    }
    this.schedulePump();
  }

  private materialize(e: Entry): TopicRow {
    if (e.row === null) {
      e.row = toRow(e.msg!, e.info!, this.opts.nodeId, e.id, e.at);
      e.msg = null;
      e.info = null;
    }
    return e.row;
  }

  /** Pumps on a later turn: never from inside the publisher's call. */
  private schedulePump(): void {
    if (this.pumpScheduled || !this.started) return;
    this.pumpScheduled = true;
    setTimeout(() => {
      this.pumpScheduled = false;
      this.pump();
    }, 0);
  }

  /**
   * The next batch from `list` starting at `start`, oldest first: up to batchSize rows and
   * batchMaxBytes bytes. A row that alone is over batchMaxBytes is rejected here (BigQuery
   * would refuse the request, with every row in it). Returns the batch and where it ended.
   */
  private takeFrom(list: readonly Entry[], start: number, end: number): [Entry[], number] {
    const out: Entry[] = [];
    const max = this.opts.batchMaxBytes;
    let bytes = BATCH_ENVELOPE;
    let i = start;
    while (i < end && out.length < this.opts.batchSize) {
      const e = list[i];
      if (max > 0) {
        const size = this.sizeOf(e);
        if (size + BATCH_ENVELOPE > max) {
          i++;
          this.rejectTooLarge(e, size);
          continue;
        }
        if (out.length > 0 && bytes + size > max) break;
        bytes += size;
      }
      out.push(e);
      i++;
    }
    return [out, i];
  }

  private sizeOf(e: Entry): number {
    if (e.bytes === 0) e.bytes = rowBytes(this.materialize(e));
    return e.bytes;
  }

  /** Refuses a row of at least `size` bytes, over batch_max_bytes. */
  private rejectTooLarge(e: Entry, size: number): void {
    this.stats.rejected++;
    const topic = e.row?.topic ?? e.msg?.topic;
    this.rejectLog.note(
      `topic log (${this.name}): row refused (topic ${topic}, id ${e.id}): ` +
        `${size} bytes, more than batch_max_bytes (${this.opts.batchMaxBytes}) in one request`,
    );
    this.finish(e, "rejected", false);
  }

  private takeMem(): Entry[] {
    const [out, end] = this.takeFrom(this.mem, this.head, this.mem.length);
    for (let i = this.head; i < end; i++) this.memBytes -= this.mem[i].held;
    this.mem.fill(undefined as unknown as Entry, this.head, end);
    this.head = end;
    if (this.head > 1024 && this.head * 2 > this.mem.length) {
      this.mem = this.mem.slice(this.head);
      this.head = 0;
    }
    this.stats.queueLength = this.memLength;
    this.stats.queueBytes = this.memBytes;
    return out;
  }

  /** The next batch from the front of `list` (replayed or split rows), removed from it. */
  private takeList(list: Entry[]): Entry[] {
    const [out, end] = this.takeFrom(list, 0, list.length);
    list.splice(0, end);
    return out;
  }

  private pump(): void {
    if (!this.started) return;
    while (this.batches.size < this.opts.concurrency) {
      const wait = this.blockedUntil - Date.now();
      if (wait > 0) {
        if (this.blockTimer === undefined) {
          this.blockTimer = setTimeout(() => {
            this.blockTimer = undefined;
            this.pump();
          }, wait);
        }
        return;
      }
      let batch: Entry[] | null = null;
      const n = this.memLength;
      if (this.split.length > 0) {
        batch = this.takeList(this.split);
      } else if (n > 0) {
        if (this.batchReady || this.flushDue || this.stopping) batch = this.takeMem();
      } else if (this.replay.length > 0) {
        batch = this.takeList(this.replay);
      } else if (this.spilling && !this.loading && !this.stopping) {
        this.loadSegment();
      }
      if (batch === null) break;
      // Every row of it may have been too large: nothing to send, look again.
      if (batch.length > 0) this.launch(batch);
    }
    if (this.memLength === 0) this.flushDue = false;
  }

  private loadSegment(): void {
    const spill = this.spill!;
    this.loading = true;
    spill.readNext().then(async (got) => {
      this.loading = false;
      if (got === null) {
        // Drained: new rows go to memory again, unless some arrived while reading.
        if (!spill.unread) this.spilling = false;
      } else {
        if (got.bad > 0) {
          this.log.warn(
            `topic log (${this.name}): skipped ${got.bad} unreadable lines in ${got.segment.path}`,
          );
        }
        if (got.rows.length === 0) {
          await spill.remove(got.segment);
        } else {
          const ref: SegmentRef = { segment: got.segment, left: got.rows.length };
          this.stats.replayed += got.rows.length;
          for (const row of got.rows) {
            this.replay.push({
              row,
              msg: null,
              info: null,
              at: 0,
              id: row.id,
              done: null,
              seg: ref,
              bytes: 0,
              held: 0,
            });
          }
        }
      }
      this.stats.spillBytes = spill.bytes;
      this.pump();
    }).catch((e) => {
      this.loading = false;
      this.log.error(`topic log (${this.name}): cannot read the spill store: ${e}`);
      this.block(this.opts.retryMaxMs);
    });
  }

  private launch(entries: Entry[]): void {
    const batch: Batch = { pending: entries };
    this.batches.add(batch);
    this.stats.inFlight += entries.length;
    this.sendBatch(batch).catch((e) => {
      this.log.error(`topic log (${this.name}): unexpected error sending rows: ${e}`);
    }).finally(() => {
      this.batches.delete(batch);
      this.pump();
    });
  }

  private block(ms: number): void {
    this.blockedUntil = Math.max(this.blockedUntil, Date.now() + ms);
    this.schedulePump();
  }

  private backoff(attempt: number): number {
    const base = Math.min(this.opts.retryMaxMs, this.opts.retryInitialMs * 2 ** (attempt - 1));
    return base / 2 + Math.random() * (base / 2);
  }

  private async sendBatch(batch: Batch): Promise<void> {
    let attempt = 0;
    while (batch.pending.length > 0) {
      if (this.abort.signal.aborted) return;
      const rows = batch.pending.map((e) => this.materialize(e));
      const t0 = performance.now();
      this.stats.requests++;
      let result: SendResult;
      try {
        result = await this.race(this.dest.send(rows));
        observeLatency(this.stats.insertLatency, performance.now() - t0);
      } catch (e) {
        if (e instanceof Aborted) return;
        observeLatency(this.stats.insertLatency, performance.now() - t0);
        this.stats.failedRequests++;
        if (e instanceof TooLargeError && batch.pending.length > 1) {
          // Sent again as two requests: this one keeps the older half, the rest goes first in line.
          const rest = batch.pending.splice(Math.ceil(batch.pending.length / 2));
          this.stats.inFlight -= rest.length;
          this.split.unshift(...rest);
          this.retryLog.note(
            `topic log (${this.name}): request too large (${errorText(e)}), split in two`,
          );
          continue;
        }
        if (e instanceof PermanentError || e instanceof TooLargeError) {
          this.stats.rejected += rows.length;
          this.rejectLog.note(
            `topic log (${this.name}): ${rows.length} rows refused: ${e.message}`,
          );
          for (const entry of batch.pending) this.finish(entry, "rejected", true);
          batch.pending = [];
          return;
        }
        attempt++;
        this.stats.retried += rows.length;
        const delay = this.backoff(attempt);
        this.retryLog.note(
          `topic log (${this.name}): send failed (${errorText(e)}), retrying ` +
            `${rows.length} rows in ${Math.round(delay)} ms`,
        );
        this.block(delay);
        if (!(await this.sleep(delay))) return;
        continue;
      }
      this.stats.answeredRequests++;
      const retry = new Set(result.retry);
      const rejected = new Map(result.rejected.map((r) => [r.index, r.reason]));
      const next: Entry[] = [];
      batch.pending.forEach((entry, i) => {
        const reason = rejected.get(i);
        if (reason !== undefined) {
          this.stats.rejected++;
          this.rejectLog.note(
            `topic log (${this.name}): row refused (topic ${rows[i].topic}, id ${
              rows[i].id
            }): ${reason}`,
          );
          this.finish(entry, "rejected", true);
        } else if (retry.has(i)) {
          next.push(entry);
        } else {
          this.stats.sent++;
          this.finish(entry, "sent", true);
        }
      });
      batch.pending = next;
      if (next.length > 0) {
        attempt++;
        this.stats.retried += next.length;
        if (!(await this.sleep(this.backoff(attempt)))) return;
      }
    }
  }

  /** Ends a row's life: gauges, the caller's callback, and the spill segment it came from. */
  private finish(e: Entry, outcome: Outcome, inFlight: boolean): void {
    if (inFlight) this.stats.inFlight--;
    e.done?.(outcome);
    const ref = e.seg;
    if (ref !== null && --ref.left === 0) {
      const removal = this.spill!.remove(ref.segment).then(() => {
        this.stats.spillBytes = this.spill!.bytes;
        this.schedulePump();
      }).catch((err) => this.log.error(`topic log (${this.name}): ${err}`))
        .finally(() => this.removals.delete(removal));
      this.removals.add(removal);
    }
  }

  /** Runs `p` until it settles, request_timeout_ms passes, or the stop deadline aborts it. */
  private race<T>(p: Promise<T>): Promise<T> {
    return raceTimeout(p, this.opts.requestTimeoutMs, this.abort.signal);
  }

  /** Waits `ms`; false when the stop deadline came first. */
  private sleep(ms: number): Promise<boolean> {
    return sleepUnless(ms, this.abort.signal);
  }

  private get idle(): boolean {
    return this.memLength === 0 && this.replay.length === 0 && this.split.length === 0 &&
      this.batches.size === 0;
  }

  /**
   * Sends what is queued until `deadlineMs` has passed; then whatever is left
   * is spilled (policy "spill") or counted as dropped.
   */
  async stop(deadlineMs: number): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.flushTimer);
    const deadline = Date.now() + deadlineMs;
    if (this.started) {
      this.pump();
      while (!this.idle && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, Math.min(10, Math.max(1, deadline - Date.now()))));
        this.pump();
      }
    }
    this.abort.abort();
    clearTimeout(this.blockTimer);
    // Leftovers in age order: batches in flight (launched in order), then memory.
    const left: Entry[] = [];
    for (const b of this.batches) left.push(...b.pending);
    left.push(...this.split, ...this.mem.slice(this.head));
    this.split = [];
    this.mem = [];
    this.head = 0;
    this.memBytes = 0;
    this.replay = [];
    this.stats.queueLength = 0;
    this.stats.queueBytes = 0;
    this.stats.inFlight = 0;
    // Rows read back from a segment are still on disk: the next run replays them.
    const fresh = left.filter((e) => e.seg === null);
    if (this.spill) await Promise.all(this.removals);
    await settleLeftovers(fresh, {
      name: this.name,
      spill: this.spill,
      spillDir: this.opts.spillDir,
      spillMaxBytes: this.opts.spillMaxBytes,
      stats: this.stats,
      log: this.log,
      materialize: (e) => this.materialize(e),
    });
    await this.dest.close();
  }
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
