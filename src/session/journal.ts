/**
 * Group commit of state changes into a durable `Store`: operations collect
 * while the event loop works and are written as one batch once the current
 * turn's work is done; while a batch is being written the next one collects,
 * so a slow disk makes batches bigger, not more frequent.
 */
import { getLogger } from "@logtape/logtape";
import type { Store, StoreOp } from "../store/types.ts";

const log = getLogger(["mcloudtt", "store"]);

export class Journal {
  private ops: StoreOp[] = [];
  private waiting:
    | { promise: Promise<void>; resolve: () => void; reject: (e: unknown) => void }
    | null = null;
  private writing = false;
  private scheduled = false;
  /** Batches handed to the store so far; the failure callback gets the failed one's number. */
  flushed = 0;
  /** Batches written, ops written, failed batches: read by ops. */
  readonly stats = { batches: 0, ops: 0, failures: 0 };

  /**
   * `acksWait`: packets that let a client forget something (PUBACK, PUBREC,
   * PUBREL, PUBCOMP, SUBACK, UNSUBACK) wait for the batch holding the change
   * they confirm (`[storage] sync = "ack-after-write"`); false sends them at
   * once ("async").
   */
  constructor(
    private readonly store: Store,
    readonly acksWait = true,
    /** Told of every failed batch (after it is logged), with its number (see `flushed`). */
    private readonly onFailure: (e: unknown, batch: number) => void = () => {},
  ) {}

  /** Ops waiting for the next batch (a publish compares it before and after routing). */
  get size(): number {
    return this.ops.length;
  }

  /** Queues `op` for the next batch. */
  push(op: StoreOp): void {
    this.ops.push(op);
    if (!this.writing && !this.scheduled) {
      this.scheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  /** Resolves when every op pushed so far is written; null when nothing is pending. */
  get pending(): Promise<void> | null {
    if (this.ops.length === 0) return this.inFlight;
    if (this.waiting === null) {
      let resolve!: () => void;
      let reject!: (e: unknown) => void;
      const promise = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      // Nobody may be listening (a QoS 0 publish): do not report the failure as unhandled.
      promise.catch(() => {});
      this.waiting = { promise, resolve, reject };
    }
    return this.waiting.promise;
  }

  /**
   * What an acknowledgement of the ops pushed so far waits for: `pending`
   * when acknowledgements wait for the store, else null.
   */
  get ackWait(): Promise<void> | null {
    return this.acksWait ? this.pending : null;
  }

  private inFlight: Promise<void> | null = null;

  /** Writes what has collected; called once per turn, or when the previous write ends. */
  private flush(): void {
    this.scheduled = false;
    if (this.writing || this.ops.length === 0) return;
    const ops = this.ops;
    const waiting = this.waiting;
    this.ops = [];
    this.waiting = null;
    this.writing = true;
    const batch = ++this.flushed;
    const done = this.store.write(ops).then(
      () => {
        this.stats.batches++;
        this.stats.ops += ops.length;
        waiting?.resolve();
      },
      (e) => {
        this.stats.failures++;
        log.error("store write of {n} operations failed: {error}", {
          n: ops.length,
          error: e instanceof Error ? e.message : String(e),
        });
        waiting?.reject(e);
        this.onFailure(e, batch);
        throw e;
      },
    ).finally(() => {
      this.writing = false;
      if (this.inFlight === done) this.inFlight = null;
      if (this.ops.length > 0) this.flush();
    });
    done.catch(() => {});
    this.inFlight = done;
  }

  /** Resolves when everything pushed so far has been written (or failed). */
  async drain(): Promise<void> {
    for (;;) {
      const p = this.pending;
      if (p === null) return;
      await p.catch(() => {});
    }
  }
}
