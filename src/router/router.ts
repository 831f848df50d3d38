/**
 * The router owns subscriptions and retained messages, and fans a published
 * message out to every matching subscriber. It is the single owner of that
 * state: sessions ask it to subscribe, unsubscribe and publish.
 */
import type { Message } from "../protocol/message.ts";
import { MemoryRetainedStore, type RetainedStore } from "./retained.ts";
import { type ShareGroup, SubscriptionTrie, type Target } from "./trie.ts";
import type { ReceiveCheck, Subscriber, Subscription } from "./types.ts";

export type { ReceiveCheck, Subscriber, Subscription } from "./types.ts";

/** What `subscribe` changed. */
export const Subscribed = {
  /** A new subscription; the node already had a route for its key. */
  Added: 0,
  /** An existing subscription of the same subscriber and key was replaced. */
  Replaced: 1,
  /** A new subscription and the first local one with its key: a new route for the cluster. */
  NewRoute: 2,
} as const;

/** What `unsubscribe` changed. */
export const Unsubscribed = {
  /** There was no such subscription. */
  None: 0,
  Removed: 1,
  /** Removed, and it was the last local one with its key: the route goes away. */
  RouteGone: 2,
} as const;

/** Counters the router keeps; read by ops, never reset by it. */
export interface RouterStats {
  published: number;
  deliveries: number;
  noSubscribers: number;
  /** Retained messages not kept because the store was at its limits (delivered all the same). */
  retainedRefused: number;
}

/**
 * What one subscriber holds: checked against limits.max_subscriptions, max_subscription_levels
 * and max_subscription_bytes.
 */
export interface SubscriptionUsage {
  /** Number of subscriptions. */
  readonly size: number;
  /** Topic levels summed over the subscriptions' filters. */
  readonly levels: number;
  /** Characters summed over the subscriptions' keys (filter, with its share prefix). */
  readonly chars: number;
  has(key: string): boolean;
}

/** One subscriber's subscriptions by key, with their level total kept up to date. */
class Owned extends Map<string, Subscription> implements SubscriptionUsage {
  levels = 0;
  chars = 0;
}

const NO_USAGE: SubscriptionUsage = new Owned();

/** Number of topic levels in a filter or topic. */
export function levelCount(filter: string): number {
  let n = 1;
  for (let i = filter.indexOf("/"); i >= 0; i = filter.indexOf("/", i + 1)) n++;
  return n;
}

export interface RouterOptions {
  /** Bytes the match cache may hold (limits.match_cache_bytes); 0 = no cache. */
  matchCacheBytes?: number;
}

/** What `unsubscribeAll` returns for a subscriber without subscriptions. */
const NO_ROUTES: readonly string[] = Object.freeze([]);

export class Router {
  private readonly trie: SubscriptionTrie;
  private readonly bySubscriber = new Map<Subscriber, Owned>();
  /** Local subscriptions per key (filter or `$share/group/filter`): the node's routes. */
  private readonly routes = new Map<string, number>();
  readonly stats: RouterStats = {
    published: 0,
    deliveries: 0,
    noSubscribers: 0,
    retainedRefused: 0,
  };
  /** Asked before delivering on a subscription with `needsCheck` set (the ACL); null: none. */
  receiveCheck: ReceiveCheck | null = null;
  /**
   * Told of a share group served here whose members the ACL all held back from a message
   * (`publish`): in a cluster a member allowed to read it may be on another node. Null: none.
   */
  heldBack: ((msg: Message, group: ShareGroup) => void) | null = null;
  /** The topic being published, for `groupOk` (which must not allocate per message). */
  private checking = "";
  private readonly groupOk = (s: Subscription): boolean =>
    s.needsCheck !== true || this.receiveCheck === null || this.receiveCheck(s, this.checking);

  constructor(
    readonly retained: RetainedStore = new MemoryRetainedStore(),
    opts: RouterOptions = {},
  ) {
    this.trie = new SubscriptionTrie(opts.matchCacheBytes);
  }

  /** What `subscriber` holds now (count, levels, keys). */
  usageOf(subscriber: Subscriber): SubscriptionUsage {
    return this.bySubscriber.get(subscriber) ?? NO_USAGE;
  }

  /** Approximate bytes held by the match cache. */
  get matchCacheBytes(): number {
    return this.trie.cachedBytes;
  }

  /** Number of subscriptions. */
  get subscriptionCount(): number {
    return this.trie.size;
  }

  /** Number of distinct local routes (filters and share groups with a local subscriber). */
  get routeCount(): number {
    return this.routes.size;
  }

  /** The keys this node has local subscribers for (to re-announce them to a cluster). */
  routeKeys(): IterableIterator<string> {
    return this.routes.keys();
  }

  /** Adds or replaces a subscription; says whether it replaced one or opened a new route. */
  subscribe(sub: Subscription): number {
    let mine = this.bySubscriber.get(sub.subscriber);
    if (mine === undefined) {
      mine = new Owned();
      this.bySubscriber.set(sub.subscriber, mine);
    }
    const existed = mine.has(sub.key);
    mine.set(sub.key, sub);
    if (!existed) {
      mine.levels += levelCount(sub.filter);
      mine.chars += sub.key.length;
    }
    this.trie.add(sub);
    if (existed) return Subscribed.Replaced;
    const n = this.routes.get(sub.key) ?? 0;
    this.routes.set(sub.key, n + 1);
    return n === 0 ? Subscribed.NewRoute : Subscribed.Added;
  }

  /** Removes the subscription with `key` ("$share/g/f" or "f"); says whether a route went away. */
  unsubscribe(subscriber: Subscriber, key: string): number {
    const mine = this.bySubscriber.get(subscriber);
    const sub = mine?.get(key);
    if (sub === undefined) return Unsubscribed.None;
    mine!.delete(key);
    mine!.levels -= levelCount(sub.filter);
    mine!.chars -= key.length;
    if (mine!.size === 0) this.bySubscriber.delete(subscriber);
    this.trie.remove(subscriber, sub.filter, sub.group);
    return this.dropRoute(key) ? Unsubscribed.RouteGone : Unsubscribed.Removed;
  }

  /** Removes every subscription of `subscriber` (its session ended); returns the routes that went away. */
  unsubscribeAll(subscriber: Subscriber): readonly string[] {
    const mine = this.bySubscriber.get(subscriber);
    // Most sessions that end had no subscription (a publisher, a connect storm): nothing made.
    if (mine === undefined) return NO_ROUTES;
    const gone: string[] = [];
    this.bySubscriber.delete(subscriber);
    for (const sub of mine.values()) {
      this.trie.remove(subscriber, sub.filter, sub.group);
      if (this.dropRoute(sub.key)) gone.push(sub.key);
    }
    return gone;
  }

  private dropRoute(key: string): boolean {
    const n = this.routes.get(key) ?? 0;
    if (n <= 1) {
      this.routes.delete(key);
      return true;
    }
    this.routes.set(key, n - 1);
    return false;
  }

  /** The subscriptions of `subscriber`. */
  subscriptionsOf(subscriber: Subscriber): Iterable<Subscription> {
    return this.bySubscriber.get(subscriber)?.values() ?? [];
  }

  /**
   * Routes a message: updates the retained store when the retain flag is set,
   * then delivers to each matching subscriber once (overlapping subscriptions
   * are merged: highest QoS, all Subscription Identifiers) and to one member
   * of each matching share group. `groups` limits which share groups are
   * served here (a cluster serves each group on one node); null serves all.
   * Returns the number of deliveries. `retainVersion` orders retained updates of one topic made
   * on different nodes (retain_version.ts).
   */
  publish(msg: Message, groups: ReadonlySet<string> | null = null, retainVersion = ""): number {
    this.stats.published++;
    if (msg.retain) {
      if (msg.payload.length === 0) this.retained.delete(msg.topic, retainVersion);
      else if (!this.retained.set(msg, retainVersion)) this.stats.retainedRefused++;
    }
    const m = this.trie.match(msg.topic);
    let n = 0;
    const targets = m.targets;
    const check = this.receiveCheck;
    for (let i = 0; i < targets.length; i++) {
      if (deliverTo(targets[i], msg, check)) n++;
    }
    this.checking = msg.topic;
    for (const g of m.groups) {
      if (groups !== null && !groups.has(g.key)) continue;
      const s = g.pick(check === null ? null : this.groupOk);
      if (s === null) {
        this.heldBack?.(msg, g);
        continue;
      }
      s.subscriber.deliver(
        msg,
        minQos(msg.qos, s.qos),
        s.retainAsPublished && msg.retain,
        s.idList,
        g,
      );
      n++;
    }
    this.stats.deliveries += n;
    if (n === 0) this.stats.noSubscribers++;
    return n;
  }

  /**
   * Sends `msg` to a member of each group of `keys` (`$share/name/filter`) here: another node's
   * member lost its session before its client got it. Returns how many of the groups have no
   * member here any more (the message is dropped for those).
   */
  redeliverSharedKeys(msg: Message, keys: readonly string[]): number {
    let gone = 0;
    const groups = this.trie.match(msg.topic).groups;
    for (const key of keys) {
      const g = groups.find((x) => x.key === key);
      if (g === undefined || !this.redeliverShared(msg, g)) gone++;
    }
    return gone;
  }

  /**
   * Sends `msg` to another member of `group`: the member it was first given to lost its session
   * before acknowledging it (QoS 1) or before it was sent at all. The session's subscriptions
   * are gone by then, so it is not picked again. False when no member is left here.
   */
  redeliverShared(msg: Message, group: ShareGroup): boolean {
    this.checking = msg.topic;
    const s = group.pick(this.receiveCheck === null ? null : this.groupOk);
    if (s === null) return false;
    s.subscriber.deliver(
      msg,
      minQos(msg.qos, s.qos),
      s.retainAsPublished && msg.retain,
      s.idList,
      group,
    );
    this.stats.deliveries++;
    return true;
  }
}

function minQos(a: 0 | 1 | 2, b: 0 | 1 | 2): 0 | 1 | 2 {
  return a < b ? a : b;
}

function deliverTo(t: Target, msg: Message, check: ReceiveCheck | null): boolean {
  const subs = t.subs;
  const who = t.subscriber;
  if (subs.length === 1) {
    const s = subs[0];
    if (s.noLocal && who.clientId === msg.origin) return false;
    if (s.needsCheck === true && check !== null && !check(s, msg.topic)) return false;
    who.deliver(msg, minQos(msg.qos, s.qos), s.retainAsPublished && msg.retain, s.idList);
    return true;
  }
  // Overlapping subscriptions of one client: a single delivery at the highest
  // QoS carrying every Subscription Identifier [MQTT-3.3.4-2, -3, -4].
  let qos: 0 | 1 | 2 = 0;
  let retain = false;
  let ids: number[] | null = null;
  let any = false;
  const local = who.clientId === msg.origin;
  // The answer depends only on the subscriber and the topic: ask once.
  let readable: boolean | undefined;
  for (const s of subs) {
    if (s.noLocal && local) continue;
    if (s.needsCheck === true && check !== null && !(readable ??= check(s, msg.topic))) continue;
    any = true;
    if (s.qos > qos) qos = s.qos;
    if (s.retainAsPublished) retain = true;
    if (s.subscriptionId !== 0) (ids ??= []).push(s.subscriptionId);
  }
  if (!any) return false;
  who.deliver(msg, minQos(msg.qos, qos), retain && msg.retain, ids);
  return true;
}
