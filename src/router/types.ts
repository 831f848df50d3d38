/** What the router knows about subscribers and subscriptions. */
import type { Message } from "../protocol/message.ts";

/** Something that receives messages: a session. */
export interface Subscriber {
  readonly clientId: string;
  /** True while a network connection is attached; shared subscriptions prefer these. */
  readonly online: boolean;
  /**
   * Hands over one message. `subIds` are the Subscription Identifiers to
   * send with it (null for none).
   */
  deliver(msg: Message, qos: 0 | 1 | 2, retain: boolean, subIds: readonly number[] | null): void;
}

/** One subscription of one subscriber to one filter. */
export interface Subscription {
  readonly subscriber: Subscriber;
  /** The filter as subscribed, including any `$share/group/` prefix. */
  readonly key: string;
  /** The filter that is matched against topics. */
  readonly filter: string;
  /** Share group name, or null. */
  readonly group: string | null;
  qos: 0 | 1 | 2;
  noLocal: boolean;
  retainAsPublished: boolean;
  retainHandling: 0 | 1 | 2;
  /** Subscription Identifier, or 0. */
  subscriptionId: number;
  /** `[subscriptionId]` allocated once, so deliveries do not build arrays. */
  idList: readonly number[] | null;
}
