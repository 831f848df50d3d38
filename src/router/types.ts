/** What the router knows about subscribers and subscriptions. */
import type { Message } from "../protocol/message.ts";
import type { ShareGroup } from "./trie.ts";

/** Something that receives messages: a session. */
export interface Subscriber {
  readonly clientId: string;
  /** Username or certificate identity the subscriber runs as (undefined when anonymous). */
  readonly username?: string;
  /** True while a network connection is attached; shared subscriptions prefer these. */
  readonly online: boolean;
  /**
   * Hands over one message. `subIds` are the Subscription Identifiers to
   * send with it (null for none); `group` is the share group that picked this
   * subscriber for it (omitted for a non-shared subscription).
   */
  deliver(
    msg: Message,
    qos: 0 | 1 | 2,
    retain: boolean,
    subIds: readonly number[] | null,
    group?: ShareGroup | null,
  ): void;
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
  /**
   * The ACL may refuse some topics this filter matches: each message is checked with the
   * router's `receiveCheck` before delivery. Decided once per subscription (and again when the
   * ACL is reloaded), so unrestricted subscriptions cost nothing per message.
   */
  needsCheck?: boolean;
}

/** Whether a message on `topic` may be delivered on `sub` (asked only when `sub.needsCheck`). */
export type ReceiveCheck = (sub: Subscription, topic: string) => boolean;
