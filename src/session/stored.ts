/** Stored session parts (src/store/types.ts) turned back into the objects the broker moves. */
import { utf8 } from "../protocol/bytes.ts";
import { Message } from "../protocol/message.ts";
import { getLogger } from "@logtape/logtape";
import { subscribeAccess } from "../auth/access.ts";
import type { Authorizer } from "../auth/types.ts";
import { parseFilter, type TopicLimits } from "../protocol/topic.ts";
import type { Subscriber, Subscription } from "../router/types.ts";
import type { SessionState, StoredDelivery, StoredMessage, StoredWill } from "../store/types.ts";
import type { Will } from "./session_types.ts";

const log = getLogger(["mcloudtt", "core"]);

/**
 * The Message made of each stored one: a store loads a message queued for many sessions once
 * (SQLite's `messages` table), and the restored queues must share one Message for it as the
 * live ones did, or each would count its bytes against limits.max_queued_bytes_total (a restart
 * came back with the size times the sessions). Weak: gone with the loaded states. Only restores
 * come here, never a live message.
 */
const made = new WeakMap<StoredMessage, Message>();

/** A stored message as the router moves it (the same Message for the same stored object). */
export function toMessage(m: StoredMessage): Message {
  if (m instanceof Message) return m;
  const known = made.get(m);
  if (known !== undefined) return known;
  const msg = new Message(
    m.topic,
    utf8(m.topic),
    m.payload,
    m.qos,
    m.retain,
    m.props,
    m.expiresAt,
    m.origin,
  );
  if (m.id !== undefined) msg.id = m.id;
  made.set(m, msg);
  return msg;
}

/**
 * One Message per message id among the sessions this node restores from a store. Redis keeps a
 * message queued for N sessions inline in each queue entry, so a node that adopts them (a dead
 * node's sessions, in one go) or loads them (sessions moving here) read N copies: N payloads in
 * memory, counted N times against limits.max_queued_bytes_total, where the node they came from
 * held one. The embedded store (SQLite) keeps one row per message and loads it once (`toMessage`
 * keeps that sharing), but a message written again by a later process (a restored session
 * rewritten whole) gets a row of its own, and a restart after that loaded one copy per row
 * (doubling with each restart that some sessions come and go in). Every stored copy of a message
 * carries the same id (given by the cluster bus when it first forwards it, or by the journal when
 * a durable store first keeps it: Journal.identify), so the copies become the Message made for
 * the first; the per-delivery fields (QoS, retain flag as delivered, subscription identifiers)
 * are the entries' own, not the message's. The Messages are held weakly: an id leaves the index
 * once its Message is gone, and sharing goes on for as long as any session here holds it. A copy
 * without an id (written by a version that gave none) is restored once per entry.
 */
export class RestoredMessages {
  private readonly byId = new Map<string, WeakRef<Message>>();
  private readonly gone = new FinalizationRegistry<string>((id) => {
    if (this.byId.get(id)?.deref() === undefined) this.byId.delete(id);
  });

  /** `state` with each queued and in-flight message that has an id made one Message per id. */
  share(state: SessionState): SessionState {
    const queue = state.queue.some(hasId) ? state.queue.map((q) => this.shared(q)) : state.queue;
    const inflight = state.inflight.some(hasId)
      ? state.inflight.map((f) => this.shared(f))
      : state.inflight;
    return queue === state.queue && inflight === state.inflight
      ? state
      : { ...state, queue, inflight };
  }

  private shared<T extends StoredDelivery>(d: T): T {
    const m = d.msg;
    if (!hasId(d)) return d;
    const id = m.id!;
    const known = this.byId.get(id)?.deref();
    // The store's own sharing (one object for many entries) needs no comparison of the bytes.
    if (known !== undefined && (made.get(m) === known || sameMessage(known, m))) {
      return { ...d, msg: known };
    }
    const msg = toMessage(m);
    this.byId.set(id, new WeakRef(msg));
    this.gone.register(msg, id);
    return { ...d, msg };
  }
}

function hasId(d: StoredDelivery): boolean {
  return d.msg.id !== undefined && d.msg.id !== "";
}

/**
 * Ids are unique (a random prefix per process and a counter), so this only guards against a
 * store written by something else: two copies that differ are not made one. The bytes are
 * compared, not their lengths (a payload of the same length was delivered to the wrong session);
 * sharing already costs decoding each copy, so the comparison adds no order of cost.
 */
function sameMessage(a: Message, b: StoredMessage): boolean {
  return a.topic === b.topic && a.qos === b.qos && a.retain === b.retain &&
    a.expiresAt === b.expiresAt && a.origin === b.origin && sameBytes(a.payload, b.payload) &&
    (a.props === null || b.props === null ? a.props === b.props : sameBytes(a.props, b.props));
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** A stored will as the session keeps it. */
export function restoreWill(w: StoredWill): Will {
  return { msg: toMessage(w.msg), delay: w.delay, expiry: w.expiry };
}

/**
 * The subscriptions of a stored session that still parse within `limits` and that the ACL still
 * allows (it may have changed while the session was stored); the others are logged and skipped.
 */
export function storedSubscriptions(
  state: SessionState,
  subscriber: Subscriber,
  limits: TopicLimits,
  authorizer: Authorizer | null,
): Subscription[] {
  const out: Subscription[] = [];
  for (const stored of state.subscriptions) {
    const tf = parseFilter(stored.key, limits);
    if (typeof tf === "string") {
      log.warn("skipping stored subscription {key} of {clientId}: {problem}", {
        key: stored.key,
        clientId: state.clientId,
        problem: tf,
      });
      continue;
    }
    // The ACL may have changed while the session was stored.
    const access = subscribeAccess(authorizer, {
      clientId: state.clientId,
      username: state.owner ?? undefined,
    }, stored.key);
    if (access === 0) continue;
    out.push({
      subscriber,
      key: tf.key,
      filter: tf.filter,
      group: tf.group,
      qos: stored.qos,
      noLocal: stored.noLocal,
      retainAsPublished: stored.retainAsPublished,
      retainHandling: stored.retainHandling,
      subscriptionId: stored.subscriptionId,
      idList: stored.subscriptionId !== 0 ? [stored.subscriptionId] : null,
      needsCheck: access === 2,
    });
  }
  return out;
}
