/** What a session is configured with and writes to (the types around `Session`). */
import type { Message } from "../protocol/message.ts";

/** The connection side a session writes to. */
export interface SessionLink {
  readonly v5: boolean;
  /** How many QoS 1/2 messages may be unacknowledged at once. */
  readonly sendWindow: number;
  /** True while the connection's write buffer is above its high-water mark. */
  readonly congested: boolean;
  /**
   * True while the write buffer is above half its high-water mark: retained
   * streams wait for the next drain, leaving the rest to live messages.
   */
  readonly busy: boolean;
  /** Encodes and queues a PUBLISH; false if it could not be sent (too large, expired). */
  sendPublish(
    msg: Message,
    qos: 0 | 1 | 2,
    retain: boolean,
    dup: boolean,
    packetId: number,
    subIds: readonly number[] | null,
  ): boolean;
  sendPubrel(packetId: number): void;
  /** The same client id connected again (here or on another node): close with 0x8E. */
  takenOver(): void;
}

export interface SessionLimits {
  maxQueued: number;
  /**
   * Payload bytes the queue may hold (limits.max_queued_bytes); an empty
   * queue takes one message whatever its size.
   */
  maxQueuedBytes: number;
  /** Bytes all session queues may hold together (limits.max_queued_bytes_total). */
  maxQueuedBytesTotal: number;
  dropPolicy: "newest" | "oldest";
  /**
   * Ids of completed QoS 1/2 messages a session remembers (`[cluster]
   * dedupe_window`), so a copy arriving from another node is not delivered
   * again; 0 remembers none (queued and inflight ones are still recognised).
   */
  dedupeWindow: number;
}

/** A will, kept until the connection ends. */
export interface Will {
  msg: Message;
  /** Will Delay Interval in seconds. */
  delay: number;
  /** Message Expiry Interval in seconds, counted from publication; -1 for none. */
  expiry: number;
}

/** Session Expiry Interval that means "never". */
export const NEVER_EXPIRES = 0xffffffff;
