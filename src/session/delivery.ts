/**
 * A session's messages on their way to its client: QoS 1/2 messages in
 * flight (with their packet ids) and queued behind the in-flight window, the
 * retained streams of new subscriptions, the acknowledgements (PUBACK,
 * PUBREC, PUBCOMP) that move them on, and the ids of messages completed
 * lately, so a copy arriving from another node is not delivered twice. The
 * rest of the session (identity, expiry, will, incoming QoS 2, what is
 * stored) is `Session`'s (session.ts), which extends this class rather than
 * holding a second object: memory per idle client counts.
 */
import { PacketIdTable } from "./packet_ids.ts";
import { EMPTY_QUEUE, type Queued, SessionQueue } from "./queue.ts";
import type { Message } from "../protocol/message.ts";
import type { ShareGroup } from "../router/trie.ts";
import type { Subscription } from "../router/types.ts";
import type { SessionState } from "../store/types.ts";
import type { RetainedStream } from "./retained_stream.ts";
import type { SessionLink } from "./session_types.ts";
import { toMessage } from "./stored.ts";

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

/** What of a stored session `SessionDelivery` writes and restores. */
type DeliveryState = Pick<SessionState, "queue" | "inflight" | "recent">;

/** `settleInflight`'s callback: one function, not a closure per call. */
function ownMessage(e: Outgoing): void {
  e.msg.own();
}

/**
 * Every change goes through these methods, so a durable store sees it: while
 * `journaled` says so, each one is also pushed to `journal`.
 */
export abstract class SessionDelivery extends SessionQueue {
  link: SessionLink | null = null;

  private inflight: PacketIdTable<Outgoing> | null = null;
  private nextPid = 1;
  /**
   * Packet ids of the messages in flight when the connection (re)attached, in the order they
   * were first sent: each is sent again (PUBLISH with DUP, or PUBREL) as the new connection's
   * Receive Maximum lets it [MQTT-3.3.4-9], before anything new. Null when none is waiting.
   */
  private resends: Set<number> | null = null;
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
  /**
   * The share group that picked this session for a queued or in-flight entry (see
   * `sharedLeftovers`), beside the entries rather than a field of each: every delivery would pay
   * for the field, and few sessions get shared messages. Weak: an entry dropped or acknowledged
   * takes its record with it. Null until the first shared delivery.
   */
  private sharedBy: WeakMap<object, ShareGroup> | null = null;

  get inflightCount(): number {
    return this.inflight === null ? 0 : this.inflight.size;
  }

  /**
   * Gives every message in flight buffers of its own: what `send` owned briefly must not keep
   * an arena chunk alive for longer than a sweep interval (called by the keep-alive sweep and
   * when the connection ends).
   */
  settleInflight(): void {
    // Every connection's sweep comes here: an empty table is not walked.
    if (this.inflight !== null && this.inflight.size !== 0) this.inflight.forEach(ownMessage);
  }

  deliver(
    msg: Message,
    qos: 0 | 1 | 2,
    retain: boolean,
    subIds: readonly number[] | null,
    group: ShareGroup | null = null,
  ): void {
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
      // In flight, it is held for as long as its client does not acknowledge, as a queued one is
      // until its client comes back: at limits.max_queued_bytes_total it is dropped for this
      // session as a queued one would be (the publisher is acknowledged all the same, as for
      // every drop of a subscriber's copy).
      if (!this.fitsInflight(msg)) {
        this.metrics.droppedQueueTotal++;
        return;
      }
      this.send(link, msg, qos, retain, subIds, group);
    } else {
      const q: Queued = { msg, qos, retain, subIds, seq: 0 };
      this.enqueue(q);
      if (group !== null) (this.sharedBy ??= new WeakMap()).set(q, group);
    }
  }

  /**
   * Sends with a new packet id and keeps it in flight, counted in limits.max_queued_bytes_total;
   * false when the link refused it. Not refused at that total here: `deliver` checks a new
   * message; one from the queue only moves (its queue entry went a moment ago); a retained
   * stream's is held by the retained store anyway, and a stream promises every one.
   */
  private send(
    link: SessionLink,
    msg: Message,
    qos: 1 | 2,
    retain: boolean,
    subIds: readonly number[] | null,
    group: ShareGroup | null,
  ): boolean {
    const pid = this.allocatePacketId();
    if (!link.sendPublish(msg, qos, retain, false, pid, subIds)) return false;
    // Kept for a resend until acknowledged, so it must not point into a read buffer. Most
    // are acknowledged within moments: briefly owned (in the arena) unless the journal keeps
    // it too; `settleInflight` owns what is still in flight at the next sweep.
    const m = this.journaled ? msg.own() : msg.ownBriefly();
    const e: Outgoing = { msg: m, packetId: pid, qos, retain, subIds, released: false };
    if (group !== null) (this.sharedBy ??= new WeakMap()).set(e, group);
    (this.inflight ??= new PacketIdTable()).set(pid, e);
    this.holdInflight(m);
    if (this.journaled) {
      this.journal!.identify(m);
      this.journal!.push({ type: "inflight", clientId: this.clientId, item: e });
    }
    this.metrics.sentByQos[qos]++;
    return true;
  }

  /**
   * `e` is no longer in flight, nor counted in limits.max_queued_bytes_total; `id` is the
   * cluster id of a message its client acknowledged ("" when it has none or was dropped
   * unacknowledged): a shared store adds it to the session's recent ids in the same write, so
   * a node that adopts the session after this one died knows it was completed (its copy may
   * still wait in this node's inbox, not yet XACKed).
   */
  private inflightDone(e: Outgoing, id = ""): void {
    const pid = e.packetId;
    this.inflight!.delete(pid);
    this.releaseInflight(e.msg);
    // Acknowledged before it was sent again (a client may acknowledge what it got before).
    if (this.resends !== null) this.resends.delete(pid);
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
  protected recentIds(): readonly string[] {
    const r = this.recent;
    if (r === null) return NO_IDS;
    const max = this.limits.dedupeWindow;
    return r.length > max ? r.slice(r.length - max) : r.slice();
  }

  private allocatePacketId(): number {
    const inflight = this.inflight;
    let pid = this.nextPid;
    // An id whose own slot is free: finding it later takes one step.
    while (inflight !== null && !inflight.fits(pid)) pid = pid === 65535 ? 1 : pid + 1;
    this.nextPid = pid === 65535 ? 1 : pid + 1;
    return pid;
  }

  /** Sends queued messages while the window and the connection allow. */
  pump(): void {
    const link = this.link;
    if (link === null) return;
    if (this.resends !== null && !this.resendMore(link)) return;
    const q = this.queue;
    while (this.queueHead < q.length && this.inflightCount < link.sendWindow && !link.congested) {
      const next = q[this.queueHead];
      q[this.queueHead++] = undefined as unknown as Queued;
      this.dequeued(next);
      if (next.msg.expiresAt !== 0 && next.msg.expired(this.now())) {
        this.metrics.droppedExpired++;
        continue;
      }
      const group = this.sharedBy === null ? null : this.sharedBy.get(next) ?? null;
      this.send(link, next.msg, next.qos, next.retain, next.subIds, group);
    }
    if (this.queueHead === q.length) {
      if (q.length !== 0) {
        this.queue = EMPTY_QUEUE;
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
    return this.queueHead < this.queue.length || this.streams !== null || this.resends !== null;
  }

  /**
   * Sends what `resend` left waiting while the window and the connection allow; true once
   * nothing is left. Messages in flight count against the window whether or not they were
   * sent again yet; released QoS 2 messages too, until PUBCOMP [MQTT-3.3.4-9].
   */
  private resendMore(link: SessionLink): boolean {
    // In insertion order, the order they were first sent. Nothing new is sent while some
    // wait (pump returns early), so no packet id in the set can have been given out again.
    const due = this.resends!;
    for (const pid of due) {
      if (this.inflightCount - due.size >= link.sendWindow || link.congested) return false;
      due.delete(pid);
      const e = this.inflight?.get(pid);
      if (e === undefined) continue;
      if (e.released) link.sendPubrel(pid);
      else if (!link.sendPublish(e.msg, e.qos, e.retain, true, pid, e.subIds)) {
        this.inflightDone(e);
      }
    }
    this.resends = null;
    return true;
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

  /**
   * `sub` replaced the subscription with its key while that one's retained messages were still
   * being sent, and asks for none of its own. What is left of them goes under the options now
   * in force (granted QoS, Subscription Identifier) [MQTT-3.8.4-3, MQTT-3.8.4-8], or not at
   * all when the client said it wants no retained messages (Retain Handling 2).
   */
  retargetRetained(sub: Subscription): void {
    const s = this.streams?.find((x) => x.sub.key === sub.key);
    if (s === undefined) return;
    if (sub.retainHandling === 2) this.stopRetained(sub.key);
    else s.sub = sub;
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
        if (this.send(link, msg, qos, true, s.sub.idList, null)) wrote = true;
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
    this.inflightDone(e, e.msg.id);
    this.completed(e);
    if (this.waiting) this.pump();
  }

  /** PUBREC from the client; returns false when the packet id is unknown. */
  onPubrec(pid: number, reasonCode: number): boolean {
    const e = this.inflight?.get(pid);
    if (e === undefined || e.qos !== 2) return false;
    if (reasonCode >= 0x80) {
      // The receiver refused the message: the flow ends here, no PUBREL.
      this.inflightDone(e, e.msg.id);
      this.completed(e);
      if (this.waiting) this.pump();
      return true;
    }
    e.released = true;
    const link = this.link;
    if (this.journaled) {
      // Restored from a store that kept no id, it may have none yet.
      this.journal!.identify(e.msg);
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
    this.inflightDone(e, e.msg.id);
    this.completed(e);
    if (this.waiting) this.pump();
  }

  /**
   * A connection (re)attached: resend what was unacknowledged, in order, with
   * DUP set (PUBREL for released QoS 2), as far as the client's Receive Maximum
   * allows (the rest as acknowledgements free room), then send what was queued.
   * A message in flight is sent again even when it has expired meanwhile: its
   * delivery began, and its packet id must be settled [MQTT-4.4.0-1]
   * [MQTT-4.3.3-7].
   */
  protected resend(): void {
    const inflight = this.inflight;
    if (inflight !== null && inflight.size !== 0) {
      const due = new Set<number>();
      for (const pid of inflight.keys()) due.add(pid);
      this.resends = due;
    } else {
      this.resends = null;
    }
    this.pump();
  }

  /**
   * The messages share groups gave this session that its client has not got: QoS 1 ones sent
   * and not acknowledged, and every queued one (never sent). The session is ending: they go to
   * another member of their group (a SHOULD of section 4.8.2). QoS 2 messages in flight stay
   * lost: one may have reached its client already, and going to another member would deliver
   * it twice [MQTT-4.8.2-5]. Null when there are none (almost every session).
   */
  sharedLeftovers(): [Message, ShareGroup][] | null {
    const by = this.sharedBy;
    if (by === null) return null;
    let out: [Message, ShareGroup][] | null = null;
    const inflight = this.inflight;
    if (inflight !== null && inflight.size !== 0) {
      for (const e of inflight.values()) {
        const g = e.qos === 1 ? by.get(e) : undefined;
        if (g !== undefined) (out ??= []).push([e.msg, g]);
      }
    }
    const q = this.queue;
    for (let i = this.queueHead; i < q.length; i++) {
      const g = by.get(q[i]);
      if (g !== undefined) (out ??= []).push([q[i].msg, g]);
    }
    return out;
  }

  /**
   * Drops every message held for delivery: the session ends (clean start, expiry, a connection
   * without Session Expiry closed, a takeover that starts anew) or leaves this node
   * (`forgetHere`).
   */
  protected dropDeliveries(): void {
    this.releaseWindow();
    this.inflight = null;
    this.resends = null;
    this.releaseQueue();
    if (this.streams !== null) { for (const s of this.streams) s.cancel(); }
    this.streams = null;
    this.recent = null;
    this.sharedBy = null;
  }

  /** Takes every message in flight out of limits.max_queued_bytes_total (the table goes next). */
  private releaseWindow(): void {
    const inflight = this.inflight;
    if (inflight === null || inflight.size === 0) return;
    for (const e of inflight.values()) this.releaseInflight(e.msg);
  }

  /** The messages in flight as a store keeps them. */
  protected storedInflight(): SessionState["inflight"] {
    // A store may keep them until its write: no arena chunk held that long.
    this.settleInflight();
    if (this.inflight === null) return [];
    const journal = this.journal;
    // One restored from a store that kept no id (written before ids were given) gets one now.
    if (journal !== null) { for (const e of this.inflight.values()) journal.identify(e.msg); }
    return [...this.inflight.values()];
  }

  /** Restores what `storedQueue`, `storedInflight` and `recentIds` saved. */
  protected restoreDeliveries(state: DeliveryState): void {
    this.restoreQueue(state.queue);
    this.releaseWindow();
    this.inflight = null;
    for (const f of state.inflight) {
      const table = this.inflight ??= new PacketIdTable();
      const msg = toMessage(f.msg);
      // Counted whatever the total says now, as restored queues are: the store kept them, and
      // nothing new enters a queue or window while the total is over.
      // A packet id stored twice: the later entry replaces the earlier, which lets go.
      const twice = table.get(f.packetId);
      if (twice !== undefined) this.releaseInflight(twice.msg);
      table.set(f.packetId, {
        msg,
        packetId: f.packetId,
        qos: f.qos,
        retain: f.retain,
        subIds: f.subIds,
        released: f.released,
      });
      this.holdInflight(msg);
      if (f.packetId >= this.nextPid) this.nextPid = f.packetId === 65535 ? 1 : f.packetId + 1;
    }
    const max = this.limits.dedupeWindow;
    const recent = state.recent ?? NO_IDS;
    this.recent = recent.length === 0 || max === 0 ? null : recent.slice(-max);
  }
}
