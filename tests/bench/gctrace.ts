/**
 * mcloudtt's garbage collector, read from V8's `--trace-gc-nvp` output.
 *
 * Deno 2.9 (V8 15) prints one line per collection on stdout:
 * `[pid:isolate:n]   1234 ms: GC: {"pause":0.8,"mutator":412.3,"gc":"s",...,"allocated":123456,...}`.
 * The fields used here:
 * - `pause`: ms the main thread stood still for this collection (scavenge, or the atomic
 *   pause that ends a mark-compact);
 * - `mutator`: wall-clock ms from the end of the previous collection to the start of this one;
 * - `allocated`: bytes allocated meanwhile (the heap's object size at the start of this
 *   collection minus at the end of the previous one);
 * - mark-compact only: `incremental` (ms of incremental marking steps in this cycle, which run
 *   on the main thread between the pauses) and `incremental_longest_step`.
 *
 * V8 prints with printf, so the stream is block-buffered on a pipe; the bench starts the
 * broker under `stdbuf -oL` so each line arrives when the collection happens and can be
 * attributed to the measure window by its arrival.
 */

import { percentile } from "./stats.ts";

/** One collection. */
export interface GcEvent {
  /** "s" scavenge, "mc" mark-compact, others as V8 names them. */
  readonly gc: string;
  readonly pauseMs: number;
  readonly mutatorMs: number;
  readonly allocatedBytes: number;
  /** Incremental marking steps of this cycle (mark-compact only), total and longest. */
  readonly incrementalMs: number;
  readonly longestStepMs: number;
}

const MARKER = "GC: {";

/** Parses one line; undefined when it is not a `--trace-gc-nvp` collection line. */
export function parseGcLine(line: string): GcEvent | undefined {
  const at = line.indexOf(MARKER);
  if (at < 0) return undefined;
  let fields: Record<string, unknown>;
  try {
    fields = JSON.parse(line.slice(at + MARKER.length - 1));
  } catch {
    return undefined;
  }
  const num = (key: string) => {
    const v = fields[key];
    return typeof v === "number" && Number.isFinite(v) ? v : 0;
  };
  return {
    gc: typeof fields.gc === "string" ? fields.gc : "?",
    pauseMs: num("pause"),
    mutatorMs: num("mutator"),
    allocatedBytes: num("allocated"),
    incrementalMs: num("incremental"),
    longestStepMs: num("incremental_longest_step"),
  };
}

/** Collects collections from a broker's stdout as it arrives. */
export class GcTrace {
  readonly events: GcEvent[] = [];
  #pending = "";
  readonly #decoder = new TextDecoder();

  /** Feeds a chunk of the broker's stdout. */
  push(chunk: Uint8Array): void {
    this.#pending += this.#decoder.decode(chunk, { stream: true });
    let newline: number;
    while ((newline = this.#pending.indexOf("\n")) >= 0) {
      const event = parseGcLine(this.#pending.slice(0, newline));
      this.#pending = this.#pending.slice(newline + 1);
      if (event) this.events.push(event);
    }
  }

  /** Collections seen so far; two counts delimit a window. */
  count(): number {
    return this.events.length;
  }
}

/**
 * GC figures of a measure window from the collections that happened in it:
 * - `gc_alloc_bytes_per_msg`: allocation rate (sum of `allocated` / sum of `mutator` time
 *   before each collection) divided by the delivery rate; NaN when no collection happened;
 * - `gc_pause_p99_ms`, `gc_pause_max_ms`: over the atomic pauses (max also over the longest
 *   incremental marking step);
 * - `gc_ms_per_s`: pauses plus incremental marking steps, per second of window.
 */
export function gcMetrics(
  events: readonly GcEvent[],
  windowS: number,
  deliveredPerS: number,
): Record<string, number> {
  let allocated = 0, mutator = 0, paused = 0, longestStep = 0, scavenges = 0;
  for (const e of events) {
    allocated += e.allocatedBytes;
    mutator += e.mutatorMs;
    paused += e.pauseMs + e.incrementalMs;
    longestStep = Math.max(longestStep, e.longestStepMs);
    if (e.gc === "s") scavenges++;
  }
  const pauses = events.map((e) => e.pauseMs).sort((a, b) => a - b);
  const bytesPerMs = mutator > 0 ? allocated / mutator : NaN;
  return {
    gc_events: events.length,
    gc_scavenges: scavenges,
    gc_alloc_mb_per_s: (bytesPerMs * 1000) / (1024 * 1024),
    gc_alloc_bytes_per_msg: deliveredPerS > 0 ? (bytesPerMs * 1000) / deliveredPerS : NaN,
    gc_pause_p99_ms: percentile(pauses, 99),
    gc_pause_max_ms: events.length > 0 ? Math.max(pauses[pauses.length - 1], longestStep) : NaN,
    gc_ms_per_s: windowS > 0 ? paused / windowS : NaN,
  };
}
