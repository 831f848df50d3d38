/**
 * A row in the queue (queue.ts), from the publish call to its outcome, and what it costs in
 * memory while it waits.
 */
import type { Message } from "../protocol/message.ts";
import type { Outcome } from "./destination.ts";
import type { TopicRow } from "./row.ts";
import type { Segment } from "./spill.ts";
import type { PublishInfo } from "./types.ts";

export interface SegmentRef {
  readonly segment: Segment;
  left: number;
}

/** A queued row: kept as the message until it is sent (building the row is not the publisher's cost). */
export interface Entry {
  row: TopicRow | null;
  msg: Message | null;
  info: PublishInfo | null;
  /** Receive time, ms since the epoch. */
  at: number;
  id: string;
  done: ((o: Outcome) => void) | null;
  seg: SegmentRef | null;
  /** Size in a request (rowBytes), once measured; 0 before. */
  bytes: number;
  /** Memory it holds while queued (memoryBytes), counted in `memBytes`. */
  held: number;
}

/** Per queued row, besides payload and topic: the entry, the message or row object, ids. */
const ENTRY_OVERHEAD = 256;

/**
 * What a queued row holds in memory, estimated without building it: the payload's bytes and the
 * topic (a message), or the row's strings (UTF-16, a row from the adapter), plus fixed overhead.
 */
export function memoryBytes(e: Entry): number {
  if (e.msg !== null) return e.msg.payload.byteLength + 2 * e.msg.topic.length + ENTRY_OVERHEAD;
  const row = e.row!;
  return 2 * (row.payload.length + row.topic.length) + ENTRY_OVERHEAD;
}
