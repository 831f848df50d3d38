/** Stored session parts (src/store/types.ts) turned back into the objects the broker moves. */
import { utf8 } from "../protocol/bytes.ts";
import { Message } from "../protocol/message.ts";
import { getLogger } from "@logtape/logtape";
import { subscribeAccess } from "../auth/access.ts";
import type { Authorizer } from "../auth/types.ts";
import { parseFilter, type TopicLimits } from "../protocol/topic.ts";
import type { Subscriber, Subscription } from "../router/types.ts";
import type { SessionState, StoredMessage, StoredWill } from "../store/types.ts";
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
