/**
 * Subscription index: a trie over topic levels, with `+` and `#` as child
 * keys. Matching walks the levels of a topic once. Results are cached per
 * topic until the next change, because real fleets publish to the same topics
 * over and over while subscriptions change rarely.
 */
import { Levels } from "./levels.ts";
import type { Subscriber, Subscription } from "./types.ts";

/** A `$share/{group}/{filter}` group: one delivery per message, rotated over members. */
export class ShareGroup {
  members: Subscription[] = [];
  next = 0;
  /** `$share/{name}/{filter}`: the key a cluster routes the group by. */
  readonly key: string;
  constructor(readonly name: string, readonly filter: string) {
    this.key = `$share/${name}/${filter}`;
  }

  /**
   * Picks the member for the next message, preferring connected subscribers; members `ok` refuses
   * (the ACL does not let them read the topic) are passed over.
   */
  pick(ok: ((s: Subscription) => boolean) | null = null): Subscription | null {
    const n = this.members.length;
    if (n === 0) return null;
    let fallback = -1;
    for (let i = 0; i < n; i++) {
      const j = (this.next + i) % n;
      const s = this.members[j];
      if (ok !== null && !ok(s)) continue;
      if (s.subscriber.online) {
        this.next = (j + 1) % n;
        return s;
      }
      if (fallback < 0) fallback = j;
    }
    if (fallback < 0) return null;
    this.next = (fallback + 1) % n;
    return this.members[fallback];
  }
}

/** All subscriptions of one subscriber that match a topic. */
export interface Target {
  subscriber: Subscriber;
  subs: Subscription[];
}

export interface MatchResult {
  targets: Target[];
  groups: ShareGroup[];
}

/**
 * One topic level. Most levels of most filters have a single child, so that
 * child is kept inline (`key`/`only`) and a Map is made only for the second:
 * a level then costs one small object instead of an object plus a Map.
 */
class Node extends Levels<Node> {
  subs: Subscription[] | null = null;
  groups: Map<string, ShareGroup> | null = null;

  get empty(): boolean {
    return !this.hasChildren &&
      (this.subs === null || this.subs.length === 0) &&
      (this.groups === null || this.groups.size === 0);
  }
}

/** A match result with what the cache charges for it. */
interface Cached {
  result: MatchResult;
  bytes: number;
}

const EMPTY: MatchResult = { targets: [], groups: [] };
/** Topics remembered as seen once before the set starts over. */
const SEEN_LIMIT = 4096;

/**
 * Approximate heap bytes of a cache entry: the map slot and key, the result
 * and its arrays, and one Target (object plus array) per subscriber.
 */
function entryBytes(topic: string, r: MatchResult): number {
  return 96 + topic.length * 2 + r.groups.length * 8 + r.targets.length * 72;
}

export class SubscriptionTrie {
  private root = new Node();
  private cache = new Map<string, Cached>();
  private cacheBytes = 0;
  /** Topics that missed the cache once (the admission filter of `remember`). */
  private readonly seenOnce = new Set<string>();
  private count = 0;

  /** `cacheLimit`: bytes the match cache may hold (limits.match_cache_bytes); 0 = no cache. */
  constructor(private readonly cacheLimit = 16 * 1024 * 1024) {}

  /** Approximate bytes held by the match cache. */
  get cachedBytes(): number {
    return this.cacheBytes;
  }

  private clearCache(): void {
    if (this.cache.size === 0) return;
    this.cache.clear();
    this.cacheBytes = 0;
  }

  /** Number of subscriptions held. */
  get size(): number {
    return this.count;
  }

  /** Adds or replaces (same subscriber and key) a subscription. */
  add(sub: Subscription): void {
    let node = this.root;
    for (const level of sub.filter.split("/")) {
      let next = node.child(level);
      if (next === undefined) {
        next = new Node();
        node.setChild(level, next);
      }
      node = next;
    }
    this.clearCache();
    if (sub.group === null) {
      const subs = node.subs ??= [];
      const i = subs.findIndex((s) => s.subscriber === sub.subscriber);
      if (i >= 0) subs[i] = sub;
      else {
        subs.push(sub);
        this.count++;
      }
    } else {
      node.groups ??= new Map();
      let g = node.groups.get(sub.group);
      if (g === undefined) {
        g = new ShareGroup(sub.group, sub.filter);
        node.groups.set(sub.group, g);
      }
      const i = g.members.findIndex((s) => s.subscriber === sub.subscriber);
      if (i >= 0) g.members[i] = sub;
      else {
        g.members.push(sub);
        this.count++;
      }
    }
  }

  /** Removes the subscription of `subscriber` to `filter` (in `group`); true if one existed. */
  remove(subscriber: Subscriber, filter: string, group: string | null): boolean {
    const path: Node[] = [this.root];
    const levels = filter.split("/");
    let node = this.root;
    for (const level of levels) {
      const next = node.child(level);
      if (next === undefined) return false;
      node = next;
      path.push(node);
    }
    let removed = false;
    if (group === null) {
      const i = node.subs?.findIndex((s) => s.subscriber === subscriber) ?? -1;
      if (i >= 0) {
        node.subs!.splice(i, 1);
        removed = true;
      }
    } else {
      const g = node.groups?.get(group);
      const i = g?.members.findIndex((s) => s.subscriber === subscriber) ?? -1;
      if (g && i >= 0) {
        g.members.splice(i, 1);
        if (g.members.length === 0) node.groups!.delete(group);
        removed = true;
      }
    }
    if (!removed) return false;
    this.count--;
    this.clearCache();
    // Prune empty nodes so churn does not leak memory.
    for (let i = levels.length; i > 0; i--) {
      if (!path[i].empty) break;
      path[i - 1].deleteChild(levels[i - 1]);
    }
    return true;
  }

  /** Everything that matches `topic`, grouped by subscriber. */
  match(topic: string): MatchResult {
    const hit = this.cache.get(topic);
    if (hit !== undefined) return hit.result;
    const subs: Subscription[] = [];
    const groups: ShareGroup[] = [];
    const levels = topic.split("/");
    this.walk(this.root, levels, 0, topic.charCodeAt(0) === 0x24, /* $ */ subs, groups);
    let result: MatchResult;
    if (subs.length === 0 && groups.length === 0) result = EMPTY;
    else result = { targets: groupBySubscriber(subs), groups };
    this.remember(topic, result);
    return result;
  }

  /**
   * Caches a result, dropping the oldest entries to stay within the byte
   * limit. A topic is admitted on its second miss only: a stream of distinct
   * topics would otherwise push every result into the cache, where it lives
   * long enough to reach the old generation before it is evicted, and the
   * heap (and RSS) balloons with garbage a young-generation scavenge would
   * have freed at once.
   */
  private remember(topic: string, result: MatchResult): void {
    const bytes = entryBytes(topic, result);
    if (bytes > this.cacheLimit >> 2) return;
    const seen = this.seenOnce;
    if (!seen.has(topic)) {
      if (seen.size >= SEEN_LIMIT) seen.clear();
      seen.add(topic);
      return;
    }
    seen.delete(topic);
    const cache = this.cache;
    while (this.cacheBytes + bytes > this.cacheLimit) {
      const oldest = cache.keys().next().value as string;
      this.cacheBytes -= cache.get(oldest)!.bytes;
      cache.delete(oldest);
    }
    cache.set(topic, { result, bytes });
    this.cacheBytes += bytes;
  }

  private walk(
    node: Node,
    levels: string[],
    i: number,
    dollar: boolean,
    subs: Subscription[],
    groups: ShareGroup[],
  ): void {
    if (i === levels.length) {
      collect(node, subs, groups);
      // "a/#" also matches "a".
      const hash = node.child("#");
      if (hash !== undefined) collect(hash, subs, groups);
      return;
    }
    if (!node.hasChildren) return;
    // Wildcards at the first level never match topics beginning with "$" [MQTT-4.7.2-1].
    if (!(dollar && i === 0)) {
      const hash = node.child("#");
      if (hash !== undefined) collect(hash, subs, groups);
      const plus = node.child("+");
      if (plus !== undefined) this.walk(plus, levels, i + 1, dollar, subs, groups);
    }
    const exact = node.child(levels[i]);
    if (exact !== undefined) this.walk(exact, levels, i + 1, dollar, subs, groups);
  }
}

function collect(node: Node, subs: Subscription[], groups: ShareGroup[]): void {
  if (node.subs !== null) { for (const s of node.subs) subs.push(s); }
  if (node.groups !== null) { for (const g of node.groups.values()) groups.push(g); }
}

function groupBySubscriber(subs: Subscription[]): Target[] {
  const targets: Target[] = [];
  let seen: Map<Subscriber, Target> | null = null;
  for (const s of subs) {
    if (targets.length === 0) {
      targets.push({ subscriber: s.subscriber, subs: [s] });
      continue;
    }
    seen ??= new Map(targets.map((t) => [t.subscriber, t]));
    const t = seen.get(s.subscriber);
    if (t !== undefined) t.subs.push(s);
    else {
      const nt = { subscriber: s.subscriber, subs: [s] };
      targets.push(nt);
      seen.set(s.subscriber, nt);
    }
  }
  return targets;
}
