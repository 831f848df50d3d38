/** Small statistics helpers shared by workers and the report. */

import type { LatencySummary } from "./messages.ts";
import type { RunResult } from "./runner.ts";

/** Nearest-rank percentile (0 < p <= 100) of an ascending array; NaN when empty. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  // The epsilon keeps float noise (99.9 / 100 * 1000 = 999.0000000000001) from skipping a rank.
  const rank = Math.ceil((p * sorted.length) / 100 - 1e-9);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

/** Median of the finite values; NaN when there are none. */
export function median(values: readonly number[]): number {
  const finite = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (finite.length === 0) return NaN;
  const mid = finite.length >> 1;
  return finite.length % 2 === 1 ? finite[mid] : (finite[mid - 1] + finite[mid]) / 2;
}

/** Collects latency samples (microseconds) without allocating per sample. */
export class LatencyRecorder {
  #samples = new Float64Array(16_384);
  #count = 0;

  /** Adds one sample. */
  add(micros: number): void {
    if (this.#count === this.#samples.length) {
      const bigger = new Float64Array(this.#samples.length * 2);
      bigger.set(this.#samples);
      this.#samples = bigger;
    }
    this.#samples[this.#count++] = micros;
  }

  /** Percentiles of the samples so far, then forgets them. */
  takeSummary(): LatencySummary {
    const sorted = this.#samples.slice(0, this.#count).sort();
    this.#count = 0;
    return {
      count: sorted.length,
      p50: percentile(sorted, 50),
      p99: percentile(sorted, 99),
      p999: percentile(sorted, 99.9),
      max: sorted.length > 0 ? sorted[sorted.length - 1] : NaN,
    };
  }
}

/** Remembers which (publisher, sequence) pairs arrived, to count duplicates exactly. */
export class DuplicateTracker {
  #seen = new Map<number, Uint8Array>();
  duplicates = 0;

  /** Records one delivery; counts it as a duplicate when the pair was seen before. */
  record(publisher: number, seq: number): void {
    let bits = this.#seen.get(publisher);
    const byte = seq >>> 3;
    if (bits === undefined || byte >= bits.length) {
      let size = bits?.length ?? 4096;
      while (size <= byte) size *= 2;
      const bigger = new Uint8Array(size);
      if (bits) bigger.set(bits);
      bits = bigger;
      this.#seen.set(publisher, bits);
    }
    const mask = 1 << (seq & 7);
    if (bits[byte] & mask) this.duplicates++;
    else bits[byte] |= mask;
  }
}

/** `items` grouped by `keyOf`, in first-seen order. */
export function groupBy<T>(items: Iterable<T>, keyOf: (item: T) => string): Map<string, T[]> {
  const groups = new Map<string, T[]>();
  for (const item of items) {
    const key = keyOf(item);
    groups.set(key, [...(groups.get(key) ?? []), item]);
  }
  return groups;
}

/** What the rounds of one scenario/target add up to. */
export interface RoundsSummary {
  /** The runs that completed. */
  readonly ok: RunResult[];
  /** Median over `ok` of every metric any of them has. */
  readonly metrics: Record<string, number>;
  /** Failed rounds, "round n: why". */
  readonly failures: string[];
  /** The first 5 distinct client errors. */
  readonly errors: string[];
}

/** Medians, failures and client errors of the rounds `runs`. */
export function summarizeRounds(runs: readonly RunResult[]): RoundsSummary {
  const ok = runs.filter((r) => !r.failed);
  const metrics: Record<string, number> = {};
  for (const name of new Set(ok.flatMap((r) => Object.keys(r.metrics)))) {
    metrics[name] = median(ok.map((r) => r.metrics[name] ?? NaN));
  }
  return {
    ok,
    metrics,
    failures: runs.flatMap((r) => r.failed ? [`round ${r.round}: ${r.failed}`] : []),
    errors: [...new Set(runs.flatMap((r) => r.errors))].slice(0, 5),
  };
}
