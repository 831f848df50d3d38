/**
 * Counters of one topic-log destination: plain fields bumped where things
 * happen and read by /metrics. Counters only grow; gauges say how things are now.
 */

/** Upper bounds (ms) of the insert latency histogram buckets; a last bucket holds the rest. */
export const LATENCY_BUCKETS_MS: readonly number[] = [
  5,
  10,
  25,
  50,
  100,
  250,
  500,
  1000,
  2500,
  5000,
  10000,
];

/** Time of each request to the destination, successful or not. */
export interface LatencyHistogram {
  /** Upper bounds in ms, ascending (LATENCY_BUCKETS_MS). */
  readonly bucketsMs: readonly number[];
  /** Requests per bucket, not cumulative; one more entry than bucketsMs (the +Inf bucket). */
  readonly counts: number[];
  /** Requests timed. */
  count: number;
  /** Sum of their durations in ms. */
  sumMs: number;
}

export interface SinkStats {
  /** Destination name: "bigquery", "jsonl". */
  readonly sink: string;
  /** Rows taken in (offered and selected by include/exclude, or enqueued by the adapter). */
  queued: number;
  /** Rows the destination accepted. */
  sent: number;
  /** Row sends repeated after a failure (one row retried three times counts 3). */
  retried: number;
  /** Rows the destination refused for good (logged with the reason, never retried). */
  rejected: number;
  /** Rows lost: queue overflow under "drop-oldest", spill store full, or shutdown without spilling. */
  dropped: number;
  /** Rows written to the spill store. */
  spilled: number;
  /** Rows read back from the spill store and sent again. */
  replayed: number;
  /**
   * Requests made to the destination (counted as they start), those answered (counted as they
   * end: some rows may still have been refused) and those that failed as a whole.
   */
  requests: number;
  answeredRequests: number;
  failedRequests: number;
  /** Gauge: rows waiting in memory (not counting rows in flight). */
  queueLength: number;
  /** Gauge: bytes those rows hold in memory (payloads, topics, overhead; estimated). */
  queueBytes: number;
  /** Gauge: rows in requests that have not finished. */
  inFlight: number;
  /** Gauge: bytes in the spill store (on disk or being written). */
  spillBytes: number;
  readonly insertLatency: LatencyHistogram;
}

export function newStats(sink: string): SinkStats {
  return {
    sink,
    queued: 0,
    sent: 0,
    retried: 0,
    rejected: 0,
    dropped: 0,
    spilled: 0,
    replayed: 0,
    requests: 0,
    answeredRequests: 0,
    failedRequests: 0,
    queueLength: 0,
    queueBytes: 0,
    inFlight: 0,
    spillBytes: 0,
    insertLatency: {
      bucketsMs: LATENCY_BUCKETS_MS,
      counts: new Array(LATENCY_BUCKETS_MS.length + 1).fill(0),
      count: 0,
      sumMs: 0,
    },
  };
}

export function observeLatency(h: LatencyHistogram, ms: number): void {
  let i = 0;
  while (i < h.bucketsMs.length && ms > h.bucketsMs[i]) i++;
  h.counts[i]++;
  h.count++;
  h.sumMs += ms;
}

/**
 * Logs a repeated event at most once per `intervalMs`, saying how many were
 * not logged in between (drops can come at the publish rate).
 */
export class RateLimitedLog {
  private last = -Infinity;
  private suppressed = 0;

  constructor(
    private readonly write: (message: string) => void,
    private readonly intervalMs = 10_000,
  ) {}

  note(message: string, now = Date.now()): void {
    if (now - this.last < this.intervalMs) {
      this.suppressed++;
      return;
    }
    const extra = this.suppressed > 0 ? ` (${this.suppressed} more since the last report)` : "";
    this.suppressed = 0;
    this.last = now;
    this.write(message + extra);
  }
}
