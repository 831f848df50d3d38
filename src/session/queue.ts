/**
 * A session's queue: the QoS 1/2 messages waiting behind its in-flight window (or for its client
 * to come back), what they count against the session's bounds and all sessions' together
 * (limits.max_queued_bytes_total, which counts the in-flight windows too: `holdInflight`), and
 * their journal entries. `SessionDelivery` (delivery.ts)
 * extends it with the in-flight window and what moves messages on; a base class, not a field, so
 * an idle session holds no object more.
 */
import type { Message } from "../protocol/message.ts";
import type { Metrics } from "../ops/metrics.ts";
import type { SessionState } from "../store/types.ts";
import type { Journal } from "./journal.ts";
import type { SessionLimits } from "./session_types.ts";
import { toMessage } from "./stored.ts";

export interface Queued {
  msg: Message;
  qos: 1 | 2;
  retain: boolean;
  subIds: readonly number[] | null;
  /** Journal sequence number (0 when the session is not journaled). */
  seq: number;
}

/**
 * The queue of every session with nothing queued: an idle session holds no array of its own
 * (32 B each). Frozen, so a write that forgot to replace it throws instead of reaching every
 * session.
 */
export const EMPTY_QUEUE = Object.freeze([]) as unknown as Queued[];

/**
 * What a queued message counts against limits.max_queued_bytes: its payload, topic and
 * properties. The payload alone let a message of 1 MiB of user properties count as nothing.
 */
export function queuedSize(msg: Message): number {
  return msg.payload.length + msg.topicBytes.length + (msg.props === null ? 0 : msg.props.length);
}

/**
 * What a queue entry costs beside the message it points to, for limits.max_queued_bytes_total:
 * the entry object (5 fields) and its slot in the queue's array. An in-flight entry counts the
 * same: its object has 6 fields, and its slot in the packet id table (kept at most half full)
 * a pointer, an id and an order number.
 */
const ENTRY_BYTES = 64;

/**
 * What a queued message costs beside its payload, topic and properties, counted once with them
 * (limits.max_queued_bytes_total): the Message, its payload's own ArrayBuffer, view and backing
 * store (`own`). Measured in the broker's heap at about 520 bytes; uncounted, a total of 16 MiB
 * of distinct 8-byte messages held 126 MiB of heap, 8 times the bound.
 */
const MESSAGE_BYTES = 512;

export abstract class SessionQueue {
  /** Where changes go when the store is durable; null otherwise. */
  journal: Journal | null = null;
  protected queue: Queued[] = EMPTY_QUEUE;
  protected queueHead = 0;
  /** Bytes of the queued messages (`queuedSize`). */
  private queuedBytes = 0;
  private nextSeq = 1;

  constructor(
    readonly clientId: string,
    protected readonly limits: SessionLimits,
    protected readonly metrics: Metrics,
    protected readonly now: () => number = Date.now,
  ) {}

  /** True when changes must reach the store: journaled and outliving its connection. */
  protected abstract get journaled(): boolean;

  get queuedCount(): number {
    return this.queue.length - this.queueHead;
  }

  protected enqueue(q: Queued): void {
    const limits = this.limits;
    const metrics = this.metrics;
    const msg = q.msg;
    const size = queuedSize(msg);
    if (limits.maxQueued === 0) {
      metrics.droppedQueueFull++;
      return;
    }
    while (
      this.queuedCount >= limits.maxQueued ||
      (this.queuedCount > 0 && this.queuedBytes + size > limits.maxQueuedBytes)
    ) {
      metrics.droppedQueueFull++;
      if (limits.dropPolicy === "newest") return;
      this.dropOldest();
    }
    if (
      metrics.queuedBytes + ENTRY_BYTES + MESSAGE_BYTES + size > limits.maxQueuedBytesTotal &&
      !this.roomInTotal(q)
    ) {
      metrics.droppedQueueTotal++;
      return;
    }
    this.counted(msg, size);
    msg.own();
    if (this.journaled) {
      q.seq = this.nextSeq++;
      this.journal!.identify(msg);
      this.journal!.push({ type: "enqueue", clientId: this.clientId, seq: q.seq, item: q });
    }
    if (this.queue === EMPTY_QUEUE) this.queue = [q];
    else this.queue.push(q);
  }

  /**
   * Whether `q` fits under limits.max_queued_bytes_total (checked only when the rough sum says it
   * may not): it does when another queue or in-flight window holds its message already, or once this session's own
   * oldest messages are dropped for it (drop policy "oldest"). A session never drops another's
   * messages: a client that stays away cannot push out what others wait for.
   */
  private roomInTotal(q: Queued): boolean {
    const limits = this.limits;
    const metrics = this.metrics;
    for (;;) {
      const cost = q.msg.isHeld ? ENTRY_BYTES : ENTRY_BYTES + MESSAGE_BYTES + queuedSize(q.msg);
      if (metrics.queuedBytes + cost <= limits.maxQueuedBytesTotal) return true;
      if (limits.dropPolicy === "newest" || this.queuedCount === 0) return false;
      metrics.droppedQueueTotal++;
      this.dropOldest();
    }
  }

  private dropOldest(): void {
    const dropped = this.queue[this.queueHead];
    this.queue[this.queueHead++] = undefined as unknown as Queued;
    this.dequeued(dropped);
    this.compact();
  }

  /**
   * Drops the expired messages at the head of the queue, up to the first that is not: the sweep
   * calls it on every session while limits.max_queued_bytes_total turns messages away, since an
   * offline session's expired messages left only when its client came back (`pump`) and held
   * the total meanwhile. The head alone: what one queue holds mostly expires in the order it
   * came, and a walk of every entry each sweep would cost as much as the queues are long.
   */
  dropExpired(now: number): void {
    const q = this.queue;
    let head = this.queueHead;
    if (head === q.length || !q[head].msg.expired(now)) return;
    do {
      const dropped = q[head];
      q[head++] = undefined as unknown as Queued;
      this.queueHead = head;
      this.dequeued(dropped);
      this.metrics.droppedExpired++;
    } while (head < q.length && q[head].msg.expired(now));
    this.compact();
  }

  /**
   * After the head moved outside `pump` (which does the same): an emptied queue goes back to
   * EMPTY_QUEUE, and a head past half the array (and 1024) is cut off. Without it an offline
   * session that drops its oldest for each new message grew an array of empty slots for ever:
   * 1M messages through a queue of 10 held +10.7 MiB.
   */
  protected compact(): void {
    const q = this.queue;
    if (this.queueHead === q.length) {
      if (q.length !== 0) {
        this.queue = EMPTY_QUEUE;
        this.queueHead = 0;
      }
    } else if (this.queueHead > 1024 && this.queueHead * 2 > q.length) {
      this.queue = q.slice(this.queueHead);
      this.queueHead = 0;
    }
  }

  /** `msg` joined the queue: it counts in the session's sums and all sessions' together. */
  private counted(msg: Message, size: number): void {
    this.queuedBytes += size;
    const metrics = this.metrics;
    metrics.queuedMessages++;
    metrics.queuedBytes += msg.hold() ? ENTRY_BYTES + MESSAGE_BYTES + size : ENTRY_BYTES;
  }

  /** `q` left the queue (sent, dropped or the session ended): it no longer counts. */
  private unqueue(q: Queued): void {
    const size = queuedSize(q.msg);
    this.queuedBytes -= size;
    const metrics = this.metrics;
    metrics.queuedMessages--;
    metrics.queuedBytes -= q.msg.letGo() ? ENTRY_BYTES + MESSAGE_BYTES + size : ENTRY_BYTES;
  }

  /**
   * Whether `msg` may enter the in-flight window under limits.max_queued_bytes_total, as a
   * queued message must fit (`enqueue`): a client that never acknowledges holds up to
   * max_inflight_messages of them, each up to max_packet_size, for as long as its session
   * lives. No oldest to drop for it: a message goes straight into flight only when the queue is
   * empty, and what is in flight was sent. The first comparison is the one that passes while
   * the total has room.
   */
  protected fitsInflight(msg: Message): boolean {
    const total = this.metrics.queuedBytes;
    const max = this.limits.maxQueuedBytesTotal;
    if (total + ENTRY_BYTES + MESSAGE_BYTES + queuedSize(msg) <= max) return true;
    // Another session's queue or window holds it already: only the entry is new.
    return msg.isHeld && total + ENTRY_BYTES <= max;
  }

  /**
   * An in-flight entry holds `msg`: it counts in all sessions' total once however many queues
   * and windows hold it. Every entry that goes is given to `releaseInflight` exactly once.
   */
  protected holdInflight(msg: Message): void {
    this.metrics.queuedBytes += msg.hold()
      ? ENTRY_BYTES + MESSAGE_BYTES + queuedSize(msg)
      : ENTRY_BYTES;
  }

  /** An in-flight entry holding `msg` went (acknowledged, dropped, the session ended or left). */
  protected releaseInflight(msg: Message): void {
    this.metrics.queuedBytes -= msg.letGo()
      ? ENTRY_BYTES + MESSAGE_BYTES + queuedSize(msg)
      : ENTRY_BYTES;
  }

  protected dequeued(q: Queued): void {
    this.unqueue(q);
    if (q.seq !== 0 && this.journaled) {
      this.journal!.push({ type: "dequeue", clientId: this.clientId, seq: q.seq });
    }
  }

  /** Takes every queued message out of the queue's counts and empties it (no journal entry). */
  protected releaseQueue(): void {
    const q = this.queue;
    for (let i = this.queueHead; i < q.length; i++) this.unqueue(q[i]);
    this.queue = EMPTY_QUEUE;
    this.queueHead = 0;
    this.queuedBytes = 0;
  }

  /** The queued messages as a store keeps them, each with its journal sequence number. */
  protected storedQueue(): SessionState["queue"] {
    const queue: (Queued & { seq: number })[] = [];
    const journal = this.journal;
    for (let i = this.queueHead; i < this.queue.length; i++) {
      const q = this.queue[i];
      if (q.seq === 0) q.seq = this.nextSeq++;
      // One restored from a store that kept no id (written before ids were given) gets one now.
      journal?.identify(q.msg);
      queue.push(q);
    }
    return queue;
  }

  /** Restores what `storedQueue` saved, in place of what the queue held. */
  protected restoreQueue(stored: SessionState["queue"]): void {
    this.releaseQueue();
    // Restored whatever the bounds say now: the store kept them, and nothing new is queued
    // while the total is over.
    this.queue = stored.map((q) => {
      const msg = toMessage(q.msg);
      this.counted(msg, queuedSize(msg));
      return { msg, qos: q.qos, retain: q.retain, subIds: q.subIds, seq: q.seq };
    });
    if (this.queue.length === 0) this.queue = EMPTY_QUEUE;
    for (const q of stored) if (q.seq >= this.nextSeq) this.nextSeq = q.seq + 1;
    this.trimToBounds();
  }

  /**
   * Brings a restored queue within the session's own bounds as they are now (they may have been
   * lowered since the store kept it): what is over goes as the drop policy says, as if each had
   * arrived at a full queue, and the store is told. Before, a restart kept every stored message
   * whatever max_queued_messages and max_queued_bytes said.
   */
  private trimToBounds(): void {
    const limits = this.limits;
    const over = () =>
      this.queuedCount > limits.maxQueued ||
      (this.queuedCount > 1 && this.queuedBytes > limits.maxQueuedBytes);
    while (over()) {
      this.metrics.droppedQueueFull++;
      if (limits.dropPolicy === "oldest") this.dropOldest();
      else {
        // "newest" refuses what comes last: the latest of the stored ones go.
        this.dequeued(this.queue.pop()!);
        this.compact();
      }
    }
  }
}

/**
 * Says, at most every 10 s, that messages were left out of queues and in-flight windows at
 * limits.max_queued_bytes_total, and how many since it last said so. Checked by the sweep, not
 * where it happens: drops come at the publish rate.
 */
export class TotalDropLog {
  /** `droppedQueueTotal` when the last line was written. */
  private seen = 0;
  private last = -Infinity;

  constructor(
    private readonly write: (message: string) => void,
    private readonly intervalMs = 10_000,
  ) {}

  check(metrics: Metrics, now = Date.now()): void {
    const drops = metrics.droppedQueueTotal;
    // `seen` moves only with a line written: a RateLimitedLog here moved it at every sweep, and
    // a line said how many were dropped in the last sweep interval alone (2400 of 50000).
    if (drops === this.seen || now - this.last < this.intervalMs) return;
    this.write(
      `${drops - this.seen} QoS 1/2 messages not queued or sent: session queues and ` +
        `in-flight windows hold ${metrics.queuedBytes} bytes, at limits.max_queued_bytes_total`,
    );
    this.seen = drops;
    this.last = now;
  }
}
