/**
 * What the operations side (metrics, $SYS, readiness) reads from a running broker. Everything is
 * read at scrape or $SYS time, never pushed from the hot path.
 */
import type { Metrics } from "./metrics.ts";

/** Counts that are cheaper to compute when asked than to keep up to date. */
export interface StateCounts {
  subscriptions: number;
  retained: number;
  sessionsOnline: number;
  sessionsOffline: number;
  /** Messages waiting in session queues (not yet in flight). */
  queued: number;
  /** Store operations not written yet (collecting, in flight or being retried). */
  storeUnwritten: number;
  /** Store writes that failed (each retry counts). */
  storeWriteFailures: number;
  /** Entries in this node's cluster inbox (0 on a single node). */
  inboxBacklog: number;
  /** Cluster nodes over `[cluster] max_inbox_backlog`. */
  nodesBehind: number;
  /** QoS 1/2 forwards whose acknowledgement was held for a node behind. */
  forwardsHeld: number;
  /** QoS 0 forwards dropped for a node behind. */
  forwardsDropped: number;
}

/** The broker as ops sees it. */
export interface BrokerStats {
  readonly metrics: Metrics;
  /** Counts of the broker's state right now. */
  counts(): StateCounts;
}

/** Why the broker is not ready to take clients (for /readyz); empty when ready. */
export interface ReadinessSource {
  readonly problems: readonly string[];
}
