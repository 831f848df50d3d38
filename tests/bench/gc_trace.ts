/**
 * Reads V8's `--trace-gc-nvp` output into allocation and pause figures: the bench report's
 * per-window GC metrics (`gcMetrics`, measure.ts) and alloc.ts / floor.ts's window summaries
 * (`summarize`).
 *
 * Deno 2.9 (V8 15) prints one line per collection on stdout:
 * `[pid:isolate:n]   1234 ms: GC: {"pause":0.8,"mutator":412.3,"gc":"s",...,"allocated":123456,...}`.
 * Each line carries `allocated`: bytes of objects allocated on the V8 heap since the previous
 * collection (the off-heap backing stores of large typed arrays are not in it). So the bytes
 * allocated between two collections a and b are the sum of `allocated` over the lines after a up
 * to b, which counting messages at the same two moments turns into bytes per message,
 * independent of CPU contention. `mutator` is the wall-clock ms from the end of the previous
 * collection to the start of this one; mark-compact lines add `incremental` (ms of incremental
 * marking steps in this cycle, run on the main thread between the pauses) and
 * `incremental_longest_step`.
 *
 * V8 prints with printf, so the stream is block-buffered on a pipe; the bench starts the
 * broker under `stdbuf -oL` so each line arrives when the collection happens and can be
 * attributed to the measure window by its arrival.
 */
import { percentile } from "./stats.ts";

/** One garbage collection as the trace reports it. */
export interface GcEvent {
  /** "s" scavenge, "mc" mark-compact, "mmc" minor mark-sweep, ... as V8 names them. */
  readonly kind: string;
  /** Why V8 collected ("allocation failure", "idle task", "external memory pressure", ...). */
  readonly reason: string;
  /** Main-thread pause in ms (scavenge, or the atomic pause that ends a mark-compact). */
  readonly pause: number;
  /** Wall-clock ms from the end of the previous collection to the start of this one. */
  readonly mutatorMs: number;
  /** Heap bytes allocated since the previous collection. */
  readonly allocated: number;
  /** `incremental.steps_count` / `incremental.steps_took`: steps and main-thread ms. */
  readonly incrementalSteps: number;
  readonly incrementalMs: number;
  /** Mark-compact only: ms of this cycle's incremental marking steps (`incremental`), longest. */
  readonly markingMs: number;
  readonly longestStepMs: number;
  /** Young objects that survived (copied within the young generation) and promoted, in bytes. */
  readonly survived: number;
  readonly promoted: number;
  /** Capacity of the young generation's semi-space (bytes). */
  readonly newSpaceCapacity: number;
  /** Heap size after the collection (bytes of objects). */
  readonly endObjectSize: number;
  /** The reader's counter (delivered messages) when the line was read. */
  readonly mark: number;
}

const MARKER = "GC: {";

/** Parses one output line; null when it is not a `--trace-gc-nvp` record. */
export function parseGcLine(line: string, mark = 0): GcEvent | null {
  const at = line.indexOf(MARKER);
  if (at < 0) return null;
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(line.slice(at + MARKER.length - 1));
  } catch {
    return null;
  }
  const num = (k: string) => {
    const v = rec[k];
    return typeof v === "number" && Number.isFinite(v) ? v : 0;
  };
  return {
    kind: typeof rec.gc === "string" ? rec.gc : "?",
    reason: typeof rec.reason === "string" ? rec.reason : "",
    pause: num("pause"),
    mutatorMs: num("mutator"),
    allocated: num("allocated"),
    incrementalSteps: num("incremental.steps_count"),
    incrementalMs: num("incremental.steps_took"),
    markingMs: num("incremental"),
    longestStepMs: num("incremental_longest_step"),
    survived: num("new_space_survived"),
    promoted: num("promoted"),
    newSpaceCapacity: num("new_space_capacity"),
    endObjectSize: num("end_object_size"),
    mark,
  };
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
    allocated += e.allocated;
    mutator += e.mutatorMs;
    paused += e.pause + e.markingMs;
    longestStep = Math.max(longestStep, e.longestStepMs);
    if (e.kind === "s") scavenges++;
  }
  const pauses = events.map((e) => e.pause).sort((a, b) => a - b);
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

/** Pauses of one kind of collection. */
export interface PauseSummary {
  count: number;
  totalMs: number;
  p50: number;
  p99: number;
  max: number;
}

/** What the collections of a measurement window add up to. */
export interface GcSummary {
  /** Collections from the first to the last in the window (the first one opens it). */
  collections: number;
  /** Heap bytes allocated between the first and the last collection. */
  allocatedBytes: number;
  /** Counter (delivered messages) advanced over the same span. */
  messages: number;
  bytesPerMessage: number;
  byKind: Record<string, PauseSummary>;
  incrementalSteps: number;
  incrementalMs: number;
  /** Collections by kind and reason, e.g. `ms: idle task` -> 1. */
  reasons: Record<string, number>;
  /**
   * Bytes a scavenge copies (survivors kept young plus promoted), on average:
   * what a scavenge's pause is proportional to, measured in bytes, so it holds
   * on a busy machine where the pause durations themselves do not.
   */
  copiedPerScavenge: number;
  /** Bytes promoted to the old generation per 10 000 messages (what later mark-compacts cost). */
  promotedPer10k: number;
  /** Young generation semi-space capacity at the end of the window (bytes). */
  semiSpace: number;
}

/** Summarises `events` (in order) that fell inside a window; needs at least two. */
export function summarize(events: readonly GcEvent[]): GcSummary | null {
  if (events.length < 2) return null;
  let allocated = 0;
  for (let i = 1; i < events.length; i++) allocated += events[i].allocated;
  const messages = events[events.length - 1].mark - events[0].mark;
  const pauses = new Map<string, number[]>();
  let incrementalSteps = 0;
  let incrementalMs = 0;
  const reasons: Record<string, number> = {};
  let copied = 0;
  let promoted = 0;
  let scavenges = 0;
  // The first event only opens the window: its allocation and pause happened before it.
  for (const e of events.slice(1)) {
    const list = pauses.get(e.kind) ?? [];
    list.push(e.pause);
    pauses.set(e.kind, list);
    incrementalSteps += e.incrementalSteps;
    incrementalMs += e.incrementalMs;
    promoted += e.promoted;
    if (e.kind === "s") {
      scavenges++;
      copied += e.survived + e.promoted;
    }
    const why = `${e.kind}: ${e.reason}`;
    reasons[why] = (reasons[why] ?? 0) + 1;
  }
  const byKind: Record<string, PauseSummary> = {};
  for (const [kind, list] of pauses) {
    list.sort((a, b) => a - b);
    byKind[kind] = {
      count: list.length,
      totalMs: list.reduce((a, b) => a + b, 0),
      p50: percentile(list, 50),
      p99: percentile(list, 99),
      max: list[list.length - 1],
    };
  }
  return {
    collections: events.length - 1,
    allocatedBytes: allocated,
    messages,
    bytesPerMessage: messages > 0 ? allocated / messages : NaN,
    byKind,
    incrementalSteps,
    incrementalMs,
    reasons,
    copiedPerScavenge: scavenges === 0 ? NaN : copied / scavenges,
    promotedPer10k: messages > 0 ? (promoted * 10_000) / messages : NaN,
    semiSpace: events[events.length - 1].newSpaceCapacity,
  };
}

/**
 * Collects GC lines from a child's output while it runs, fed chunk by chunk (`push`) or from a
 * whole stream (`read`); `mark()` supplies the counter stamped on each event as it is read.
 */
export class GcCollector {
  readonly events: GcEvent[] = [];
  /** The last 20 lines that were not GC records, for error messages. */
  readonly tail: string[] = [];
  #pending = "";
  readonly #decoder = new TextDecoder();

  constructor(private readonly mark: () => number = () => 0) {}

  /** Feeds a chunk of the child's output. */
  push(chunk: Uint8Array): void {
    this.#pending += this.#decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = this.#pending.indexOf("\n")) >= 0) {
      const line = this.#pending.slice(0, nl);
      this.#pending = this.#pending.slice(nl + 1);
      const e = parseGcLine(line, this.mark());
      if (e !== null) this.events.push(e);
      else if (line.trim() !== "" && !line.includes("Memory pool")) {
        this.tail.push(line);
        if (this.tail.length > 20) this.tail.shift();
      }
    }
  }

  /** Feeds all of `stream`; resolves when it ends (or the child goes away). */
  async read(stream: ReadableStream<Uint8Array>): Promise<void> {
    try {
      for await (const chunk of stream) this.push(chunk);
    } catch {
      // The child went away.
    }
  }

  /** Collections seen so far; two counts delimit a window. */
  count(): number {
    return this.events.length;
  }

  /** Events read since index `from`. */
  since(from: number): GcEvent[] {
    return this.events.slice(from);
  }
}
