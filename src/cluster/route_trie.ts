/**
 * Which nodes want a topic: a trie over the filters of every node's routes
 * (`filter` or `$share/group/filter`), each filter holding the nodes that
 * route it. A node keeps one, fed from the shared route table, so deciding
 * where a publish goes costs no Redis round trip. Lookups are cached per
 * topic (fleets publish to the same topics over and over) in a bounded map
 * dropped on every route change.
 */

/** One matching shared-subscription key and the nodes that serve it. */
export interface GroupRoute {
  /** `$share/group/filter` */
  readonly key: string;
  /** Node ids, in a stable order (for rotation). */
  readonly nodes: readonly string[];
  /** True when this node is one of them. */
  readonly local: boolean;
}

/** Where a topic goes: plain routes to other nodes, and the shared groups that match it. */
export interface RoutePlan {
  /** Other nodes with a matching plain route (never this node). */
  readonly remote: readonly string[];
  readonly groups: readonly GroupRoute[];
}

const EMPTY_PLAN: RoutePlan = Object.freeze({ remote: [], groups: [] });

/** Splits `$share/group/filter` into its filter; null for a plain filter. */
export function sharedFilter(key: string): string | null {
  if (!key.startsWith("$share/")) return null;
  const slash = key.indexOf("/", 7);
  return slash < 0 ? null : key.slice(slash + 1);
}

class TrieNode {
  children: Map<string, TrieNode> | null = null;
  /** route key -> nodes holding it */
  routes: Map<string, Set<string>> | null = null;
}

/** Most topics whose plan is kept; the cache is dropped whole when full. */
const CACHE_LIMIT = 4096;

export class RouteTrie {
  private root = new TrieNode();
  private cache = new Map<string, RoutePlan>();
  /** node -> its route keys, to drop a node at once. */
  private byNode = new Map<string, Set<string>>();

  constructor(readonly self: string) {}

  /** Number of (key, node) routes held. */
  get size(): number {
    let n = 0;
    for (const keys of this.byNode.values()) n += keys.size;
    return n;
  }

  /** True when `node` routes `key`. */
  has(key: string, node: string): boolean {
    return this.byNode.get(node)?.has(key) ?? false;
  }

  /** Keys routed by `node`. */
  keysOf(node: string): string[] {
    return [...(this.byNode.get(node) ?? [])];
  }

  /** Nodes that route anything. */
  nodes(): string[] {
    return [...this.byNode.keys()];
  }

  /** Records that `node` does (`present`) or does not route `key`; idempotent. */
  set(key: string, node: string, present: boolean): void {
    const filter = sharedFilter(key) ?? key;
    const levels = filter.split("/");
    if (present) {
      let t = this.root;
      for (const level of levels) {
        t.children ??= new Map();
        let next = t.children.get(level);
        if (next === undefined) {
          next = new TrieNode();
          t.children.set(level, next);
        }
        t = next;
      }
      t.routes ??= new Map();
      let holders = t.routes.get(key);
      if (holders === undefined) {
        holders = new Set();
        t.routes.set(key, holders);
      }
      if (holders.has(node)) return;
      holders.add(node);
      let keys = this.byNode.get(node);
      if (keys === undefined) {
        keys = new Set();
        this.byNode.set(node, keys);
      }
      keys.add(key);
      this.cache.clear();
      return;
    }
    const path: TrieNode[] = [this.root];
    let t = this.root;
    for (const level of levels) {
      const next = t.children?.get(level);
      if (next === undefined) return;
      t = next;
      path.push(t);
    }
    const holders = t.routes?.get(key);
    if (holders === undefined || !holders.delete(node)) return;
    if (holders.size === 0) t.routes!.delete(key);
    const keys = this.byNode.get(node)!;
    keys.delete(key);
    if (keys.size === 0) this.byNode.delete(node);
    this.cache.clear();
    // Prune empty branches so route churn does not leak memory.
    for (let i = levels.length; i > 0; i--) {
      const n = path[i];
      if ((n.children?.size ?? 0) > 0 || (n.routes?.size ?? 0) > 0) break;
      path[i - 1].children!.delete(levels[i - 1]);
    }
  }

  /** Drops every route of `node`; returns its keys. */
  dropNode(node: string): string[] {
    const keys = this.keysOf(node);
    for (const key of keys) this.set(key, node, false);
    return keys;
  }

  /** Drops the routes of every node but this one. */
  clearRemote(): void {
    for (const node of this.nodes()) if (node !== this.self) this.dropNode(node);
  }

  /** Where a message on `topic` goes. */
  plan(topic: string): RoutePlan {
    const hit = this.cache.get(topic);
    if (hit !== undefined) return hit;
    const found: Map<string, Set<string>>[] = [];
    const levels = topic.split("/");
    this.walk(this.root, levels, 0, topic.charCodeAt(0) === 0x24, /* $ */ found);
    const plan = found.length === 0 ? EMPTY_PLAN : this.build(found);
    if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
    this.cache.set(topic, plan);
    return plan;
  }

  private build(found: Map<string, Set<string>>[]): RoutePlan {
    const remote = new Set<string>();
    const groups: GroupRoute[] = [];
    for (const routes of found) {
      for (const [key, holders] of routes) {
        if (key.startsWith("$share/")) {
          const nodes = [...holders].sort();
          groups.push({ key, nodes, local: holders.has(this.self) });
        } else {
          for (const n of holders) if (n !== this.self) remote.add(n);
        }
      }
    }
    if (remote.size === 0 && groups.length === 0) return EMPTY_PLAN;
    return { remote: [...remote], groups };
  }

  private walk(
    t: TrieNode,
    levels: string[],
    i: number,
    dollar: boolean,
    out: Map<string, Set<string>>[],
  ): void {
    const children = t.children;
    // Wildcards at the first level never match topics starting with "$" (MQTT 4.7.2).
    const wild = !(dollar && i === 0);
    if (i === levels.length) {
      if (t.routes !== null && t.routes.size > 0) out.push(t.routes);
      // "a/#" also matches "a".
      const hash = wild ? children?.get("#") : undefined;
      if (hash?.routes) out.push(hash.routes);
      return;
    }
    if (children === null) return;
    const exact = children.get(levels[i]);
    if (exact !== undefined) this.walk(exact, levels, i + 1, dollar, out);
    if (!wild) return;
    const plus = children.get("+");
    if (plus !== undefined) this.walk(plus, levels, i + 1, dollar, out);
    const hash = children.get("#");
    if (hash?.routes) out.push(hash.routes);
  }
}
