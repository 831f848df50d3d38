/**
 * Loads the retained messages a durable store kept into the router's retained index at start,
 * within the retained limits as they are now. An operator may have lowered
 * limits.max_retained_messages or limits.max_retained_bytes since the messages were stored:
 * what no longer fits is not held in memory, and an unshared store (SQLite) is told to delete
 * it, or it would be read again at every start for good.
 *
 * Which ones are kept: the stored messages are taken in topic order (by UTF-16 code unit, as
 * JavaScript compares strings), and each that still fits is kept. Not by age: the stores do not
 * keep when a retained message was published (SQLite), and the order in which they hand them
 * over is no order at all (a Redis SSCAN). Topic order makes the kept set the same at every
 * start, and, in a cluster, the same on every node with the same limits.
 *
 * A shared store (Redis, a cluster) is not told to delete anything: its retained messages are
 * the cluster's, and another node may have higher limits and serve them. A node with lower
 * limits only keeps fewer of them in its own memory (see README, "Sessions and retained
 * messages in Redis").
 */
import { getLogger } from "@logtape/logtape";
import type { Metrics } from "../ops/metrics.ts";
import type { RetainedLimit, RetainedStore } from "../router/retained.ts";
import type { StoredMessage } from "../store/types.ts";
import type { Journal } from "./journal.ts";
import { toMessage } from "./stored.ts";

const log = getLogger(["mcloudtt", "retained"]);

export interface RetainedRestore {
  /** The router's retained index, with its limits. */
  readonly retained: RetainedStore;
  readonly metrics: Metrics;
  /** Where the deletions of what is not kept go: an unshared store's journal; null keeps them. */
  readonly journal: Journal | null;
  /** Now, ms since the epoch: a message whose expiry passed meanwhile is not restored. */
  readonly now: number;
}

/** What a restore did not keep, by why. */
export interface RetainedDrops {
  max_retained_messages: number;
  max_retained_bytes: number;
  expired: number;
}

function byTopic(a: StoredMessage, b: StoredMessage): number {
  return a.topic < b.topic ? -1 : a.topic > b.topic ? 1 : 0;
}

/**
 * Sets `stored` (sorted here, in place) into `o.retained` as far as it fits; counts, logs (one
 * line) and, with a journal, deletes from the store the ones it does not keep.
 */
export function restoreRetained(stored: StoredMessage[], o: RetainedRestore): RetainedDrops {
  const drops: RetainedDrops = { max_retained_messages: 0, max_retained_bytes: 0, expired: 0 };
  stored.sort(byTopic);
  const drop = (m: StoredMessage, why: RetainedLimit | "expired") => {
    drops[why]++;
    o.journal?.push({ type: "retain-delete", topic: m.topic });
  };
  for (const m of stored) {
    const msg = toMessage(m);
    // Never delivered again, so it must not take the place of one that would be.
    if (msg.expired(o.now)) drop(m, "expired");
    else if (!o.retained.set(msg, m.version)) {
      drop(m, o.retained.limitPassed(msg) ?? "max_retained_messages");
    }
  }
  const metrics = o.metrics;
  metrics.retainedDroppedAtStartCount += drops.max_retained_messages;
  metrics.retainedDroppedAtStartBytes += drops.max_retained_bytes;
  metrics.retainedDroppedAtStartExpired += drops.expired;
  const over = drops.max_retained_messages + drops.max_retained_bytes;
  if (over > 0) {
    log.warn(
      "{over} of {stored} stored retained messages not restored, over the retained limits " +
        "(kept in topic order: {held} held): {count} over limits.max_retained_messages, {bytes} " +
        "over limits.max_retained_bytes; {what}",
      {
        over,
        stored: stored.length,
        held: o.retained.size,
        count: drops.max_retained_messages,
        bytes: drops.max_retained_bytes,
        what: o.journal !== null
          ? "deleted from the store"
          : "they stay in the shared store for nodes with higher limits",
      },
    );
  }
  if (drops.expired > 0) {
    log.info("{expired} stored retained messages expired while the broker was down: {what}", {
      expired: drops.expired,
      what: o.journal !== null ? "deleted from the store" : "not restored",
    });
  }
  return drops;
}
