/**
 * Loads the retained messages a durable store kept into the router's retained index at start,
 * within the retained limits as they are now. An operator may have lowered
 * limits.max_retained_messages or limits.max_retained_bytes since the messages were stored:
 * what no longer fits is not held in memory, and an unshared store (SQLite) is told to delete
 * it, or it would be read again at every start for good.
 *
 * Which ones are kept: the stored messages are taken in topic order (by UTF-16 code unit, as
 * JavaScript compares strings), and each that still fits is kept. Not by age: the stores do not
 * keep when a retained message was published (SQLite), and Redis keeps its topics in no order.
 * Topic order makes the kept set the same at every start, and, in a cluster, the same on every
 * node with the same limits.
 *
 * Memory: the store hands them over in that order a page at a time (`[storage]
 * retained_page_messages`, `retained_page_bytes`), and once nothing more can fit (the count is
 * reached, or too few bytes are left for the smallest message) no more are read: the store
 * counts the rest (`countRetained`, without their payloads) and one operation deletes them.
 * What is not kept between kept ones (expired, or too large for the bytes left) is deleted by
 * one operation per gap. So a start holds what it keeps and one page, whatever the store holds
 * (200,000 stored, 10 kept: a peak RSS of 570 MiB when every message was loaded at once, 88 MiB
 * with pages).
 *
 * A shared store (Redis, a cluster) is not told to delete anything: its retained messages are
 * the cluster's, and another node may have higher limits and serve them. A node with lower
 * limits only keeps fewer of them in its own memory (see README, "Sessions and retained
 * messages in Redis").
 */
import { getLogger } from "@logtape/logtape";
import type { Metrics } from "../ops/metrics.ts";
import type { RetainedStore } from "../router/retained.ts";
import type { RetainedPageSize, Store } from "../store/types.ts";
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
  /** How much the store hands over at once. */
  readonly page: RetainedPageSize;
}

/** What a restore did not keep, by why. */
export interface RetainedDrops {
  max_retained_messages: number;
  max_retained_bytes: number;
  expired: number;
}

/**
 * Sets the retained messages of `store` into `o.retained`, in topic order, as far as they fit;
 * counts, logs (one line) and, with a journal, deletes from the store the ones it does not keep.
 */
export async function restoreRetained(store: Store, o: RetainedRestore): Promise<RetainedDrops> {
  const drops: RetainedDrops = { max_retained_messages: 0, max_retained_bytes: 0, expired: 0 };
  let stored = 0;
  /** The last topic read, and the last one kept: what lies between is deleted. */
  let last: string | null = null;
  let kept: string | null = null;
  /** Whether a message not kept was read since `kept`. */
  let gap = false;
  const deleteGap = (before: string | null) => {
    if (gap) o.journal?.push({ type: "retain-delete-range", after: kept, before });
    gap = false;
  };
  let full = o.retained.limitReached();
  if (full === null) {
    // No page larger than what could still be kept: 10 kept out of 200,000 read 10 messages.
    const room = o.retained.room();
    const size = {
      messages: Math.max(1, Math.min(o.page.messages, room.messages)),
      bytes: Math.max(1, Math.min(o.page.bytes, room.bytes)),
    };
    pages: for await (const page of store.retainedPages(size)) {
      for (const m of page) {
        stored++;
        last = m.topic;
        const msg = toMessage(m);
        // Never delivered again, so it must not take the place of one that would be.
        if (msg.expired(o.now)) {
          drops.expired++;
          gap = true;
        } else if (o.retained.set(msg, m.version)) {
          deleteGap(m.topic);
          kept = m.topic;
        } else {
          drops[o.retained.limitPassed(msg) ?? "max_retained_messages"]++;
          gap = true;
        }
        // Leaving the loop ends the store's reading: the rest is counted, not read.
        if ((full = o.retained.limitReached()) !== null) break pages;
      }
    }
  }
  if (full !== null) {
    const rest = await store.countRetained(last, o.now);
    stored += rest.count;
    drops.expired += rest.expired;
    drops[full] += rest.count - rest.expired;
    if (rest.count > 0) gap = true;
  }
  deleteGap(null);
  count(o, drops, stored);
  return drops;
}

function count(o: RetainedRestore, drops: RetainedDrops, stored: number): void {
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
        stored,
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
}
