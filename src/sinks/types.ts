/**
 * The topic log seam: every message published on this node is offered to a
 * `Sink` (BigQuery, JSON lines, memory). A sink runs beside delivery, never in
 * its way: `offer` is synchronous, returns at once, never throws, and keeps its
 * own bounded queue; whatever it sends happens later, off the publish path.
 */
import type { Message } from "../protocol/message.ts";

/** Who published a message and how it entered the broker. */
export interface PublishInfo {
  /** Client id of the publisher; "" for messages the broker makes itself ($SYS). */
  readonly clientId: string;
  /** Username (or certificate identity) of the publisher, if any. */
  readonly username: string | undefined;
  /**
   * When the broker received it, ms since the epoch; 0 when not stamped (the
   * connection reuses one info object for all its messages, so the hot path
   * allocates nothing): the sink then takes the time of `offer`, which is the
   * same moment, since `offer` is called synchronously on receipt.
   */
  readonly receivedAt: number;
  /** A client's PUBLISH, a will, or a broker-made message ($SYS). */
  readonly kind: "client" | "will" | "sys";
}

/**
 * A destination for the topic log. Messages that arrive from other cluster
 * nodes are never offered: each node offers what was published on it, so the
 * log has every message once.
 */
export interface Sink {
  /** Short name for logs and metrics ("bigquery", "jsonl", "memory"). */
  readonly name: string;
  /** Opens connections, creates tables, replays spilled rows. */
  start(): Promise<void>;
  /**
   * Offers one message. Must return at once and never throw. `msg`'s payload
   * may point into a read buffer that is reused after this call: copy what you
   * keep (`msg.own()` copies once for every holder).
   */
  offer(msg: Message, info: PublishInfo): void;
  /** Flushes within `deadlineMs`, then stops; what is left is spilled or counted as dropped. */
  stop(deadlineMs: number): Promise<void>;
}
