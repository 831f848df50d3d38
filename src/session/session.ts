/**
 * The state that outlives a network connection: outgoing QoS 1/2 messages in
 * flight and queued, incoming QoS 2 packet ids not yet released, the will and
 * the expiry. Subscriptions are owned by the router, keyed by this session.
 */
import type { Message } from "../protocol/message.ts";
import type { Metrics } from "../ops/metrics.ts";
import type { Subscriber } from "../router/types.ts";

/** The connection side a session writes to. */
export interface SessionLink {
  readonly v5: boolean;
  /** How many QoS 1/2 messages may be unacknowledged at once. */
  readonly sendWindow: number;
  /** True while the connection's write buffer is above its high-water mark. */
  readonly congested: boolean;
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
}

export interface SessionLimits {
  maxQueued: number;
  dropPolicy: "newest" | "oldest";
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

interface Outgoing {
  msg: Message;
  qos: 1 | 2;
  retain: boolean;
  subIds: readonly number[] | null;
  /** false: waiting for PUBACK/PUBREC; true: PUBREL sent, waiting for PUBCOMP. */
  released: boolean;
}

interface Queued {
  msg: Message;
  qos: 1 | 2;
  retain: boolean;
  subIds: readonly number[] | null;
}

export class Session implements Subscriber {
  link: SessionLink | null = null;
  /** Session Expiry Interval in seconds; NEVER_EXPIRES for never. */
  expiryInterval = 0;
  will: Will | null = null;
  /** When a detached session's will is due (ms since epoch), or 0. */
  willAt = 0;
  /** When a detached session ends (ms since epoch), or 0 while attached. */
  expiresAt = 0;
  /** Incoming QoS 2 packet ids received but not yet released by PUBREL. */
  incomingQos2: Set<number> | null = null;
  /** Username the session was authenticated as (for authorization). */
  username: string | undefined = undefined;

  private inflight: Map<number, Outgoing> | null = null;
  private queue: Queued[] = [];
  private queueHead = 0;
  private nextPid = 1;

  constructor(
    readonly clientId: string,
    private readonly limits: SessionLimits,
    private readonly metrics: Metrics,
  ) {}

  get online(): boolean {
    return this.link !== null;
  }

  get inflightCount(): number {
    return this.inflight === null ? 0 : this.inflight.size;
  }

  get queuedCount(): number {
    return this.queue.length - this.queueHead;
  }

  deliver(msg: Message, qos: 0 | 1 | 2, retain: boolean, subIds: readonly number[] | null): void {
    if (msg.expiresAt !== 0 && msg.expired(Date.now())) {
      this.metrics.droppedExpired++;
      return;
    }
    const link = this.link;
    if (qos === 0) {
      // QoS 0 is not queued: offline or slow receivers miss it, which is what QoS 0 promises.
      if (link === null || link.congested) this.metrics.droppedQos0++;
      else if (link.sendPublish(msg, 0, retain, false, 0, subIds)) this.metrics.publishSent++;
      return;
    }
    if (
      link !== null && this.queueHead === this.queue.length &&
      this.inflightCount < link.sendWindow && !link.congested
    ) {
      this.send(link, msg, qos, retain, subIds);
    } else {
      this.enqueue({ msg, qos, retain, subIds });
    }
  }

  private send(
    link: SessionLink,
    msg: Message,
    qos: 1 | 2,
    retain: boolean,
    subIds: readonly number[] | null,
  ): void {
    const pid = this.allocatePacketId();
    if (!link.sendPublish(msg, qos, retain, false, pid, subIds)) return;
    // Kept for a resend until acknowledged, so it must not point into a read buffer.
    (this.inflight ??= new Map()).set(pid, {
      msg: msg.own(),
      qos,
      retain,
      subIds,
      released: false,
    });
    this.metrics.publishSent++;
  }

  private enqueue(q: Queued): void {
    const limits = this.limits;
    if (this.queuedCount >= limits.maxQueued) {
      this.metrics.droppedQueueFull++;
      if (limits.dropPolicy === "newest" || limits.maxQueued === 0) return;
      this.queueHead++;
    }
    q.msg.own();
    this.queue.push(q);
  }

  private allocatePacketId(): number {
    const inflight = this.inflight;
    let pid = this.nextPid;
    while (inflight !== null && inflight.has(pid)) pid = pid === 65535 ? 1 : pid + 1;
    this.nextPid = pid === 65535 ? 1 : pid + 1;
    return pid;
  }

  /** Sends queued messages while the window and the connection allow. */
  pump(): void {
    const link = this.link;
    if (link === null) return;
    const q = this.queue;
    while (this.queueHead < q.length && this.inflightCount < link.sendWindow && !link.congested) {
      const next = q[this.queueHead];
      q[this.queueHead++] = undefined as unknown as Queued;
      if (next.msg.expiresAt !== 0 && next.msg.expired(Date.now())) {
        this.metrics.droppedExpired++;
        continue;
      }
      this.send(link, next.msg, next.qos, next.retain, next.subIds);
    }
    if (this.queueHead === q.length) {
      this.queue = [];
      this.queueHead = 0;
    } else if (this.queueHead > 1024 && this.queueHead * 2 > q.length) {
      this.queue = q.slice(this.queueHead);
      this.queueHead = 0;
    }
  }

  /** PUBACK from the client. */
  onPuback(pid: number): void {
    const e = this.inflight?.get(pid);
    if (e === undefined || e.qos !== 1) return;
    this.inflight!.delete(pid);
    if (this.queueHead < this.queue.length) this.pump();
  }

  /** PUBREC from the client; returns false when the packet id is unknown. */
  onPubrec(pid: number, reasonCode: number): boolean {
    const e = this.inflight?.get(pid);
    if (e === undefined || e.qos !== 2) return false;
    if (reasonCode >= 0x80) {
      // The receiver refused the message: the flow ends here, no PUBREL.
      this.inflight!.delete(pid);
      if (this.queueHead < this.queue.length) this.pump();
      return true;
    }
    e.released = true;
    this.link?.sendPubrel(pid);
    return true;
  }

  /** PUBCOMP from the client. */
  onPubcomp(pid: number): void {
    const e = this.inflight?.get(pid);
    if (e === undefined || !e.released) return;
    this.inflight!.delete(pid);
    if (this.queueHead < this.queue.length) this.pump();
  }

  /**
   * A connection (re)attached: resend what was unacknowledged, in order, with
   * DUP set (PUBREL for released QoS 2), then send what was queued.
   */
  attach(link: SessionLink): void {
    this.link = link;
    this.expiresAt = 0;
    this.willAt = 0;
    if (this.inflight !== null) {
      const now = Date.now();
      for (const [pid, e] of this.inflight) {
        if (e.released) {
          link.sendPubrel(pid);
        } else if (e.msg.expired(now)) {
          this.inflight.delete(pid);
          this.metrics.droppedExpired++;
        } else if (!link.sendPublish(e.msg, e.qos, e.retain, true, pid, e.subIds)) {
          this.inflight.delete(pid);
        }
      }
    }
    this.pump();
  }

  /** Drops every message held for delivery (the session ends). */
  clear(): void {
    this.inflight = null;
    this.queue = [];
    this.queueHead = 0;
    this.incomingQos2 = null;
    this.will = null;
  }
}
