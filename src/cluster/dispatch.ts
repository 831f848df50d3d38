/**
 * The forwarding decision for one message, shared by every Bus
 * implementation: which other nodes get a copy, and which node serves each
 * matching shared-subscription group (exactly one per group and message).
 */
import type { RoutePlan } from "./route_trie.ts";

export type SharedPolicy = "local" | "round_robin";

/** Copies to send: node -> the group keys it serves for this message. */
export interface Dispatch {
  readonly dests: Map<string, string[]>;
  /** Groups this node serves, or null when it serves every group it holds. */
  readonly localGroups: Set<string> | null;
}

const NO_GROUPS: string[] = [];

/** Per-group rotation counters (bounded by the number of group keys ever matched). */
export class Rotation {
  private next = new Map<string, number>();

  /**
   * The next holder of group `key` in turn, skipping those `avoid` names (nodes behind on their
   * inbox, see redis_backlog.ts) unless every holder is one.
   */
  pick(key: string, nodes: readonly string[], avoid?: (node: string) => boolean): string {
    const start = this.next.get(key) ?? 0;
    let i = start;
    if (avoid !== undefined) {
      for (let n = 0; n < nodes.length && avoid(nodes[i % nodes.length]); n++) i++;
      if (avoid(nodes[i % nodes.length])) i = start;
    }
    this.next.set(key, (i + 1) % nodes.length);
    return nodes[i % nodes.length];
  }

  /** Forgets groups no node holds any more. */
  forget(key: string): void {
    this.next.delete(key);
  }
}

/**
 * Decides where a message with `plan` goes; null when it stays on this node only. A shared
 * group's member is picked on a node `avoid` does not name when there is one (passed only while
 * some node is behind on its inbox).
 */
export function dispatch(
  plan: RoutePlan,
  self: string,
  policy: SharedPolicy,
  rotation: Rotation,
  avoid?: (node: string) => boolean,
): Dispatch | null {
  if (plan.remote.length === 0 && plan.groups.length === 0) return null;
  const dests = new Map<string, string[]>();
  for (const node of plan.remote) dests.set(node, NO_GROUPS);
  // Set when a group this node holds is served elsewhere for this message.
  let away: Set<string> | null = null;
  for (const g of plan.groups) {
    const chosen = g.local && policy === "local" ? self : rotation.pick(g.key, g.nodes, avoid);
    if (chosen === self) continue;
    if (g.local) (away ??= new Set()).add(g.key);
    const list = dests.get(chosen);
    if (list === undefined || list === NO_GROUPS) dests.set(chosen, [g.key]);
    else list.push(g.key);
  }
  let localGroups: Set<string> | null = null;
  if (away !== null) {
    localGroups = new Set();
    for (const g of plan.groups) if (g.local && !away.has(g.key)) localGroups.add(g.key);
  }
  if (dests.size === 0 && localGroups === null) return null;
  return { dests, localGroups };
}

/**
 * Adds every node in `nodes` (but `self`) as a destination: a retained
 * message goes everywhere, so each node's retained index, which new
 * subscriptions read, stays current (clearing included).
 */
export function toEveryNode(
  d: Dispatch | null,
  nodes: Iterable<string>,
  self: string,
): Dispatch | null {
  let out = d;
  for (const n of nodes) {
    if (n === self) continue;
    out ??= { dests: new Map(), localGroups: null };
    if (!out.dests.has(n)) out.dests.set(n, NO_GROUPS);
  }
  return out;
}

/**
 * The node to hand a message of share group `key` to when the member it was given to is gone and
 * no other member is on this node: another holder of the group in turn, or null when there is
 * none.
 */
export function redeliveryTarget(
  plan: RoutePlan,
  key: string,
  self: string,
  rotation: Rotation,
  avoid?: (node: string) => boolean,
): string | null {
  for (const g of plan.groups) {
    if (g.key !== key) continue;
    const others = g.nodes.filter((n) => n !== self);
    return others.length === 0 ? null : rotation.pick(key, others, avoid);
  }
  return null;
}
