/**
 * What a stopping queue (queue.ts) does with the rows it could not send before its deadline:
 * with a spill store they are written to disk ahead of everything already there, so the next
 * run sends them first; without one, or when the store is full, they are counted as dropped.
 * Either way each row's caller hears its outcome (the adapter acknowledges or not by it).
 */
import type { Logger } from "@logtape/logtape";
import type { Entry } from "./entry.ts";
import type { TopicRow } from "./row.ts";
import type { SpillStore } from "./spill.ts";
import type { SinkStats } from "./stats.ts";

/** Where the leftovers go and who hears of them. */
export interface Leftovers {
  readonly name: string;
  readonly spill: SpillStore | null;
  readonly spillDir: string;
  readonly spillMaxBytes: number;
  readonly stats: SinkStats;
  readonly log: Logger;
  /** The row an entry stands for (built now if it was still a message). */
  readonly materialize: (e: Entry) => TopicRow;
}

/** Spills or drops `fresh` (oldest first, none of them read back from the spill store). */
export async function settleLeftovers(fresh: readonly Entry[], o: Leftovers): Promise<void> {
  const { stats, log, spill } = o;
  if (spill === null) {
    if (fresh.length === 0) return;
    stats.dropped += fresh.length;
    for (const e of fresh) e.done?.("dropped");
    log.warn(
      `topic log (${o.name}): ${fresh.length} unsent rows dropped at stop ` +
        `(set overflow = "spill" to keep them)`,
    );
    return;
  }
  try {
    await spill.flushed();
    const kept = await spill.prepend(fresh.map(o.materialize));
    stats.spilled += kept;
    fresh.forEach((e, i) => e.done?.(i < kept ? "spilled" : "dropped"));
    if (kept > 0) log.info(`topic log (${o.name}): ${kept} unsent rows spilled to ${o.spillDir}`);
    if (kept < fresh.length) {
      stats.dropped += fresh.length - kept;
      log.warn(
        `topic log (${o.name}): ${fresh.length - kept} unsent rows dropped at stop: ` +
          `spill store full (${o.spillMaxBytes} bytes)`,
      );
    }
  } catch (e) {
    stats.dropped += fresh.length;
    for (const entry of fresh) entry.done?.("dropped");
    log.error(`topic log (${o.name}): ${fresh.length} rows lost at stop: ${e}`);
  }
  stats.spillBytes = spill.bytes;
}
