/**
 * The state that outlives a network connection: outgoing QoS 1/2 messages in
 * flight and queued (delivery.ts), incoming QoS 2 packet ids not yet
 * released, the will and the expiry, and how all of it is stored.
 * Subscriptions are owned by the router, keyed by this session.
 */
import { PacketIdTable } from "./packet_ids.ts";
import type { Subscriber, Subscription } from "../router/types.ts";
import type { SessionState, StoredSubscription } from "../store/types.ts";
import { SessionDelivery } from "./delivery.ts";
import { SUBSCRIPTION_OPS_AT } from "./journal.ts";
import { NEVER_EXPIRES, type SessionLink, type Will } from "./session_types.ts";
import { restoreWill } from "./stored.ts";

/**
 * One client's session. Its state changes only through these methods, so a
 * durable store sees every change: when `journal` is set and the session is
 * persistent (Session Expiry > 0), each change is also pushed to it. What is
 * on its way to the client is handled by `SessionDelivery` (delivery.ts).
 */
export class Session extends SessionDelivery implements Subscriber {
  /** Session Expiry Interval in seconds; NEVER_EXPIRES for never. */
  private expiry = 0;
  private willValue: Will | null = null;
  /** When a detached session's will is due (ms since epoch), or 0. */
  willAt = 0;
  /** When a detached session ends (ms since epoch), or 0 while attached. */
  expiresAt = 0;
  /** Incoming QoS 2 packet ids received but not yet released by PUBREL. */
  private incomingQos2: PacketIdTable<true> | null = null;
  /**
   * Who the session belongs to: the username or certificate identity it was
   * created by, null when anonymous. Only that identity may resume it.
   */
  owner: string | null = null;
  /**
   * Store the session while it has a will even when it ends with its
   * connection (Session Expiry 0): in a cluster the node may die, and a
   * survivor publishes the wills it finds in the store.
   */
  storeWill = false;

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
  protected get journaled(): boolean {
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
    const ids = this.incomingQos2 ??= new PacketIdTable();
    if (ids.has(pid)) return false;
    ids.set(pid, true);
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

  /**
   * A connection (re)attached: resend what was unacknowledged, in order, with
   * DUP set (PUBREL for released QoS 2), then send what was queued.
   */
  attach(link: SessionLink): void {
    // A takeover replaces one link with another: still one session online.
    if (this.link === null) this.metrics.sessionsOnline++;
    this.link = link;
    this.expiresAt = 0;
    this.willAt = 0;
    this.resend();
  }

  /** Drops every message held for delivery (the session ends). */
  clear(): void {
    this.dropDeliveries();
    this.incomingQos2 = null;
    this.setWill(null);
  }

  /**
   * Writes the whole session to the journal (connect, disconnect, takeover, the
   * first subscription change of a session not stored yet). A stored session resumed with Session Expiry 0 ends with its
   * connection, so it leaves the store now: after a crash, a stale copy would
   * come back with messages the client has since received.
   */
  persist(subscriptions: Iterable<Subscription>): void {
    if (this.journal === null) return;
    if (this.keptInStore) {
      this.journal.push({ type: "session", state: this.toState(subscriptions) });
      this.stored = true;
    } else if (this.stored) {
      this.journal.push({ type: "session-delete", clientId: this.clientId });
      this.stored = false;
    }
  }

  /** True while the store holds (or is about to hold) this session. */
  private stored = false;

  /**
   * True when `persist` writes the session (rather than deleting it): it outlives its
   * connection, or, with a cluster store, it has a will (a survivor publishes the wills it finds
   * in the store when this node dies).
   */
  private get keptInStore(): boolean {
    return this.expiry !== 0 || (this.storeWill && this.willValue !== null);
  }

  /**
   * SUBSCRIBE or UNSUBSCRIBE changed the session's subscriptions: `changed` holds each one
   * added or replaced, and the key of each one removed, in order. A session the store holds
   * gets one op per change, whatever else it holds (writing it whole made N one-at-a-time
   * subscriptions cost N²); one it does not hold yet, or that leaves the store, is written as
   * `persist` writes it.
   */
  persistSubscriptions(
    changed: readonly (Subscription | string)[],
    subscriptions: Iterable<Subscription>,
  ): void {
    if (this.journal === null) return;
    if (!this.stored || !this.keptInStore) return this.persist(subscriptions);
    // Many changes waiting for the store (it fails, the client keeps changing filters): one
    // whole write replaces them, so what waits stays bounded by what the session holds.
    if (this.journal.subscriptionOps(this.clientId) + changed.length > SUBSCRIPTION_OPS_AT) {
      return this.persist(subscriptions);
    }
    for (const c of changed) {
      this.journal.push(
        typeof c === "string"
          ? { type: "unsubscribe", clientId: this.clientId, key: c }
          : { type: "subscribe", clientId: this.clientId, sub: storedSubscription(c) },
      );
    }
  }

  /** The session as a store keeps it. `subscriptions` come from the router, which owns them. */
  toState(subscriptions: Iterable<Subscription>): SessionState {
    const subs: StoredSubscription[] = [];
    for (const s of subscriptions) subs.push(storedSubscription(s));
    const w = this.willValue;
    return {
      clientId: this.clientId,
      owner: this.owner,
      expiryInterval: this.expiry,
      expiresAt: this.expiresAt,
      will: w === null ? null : { msg: w.msg.own(), delay: w.delay, expiry: w.expiry },
      willAt: this.willAt,
      subscriptions: subs,
      queue: this.storedQueue(),
      inflight: this.storedInflight(),
      incomingQos2: this.incomingQos2 === null ? [] : this.incomingQos2.keys(),
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
    this.restoreDeliveries(state);
    this.incomingQos2 = null;
    for (const pid of state.incomingQos2) {
      (this.incomingQos2 ??= new PacketIdTable()).set(pid, true);
    }
  }
}

/** A subscription as a store keeps it (without its subscriber and parsed filter). */
function storedSubscription(s: Subscription): StoredSubscription {
  return {
    key: s.key,
    qos: s.qos,
    noLocal: s.noLocal,
    retainAsPublished: s.retainAsPublished,
    retainHandling: s.retainHandling,
    subscriptionId: s.subscriptionId,
  };
}
