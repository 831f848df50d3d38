/**
 * The state that outlives a network connection: outgoing QoS 1/2 messages in
 * flight and queued, incoming QoS 2 packet ids not yet released, the will and
 * the expiry. Subscriptions are owned by the router, keyed by this session.
 */
import type { Message } from "../protocol/message.ts";
import type { Metrics } from "../ops/metrics.ts";
import type { Subscriber, Subscription } from "../router/types.ts";
import type { SessionState, StoredSubscription } from "../store/types.ts";
import type { Journal } from "./journal.ts";
import type { RetainedStream } from "./retained_stream.ts";
import { NEVER_EXPIRES, type SessionLimits, type SessionLink, type Will } from "./session_types.ts";
import { restoreWill, toMessage } from "./stored.ts";

/**
 * Most retained messages one pump hands over (or skips) before yielding: the
 * rest follow when the write completes, so a large stream is interleaved with
 * every other client's traffic.
 */
const RETAINED_BATCH = 1024;

const NO_IDS: readonly string[] = Object.freeze([]);

interface Outgoing {
  msg: Message;
  packetId: number;
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
  /** Journal sequence number (0 when the session is not journaled). */
  seq: number;
}

/**
 * One client's session. Its state changes only through these methods, so a
 * durable store sees every change: when `journal` is set and the session is
 * persistent (Session Expiry > 0), each change is also pushed to it.
 */
export class Session implements Subscriber {
  link: SessionLink | null = null;
  /** Session Expiry Interval in seconds; NEVER_EXPIRES for never. */
  private expiry = 0;
  private willValue: Will | null = null;
  /** When a detached session's will is due (ms since epoch), or 0. */
  willAt = 0;
  /** When a detached session ends (ms since epoch), or 0 while attached. */
  expiresAt = 0;
  /** Incoming QoS 2 packet ids received but not yet released by PUBREL. */
  private incomingQos2: Set<number> | null = null;
  /**
   * Who the session belongs to: the username or certificate identity it was
   * created by, null when anonymous. Only that identity may resume it.
   */
  owner: string | null = null;
  /** Where changes go when the store is durable; null otherwise. */
  journal: Journal | null = null;
  /**
   * Store the session while it has a will even when it ends with its
   * connection (Session Expiry 0): in a cluster the node may die, and a
   * survivor publishes the wills it finds in the store.
   */
  storeWill = false;

  private inflight: Map<number, Outgoing> | null = null;
  private queue: Queued[] = [];
  private queueHead = 0;
  /** Payload bytes of the queued messages. */
  private queuedBytes = 0;
  private nextPid = 1;
  private nextSeq = 1;
  /** Retained messages of new subscriptions still to send, oldest subscription first. */
  private streams: RetainedStream[] | null = null;
  /** A pump is scheduled for a stream that skipped a batch without writing. */
  private resumeArmed = false;
  /**
   * Ids of the QoS 1/2 messages with a cluster id (`Message.id`) the client
   * acknowledged last, oldest first: the last `dedupeWindow` of them count
   * (the array grows to twice that, then drops the older half, so recording
   * costs no copy per message). Null until the first one: a session on a
   * single node never has any.
   */
  private recent: string[] | null = null;

  constructor(
    readonly clientId: string,
    private readonly limits: SessionLimits,
    private readonly metrics: Metrics,
    private readonly now: () => number = Date.now,
  ) {}

  /** Username the session runs as (for authorization); the owner. */
  get username(): string | undefined {
    return this.owner ?? undefined;
  }

  get expiryInterval(): number {
    return this.expiry;
  }

  get will(): Will | null {
    return this.willValue;
  }

  /** True when changes must reach the store: journaled and outliving its connection. */
  private get journaled(): boolean {
    return this.journal !== null && this.expiry !== 0;
  }

  /** When the session ends if it stays without a connection from `now` on (ms since epoch). */
  expiryFrom(now: number): number {
    return this.expiry === NEVER_EXPIRES ? Infinity : now + this.expiry * 1000;
  }

  /** Sets the Session Expiry Interval (CONNECT, or DISCONNECT's update). */
  setExpiry(seconds: number): void {
    this.expiry = seconds;
  }

  /** Sets or clears the will (CONNECT; cleared by a normal DISCONNECT or once published). */
  setWill(will: Will | null): void {
    this.willValue = will;
    if (will === null) this.willAt = 0;
  }

  /**
   * An incoming QoS 2 PUBLISH with `pid`: false when it is a resend of one
   * already received (acknowledge again, do not route twice).
   */
  receiveQos2(pid: number): boolean {
    const set = this.incomingQos2 ??= new Set();
    if (set.has(pid)) return false;
    set.add(pid);
    if (this.journaled) {
      this.journal!.push({ type: "qos2-add", clientId: this.clientId, packetId: pid });
    }
    return true;
  }

  /** True when an incoming QoS 2 message with `pid` was received and not yet released. */
  knowsQos2(pid: number): boolean {
    return this.incomingQos2 !== null && this.incomingQos2.has(pid);
  }

  /** Number of incoming QoS 2 messages not yet released. */
  get incomingQos2Count(): number {
    return this.incomingQos2 === null ? 0 : this.incomingQos2.size;
  }

  /** PUBREL for `pid`: true when it was known. */
  releaseQos2(pid: number): boolean {
    const known = this.incomingQos2?.delete(pid) ?? false;
    if (known && this.journaled) {
      this.journal!.push({ type: "qos2-delete", clientId: this.clientId, packetId: pid });
    }
    return known;
  }

  /**
   * What a reply confirming the session's latest change must wait for (the
   * store write, with `sync = "ack-after-write"`), or null to send it now:
   * PUBCOMP (the client may then reuse the packet id, which a restart still
   * holding it would take for a resend and drop), SUBACK and UNSUBACK.
   */
  get written(): Promise<void> | null {
    return this.journal !== null && (this.expiry !== 0 || this.stored)
      ? this.journal.ackWait
      : null;
  }

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
    if (msg.expiresAt !== 0 && msg.expired(this.now())) {
      this.metrics.droppedExpired++;
      return;
    }
    const link = this.link;
    if (qos === 0) {
      // QoS 0 is not queued: offline or slow receivers miss it, which is what QoS 0 promises.
      if (link === null || link.congested) this.metrics.droppedQos0++;
      else if (link.sendPublish(msg, 0, retain, false, 0, subIds)) this.metrics.sentByQos[0]++;
      return;
    }
    if (
      link !== null && this.queueHead === this.queue.length &&
      this.inflightCount < link.sendWindow && !link.congested
    ) {
      this.send(link, msg, qos, retain, subIds);
    } else {
      this.enqueue({ msg, qos, retain, subIds, seq: 0 });
    }
  }

  /** Sends with a new packet id and keeps it in flight; false when the link refused it. */
  private send(
    link: SessionLink,
    msg: Message,
    qos: 1 | 2,
    retain: boolean,
    subIds: readonly number[] | null,
  ): boolean {
    const pid = this.allocatePacketId();
    if (!link.sendPublish(msg, qos, retain, false, pid, subIds)) return false;
    // Kept for a resend until acknowledged, so it must not point into a read buffer.
    const e: Outgoing = { msg: msg.own(), packetId: pid, qos, retain, subIds, released: false };
    (this.inflight ??= new Map()).set(pid, e);
    if (this.journaled) this.journal!.push({ type: "inflight", clientId: this.clientId, item: e });
    this.metrics.sentByQos[qos]++;
    return true;
  }

  /**
   * `pid` is no longer in flight; `id` is the cluster id of a message its
   * client acknowledged ("" when it has none or was dropped unacknowledged):
   * a shared store adds it to the session's recent ids in the same write, so
   * a node that adopts the session after this one died knows it was
   * completed (its copy may still wait in this node's inbox, not yet XACKed).
   */
  private inflightDone(pid: number, id = ""): void {
    this.inflight!.delete(pid);
    if (this.journaled) {
      this.journal!.push({
        type: "inflight-delete",
        clientId: this.clientId,
        packetId: pid,
        id: this.limits.dedupeWindow === 0 ? "" : id,
      });
    }
  }

  /** The client acknowledged `e`: its id is remembered so another copy of it is dropped. */
  private completed(e: Outgoing): void {
    const id = e.msg.id;
    if (id === "") return;
    const max = this.limits.dedupeWindow;
    if (max === 0) return;
    const recent = this.recent ??= [];
    recent.push(id);
    if (recent.length >= 2 * max) this.recent = recent.slice(recent.length - max);
  }

  /**
   * Ids of the messages the session holds (queued, in flight) or completed
   * lately: a copy of one of them that arrives from another node (a session
   * moving, a dead node's inbox) is a duplicate. Built when such copies are
   * handed over, never per message.
   */
  knownIds(): Set<string> {
    const known = new Set<string>();
    for (const id of this.recentIds()) known.add(id);
    if (this.inflight !== null) {
      for (const e of this.inflight.values()) if (e.msg.id !== "") known.add(e.msg.id);
    }
    const q = this.queue;
    for (let i = this.queueHead; i < q.length; i++) if (q[i].msg.id !== "") known.add(q[i].msg.id);
    return known;
  }

  /**
   * Delivers a copy that may already be here (`known`, from `knownIds`):
   * false, and nothing delivered, when its id is known; else it is delivered
   * and its id added to `known`. QoS 0 and messages without an id always go.
   */
  deliverOnce(
    msg: Message,
    qos: 0 | 1 | 2,
    retain: boolean,
    subIds: readonly number[] | null,
    known: Set<string>,
  ): boolean {
    const id = msg.id;
    if (id !== "" && qos !== 0) {
      if (known.has(id)) {
        this.metrics.duplicatesDropped++;
        return false;
      }
      known.add(id);
    }
    this.deliver(msg, qos, retain, subIds);
    return true;
  }

  /** The remembered ids of completed messages, oldest first (at most `dedupeWindow`). */
  private recentIds(): readonly string[] {
    const r = this.recent;
    if (r === null) return NO_IDS;
    const max = this.limits.dedupeWindow;
    return r.length > max ? r.slice(r.length - max) : r.slice();
  }

  private enqueue(q: Queued): void {
    const limits = this.limits;
    const size = q.msg.payload.length;
    if (limits.maxQueued === 0) {
      this.metrics.droppedQueueFull++;
      return;
    }
    while (
      this.queuedCount >= limits.maxQueued ||
      (this.queuedCount > 0 && this.queuedBytes + size > limits.maxQueuedBytes)
    ) {
      this.metrics.droppedQueueFull++;
      if (limits.dropPolicy === "newest") return;
      const dropped = this.queue[this.queueHead];
      this.queue[this.queueHead++] = undefined as unknown as Queued;
      this.dequeued(dropped);
    }
    this.queuedBytes += size;
    q.msg.own();
    if (this.journaled) {
      q.seq = this.nextSeq++;
      this.journal!.push({ type: "enqueue", clientId: this.clientId, seq: q.seq, item: q });
    }
    this.queue.push(q);
  }

  private dequeued(q: Queued): void {
    this.queuedBytes -= q.msg.payload.length;
    if (q.seq !== 0 && this.journaled) {
      this.journal!.push({ type: "dequeue", clientId: this.clientId, seq: q.seq });
    }
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
      this.dequeued(next);
      if (next.msg.expiresAt !== 0 && next.msg.expired(this.now())) {
        this.metrics.droppedExpired++;
        continue;
      }
      this.send(link, next.msg, next.qos, next.retain, next.subIds);
    }
    if (this.queueHead === q.length) {
      // Every drain pumps: an empty queue is kept, not replaced by a new empty array.
      if (q.length !== 0) {
        this.queue = [];
        this.queueHead = 0;
      }
      if (this.streams !== null) this.pumpRetained(link);
    } else if (this.queueHead > 1024 && this.queueHead * 2 > q.length) {
      this.queue = q.slice(this.queueHead);
      this.queueHead = 0;
    }
  }

  /** True when `pump` has something to send once there is room. */
  private get waiting(): boolean {
    return this.queueHead < this.queue.length || this.streams !== null;
  }

  /**
   * Starts sending the retained messages of a new subscription, after any
   * earlier stream of the session; a stream of the same subscription (it was
   * subscribed again) is replaced, since the new one sends them all anew.
   */
  streamRetained(stream: RetainedStream): void {
    this.stopRetained(stream.sub.key);
    (this.streams ??= []).push(stream);
    this.pump();
  }

  /** Stops the retained stream of subscription `key` (unsubscribed, replaced, revoked). */
  stopRetained(key: string): void {
    const streams = this.streams;
    if (streams === null) return;
    const i = streams.findIndex((s) => s.sub.key === key);
    if (i < 0) return;
    streams[i].cancel();
    streams.splice(i, 1);
    if (streams.length === 0) this.streams = null;
  }

  /**
   * Hands over retained messages while the write buffer is below half its
   * high-water mark and, for QoS 1/2, the in-flight window has room; at most
   * RETAINED_BATCH per call. The next drain (or PUBACK) calls again.
   */
  private pumpRetained(link: SessionLink): void {
    const streams = this.streams!;
    const now = this.now();
    let budget = RETAINED_BATCH;
    let wrote = false;
    while (streams.length > 0) {
      const s = streams[0];
      if (link.busy) return;
      if (budget <= 0) break;
      const msg = s.peek(now, budget);
      if (msg === undefined) break;
      if (msg === null) {
        streams.shift();
        continue;
      }
      budget--;
      const qos = msg.qos < s.sub.qos ? msg.qos : s.sub.qos;
      if (qos === 0) {
        s.take();
        if (link.sendPublish(msg, 0, true, false, 0, s.sub.idList)) {
          this.metrics.sentByQos[0]++;
          wrote = true;
        }
      } else {
        if (this.inflightCount >= link.sendWindow) return;
        s.take();
        if (this.send(link, msg, qos, true, s.sub.idList)) wrote = true;
      }
    }
    if (streams.length === 0) {
      this.streams = null;
    } else if (!wrote && !this.resumeArmed) {
      // Nothing was written, so no drain will call back: come back after other work.
      this.resumeArmed = true;
      setTimeout(() => {
        this.resumeArmed = false;
        this.pump();
      }, 0);
    }
  }

  /** PUBACK from the client. */
  onPuback(pid: number): void {
    const e = this.inflight?.get(pid);
    if (e === undefined || e.qos !== 1) return;
    this.inflightDone(pid, e.msg.id);
    this.completed(e);
    if (this.waiting) this.pump();
  }

  /** PUBREC from the client; returns false when the packet id is unknown. */
  onPubrec(pid: number, reasonCode: number): boolean {
    const e = this.inflight?.get(pid);
    if (e === undefined || e.qos !== 2) return false;
    if (reasonCode >= 0x80) {
      // The receiver refused the message: the flow ends here, no PUBREL.
      this.inflightDone(pid, e.msg.id);
      this.completed(e);
      if (this.waiting) this.pump();
      return true;
    }
    e.released = true;
    const link = this.link;
    if (this.journaled) {
      this.journal!.push({ type: "inflight", clientId: this.clientId, item: e });
      const written = this.journal!.ackWait;
      if (written !== null) {
        // PUBREL lets the client deliver and forget the packet id; a restart that did not know
        // PUBREC came would resend the PUBLISH, which the client takes for a new message.
        // (A failed write is logged by the journal; the flow goes on rather than stall.)
        const send = () => {
          if (this.link === link && this.inflight?.get(pid) === e) link?.sendPubrel(pid);
        };
        written.then(send, send);
        return true;
      }
    }
    link?.sendPubrel(pid);
    return true;
  }

  /** PUBCOMP from the client. */
  onPubcomp(pid: number): void {
    const e = this.inflight?.get(pid);
    if (e === undefined || !e.released) return;
    this.inflightDone(pid, e.msg.id);
    this.completed(e);
    if (this.waiting) this.pump();
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
      const now = this.now();
      for (const [pid, e] of this.inflight) {
        if (e.released) {
          link.sendPubrel(pid);
        } else if (e.msg.expired(now)) {
          this.inflightDone(pid);
          this.metrics.droppedExpired++;
        } else if (!link.sendPublish(e.msg, e.qos, e.retain, true, pid, e.subIds)) {
          this.inflightDone(pid);
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
    this.queuedBytes = 0;
    if (this.streams !== null) { for (const s of this.streams) s.cancel(); }
    this.streams = null;
    this.incomingQos2 = null;
    this.recent = null;
    this.setWill(null);
  }

  /**
   * Writes the whole session to the journal (connect, disconnect, subscription
   * changes). A stored session resumed with Session Expiry 0 ends with its
   * connection, so it leaves the store now: after a crash, a stale copy would
   * come back with messages the client has since received.
   */
  persist(subscriptions: Iterable<Subscription>): void {
    if (this.journal === null) return;
    // With a cluster store, a session without expiry is stored while it has a will, so a
    // survivor can publish the will when this node dies.
    if (this.expiry !== 0 || (this.storeWill && this.willValue !== null)) {
      this.journal.push({ type: "session", state: this.toState(subscriptions) });
      this.stored = true;
    } else if (this.stored) {
      this.journal.push({ type: "session-delete", clientId: this.clientId });
      this.stored = false;
    }
  }

  /** True while the store holds (or is about to hold) this session. */
  private stored = false;

  /** The session as a store keeps it. `subscriptions` come from the router, which owns them. */
  toState(subscriptions: Iterable<Subscription>): SessionState {
    const subs: StoredSubscription[] = [];
    for (const s of subscriptions) {
      subs.push({
        key: s.key,
        qos: s.qos,
        noLocal: s.noLocal,
        retainAsPublished: s.retainAsPublished,
        retainHandling: s.retainHandling,
        subscriptionId: s.subscriptionId,
      });
    }
    const queue: (Queued & { seq: number })[] = [];
    for (let i = this.queueHead; i < this.queue.length; i++) {
      const q = this.queue[i];
      if (q.seq === 0) q.seq = this.nextSeq++;
      queue.push(q);
    }
    const w = this.willValue;
    return {
      clientId: this.clientId,
      owner: this.owner,
      expiryInterval: this.expiry,
      expiresAt: this.expiresAt,
      will: w === null ? null : { msg: w.msg.own(), delay: w.delay, expiry: w.expiry },
      willAt: this.willAt,
      subscriptions: subs,
      queue,
      inflight: this.inflight === null ? [] : [...this.inflight.values()],
      incomingQos2: this.incomingQos2 === null ? [] : [...this.incomingQos2],
      recent: this.recentIds(),
    };
  }

  /** Restores what `toState` saved (subscriptions are restored by the caller, into the router). */
  restore(state: SessionState): void {
    this.stored = true;
    this.owner = state.owner;
    this.expiry = state.expiryInterval;
    this.expiresAt = state.expiresAt;
    this.willValue = state.will === null ? null : restoreWill(state.will);
    this.willAt = state.willAt;
    this.queue = state.queue.map((q) => ({
      msg: toMessage(q.msg),
      qos: q.qos,
      retain: q.retain,
      subIds: q.subIds,
      seq: q.seq,
    }));
    this.queueHead = 0;
    this.queuedBytes = 0;
    for (const q of this.queue) this.queuedBytes += q.msg.payload.length;
    for (const q of state.queue) if (q.seq >= this.nextSeq) this.nextSeq = q.seq + 1;
    this.inflight = null;
    for (const f of state.inflight) {
      (this.inflight ??= new Map()).set(f.packetId, {
        msg: toMessage(f.msg),
        packetId: f.packetId,
        qos: f.qos,
        retain: f.retain,
        subIds: f.subIds,
        released: f.released,
      });
      if (f.packetId >= this.nextPid) this.nextPid = f.packetId === 65535 ? 1 : f.packetId + 1;
    }
    this.incomingQos2 = state.incomingQos2.length === 0 ? null : new Set(state.incomingQos2);
    const max = this.limits.dedupeWindow;
    const recent = state.recent ?? NO_IDS;
    this.recent = recent.length === 0 || max === 0 ? null : recent.slice(-max);
  }
}
