/**
 * Reads V8's `--trace-gc-nvp` output (one `GC: {json}` line per collection)
 * into allocation and pause figures. Each line carries `allocated`: bytes of
 * objects allocated on the V8 heap since the previous collection (the off-heap
 * backing stores of large typed arrays are not in it). So the bytes allocated
 * between two collections a and b are the sum of `allocated` over the lines
 * after a up to b, which counting messages at the same two moments turns into
 * bytes per message, independent of CPU contention.
 */
import { percentile } from "./stats.ts";

/** One garbage collection as the trace reports it. */
export interface GcEvent {
  /** "s" scavenge, "ms" mark-compact, "mmc" minor mark-sweep, ... as V8 names them. */
  readonly kind: string;
  /** Why V8 collected ("allocation failure", "idle task", "external memory pressure", ...). */
  readonly reason: string;
  /** Main-thread pause in ms. */
  readonly pause: number;
  /** Heap bytes allocated since the previous collection. */
  readonly allocated: number;
  /** Incremental marking steps (mark-compact only): count and main-thread ms. */
  readonly incrementalSteps: number;
  readonly incrementalMs: number;
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

/** Parses one output line; null when it is not a `--trace-gc-nvp` record. */
export function parseGcLine(line: string, mark: number): GcEvent | null {
  const at = line.indexOf("GC: {");
  if (at < 0) return null;
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(line.slice(at + 4));
  } catch {
    return null;
  }
  const num = (k: string) => (typeof rec[k] === "number" ? rec[k] as number : 0);
  return {
    kind: typeof rec.gc === "string" ? rec.gc : "?",
    reason: typeof rec.reason === "string" ? rec.reason : "",
    pause: num("pause"),
    allocated: num("allocated"),
    incrementalSteps: num("incremental.steps_count"),
    incrementalMs: num("incremental.steps_took"),
    survived: num("new_space_survived"),
    promoted: num("promoted"),
    newSpaceCapacity: num("new_space_capacity"),
    endObjectSize: num("end_object_size"),
    mark,
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
 * Collects GC lines from a child's output stream while it runs; `mark()`
 * supplies the counter stamped on each event as it is read.
 */
export class GcCollector {
  readonly events: GcEvent[] = [];
  readonly tail: string[] = [];
  readonly done: Promise<void>;

  constructor(stream: ReadableStream<Uint8Array>, private readonly mark: () => number) {
    this.done = this.read(stream);
  }

  private async read(stream: ReadableStream<Uint8Array>): Promise<void> {
    let rest = "";
    try {
      for await (const text of stream.pipeThrough(new TextDecoderStream())) {
        rest += text;
        let nl: number;
        while ((nl = rest.indexOf("\n")) >= 0) {
          const line = rest.slice(0, nl);
          rest = rest.slice(nl + 1);
          const e = parseGcLine(line, this.mark());
          if (e !== null) this.events.push(e);
          else if (line.trim() !== "" && !line.includes("Memory pool")) {
            this.tail.push(line);
            if (this.tail.length > 20) this.tail.shift();
          }
        }
      }
    } catch {
      // The child went away.
    }
  }

  /** Events read since index `from`. */
  since(from: number): GcEvent[] {
    return this.events.slice(from);
  }
}
