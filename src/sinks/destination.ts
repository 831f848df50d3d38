/**
 * What the queue (queue.ts) and a destination (BigQuery, a JSON-lines file) say to each other:
 * the answer to one send, the failures a send can throw, and the queue's options.
 */
import type { TopicRow } from "./row.ts";

/** What finally happened to a row; the adapter acknowledges a message on any but "dropped". */
export type Outcome = "sent" | "rejected" | "spilled" | "dropped";

/** A row the destination refused for good. */
export interface RowRejection {
  /** Index into the rows of that send. */
  readonly index: number;
  readonly reason: string;
}

/** The answer to one send: rows not listed were accepted. */
export interface SendResult {
  readonly rejected: readonly RowRejection[];
  /** Rows to send again (the destination did not take them this time, through no fault of theirs). */
  readonly retry: readonly number[];
}

/** The whole request failed and may succeed later (5xx, 429, timeout, connection refused). */
export class TransientError extends Error {
  override name = "TransientError";
}

/** The whole request was refused and would be again (400, 403, ...): every row is rejected. */
export class PermanentError extends Error {
  override name = "PermanentError";
}

/**
 * The request was refused for its size (BigQuery: HTTP 400 "Request payload size exceeds the
 * limit", or 413): the queue splits the batch and sends the halves; a single row is rejected.
 */
export class TooLargeError extends Error {
  override name = "TooLargeError";
}

/** Where rows go. Implementations only send; batching, retries and overflow are the queue's. */
export interface Destination {
  readonly name: string;
  /** Connects, creates or checks the table. Throws (with a message for the operator) when it cannot work. */
  start(): Promise<void>;
  /** Sends one batch. Throws TransientError or PermanentError when the request fails as a whole. */
  send(rows: readonly TopicRow[]): Promise<SendResult>;
  close(): Promise<void>;
}

export interface QueueOptions {
  /** Rows per send. */
  batchSize: number;
  /** Bytes per send (rows as JSON, see rowBytes); 0 = no bound. A single larger row is rejected. */
  batchMaxBytes: number;
  /** A partial batch is sent once its oldest row has waited about this long. */
  flushIntervalMs: number;
  /** Rows waiting in memory, not counting rows in flight. */
  maxQueue: number;
  /** Bytes those rows hold (payloads, topics, overhead); past either bound the overflow policy applies. */
  maxQueueBytes: number;
  overflow: "drop-oldest" | "spill";
  spillDir: string;
  spillMaxBytes: number;
  /** Sends in flight at once. */
  concurrency: number;
  retryInitialMs: number;
  retryMaxMs: number;
  requestTimeoutMs: number;
  include: readonly string[];
  exclude: readonly string[];
  /** Written into every row; also the prefix of row ids. */
  nodeId: string;
}

/**
 * The bytes a row adds to an insertAll request: `{"insertId":"<id>","json":<row>},` in UTF-8.
 * Counted once per row, when it is taken for a batch.
 */
export function rowBytes(row: TopicRow): number {
  return utf8Length(JSON.stringify(row)) + utf8Length(row.id) + 24;
}

/** UTF-8 length of `s` without encoding it. */
export function utf8Length(s: string): number {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) {
      n += 1;
    } else if (c >= 0xd800 && c <= 0xdbff) {
      // A surrogate pair: 4 bytes for its 2 units.
      n += 2;
      i++;
    } else {
      n += 2;
    }
  }
  return n;
}
