/**
 * SUBSCRIBE without sockets: turns each requested filter into a subscription
 * or a refusal code, following the filter syntax, share-group rules and the
 * authorizer's answer.
 */
import type { SubscribeAccess } from "../auth/types.ts";
import type { SubscribePacket } from "../protocol/decode.ts";
import { ProtocolError, ReasonCode } from "../protocol/reason_codes.ts";
import { parseFilter } from "../protocol/topic.ts";
import { levelCount, type SubscriptionUsage } from "../router/router.ts";
import type { Subscriber, Subscription } from "../router/types.ts";
import type { ConnectionHost } from "./host.ts";
import type { CoreLimits } from "./limits.ts";
import { RetainedStream } from "./retained_stream.ts";
import type { Session } from "./session.ts";

/** One requested filter: the subscription to add, or the SUBACK code refusing it. */
export type SubscribeDecision = { sub: Subscription; code?: undefined } | {
  sub?: undefined;
  code: number;
};

/**
 * Decides every request of a SUBSCRIBE; throws for protocol errors that close
 * the connection. `usage` is what the subscriber holds already: a new filter
 * that would take it past limits.max_subscriptions, max_subscription_levels or
 * max_subscription_bytes is refused with 0x97 Quota exceeded (0x80 in 3.1.1); replacing an existing
 * subscription is always allowed.
 */
export function decideSubscriptions(
  pkt: SubscribePacket,
  subscriber: Subscriber,
  limits: CoreLimits,
  mayRead: (filter: string) => SubscribeAccess,
  usage: SubscriptionUsage,
): SubscribeDecision[] {
  const out: SubscribeDecision[] = [];
  const subId = pkt.subscriptionId ?? 0;
  let count = usage.size;
  let levels = usage.levels;
  let chars = usage.chars;
  let added: Set<string> | null = null;
  for (const req of pkt.requests) {
    const tf = parseFilter(req.filter, limits);
    if (typeof tf === "string") {
      out.push({ code: ReasonCode.TopicFilterInvalid });
      continue;
    }
    if (tf.group !== null && req.noLocal) {
      throw new ProtocolError(ReasonCode.ProtocolError, "No Local on a shared subscription");
    }
    const access = mayRead(tf.filter);
    if (access === 0) {
      out.push({ code: ReasonCode.NotAuthorized });
      continue;
    }
    if (!usage.has(tf.key) && !added?.has(tf.key)) {
      const l = levelCount(tf.filter);
      const k = tf.key.length;
      if (
        count + 1 > limits.maxSubscriptions || levels + l > limits.maxSubscriptionLevels ||
        chars + k > limits.maxSubscriptionBytes
      ) {
        out.push({ code: ReasonCode.QuotaExceeded });
        continue;
      }
      count++;
      levels += l;
      chars += k;
      (added ??= new Set()).add(tf.key);
    }
    out.push({
      sub: {
        subscriber,
        key: tf.key,
        filter: tf.filter,
        group: tf.group,
        qos: req.qos,
        noLocal: req.noLocal,
        retainAsPublished: req.retainAsPublished,
        retainHandling: req.retainHandling,
        subscriptionId: subId,
        idList: subId !== 0 ? [subId] : null,
        needsCheck: access === 2,
      },
    });
  }
  return out;
}

/** Whether a new or replaced subscription gets the retained messages [MQTT-3.3.1-9..11]. */
export function wantsRetained(sub: Subscription, existed: boolean): boolean {
  return sub.group === null && (sub.retainHandling === 0 || (sub.retainHandling === 1 && !existed));
}

/**
 * Starts streaming the retained messages matching new subscriptions into
 * their session, at most limits.max_retained_per_subscription each.
 */
export function sendRetained(host: ConnectionHost, session: Session, subs: Subscription[]): void {
  for (const sub of subs) {
    session.streamRetained(
      new RetainedStream(
        sub,
        host.retainedCursor(sub.filter),
        host.limits.maxRetainedPerSubscription,
        host.mayReceive,
        session.clientId,
        host.metrics,
      ),
    );
  }
}
