/**
 * Retained messages. `RetainedStore` is the interface a cluster backend
 * implements; `MemoryRetainedStore` keeps them in a trie over topic levels so
 * a wildcard subscription finds its retained messages without scanning all.
 */
import type { Message } from "../protocol/message.ts";

export interface RetainedStore {
  /** Stores `msg` as the retained message of its topic, replacing any earlier one. */
  set(msg: Message): void;
  /** Removes the retained message of `topic`, if any. */
  delete(topic: string): void;
  /** Retained messages whose topic matches `filter` (no share prefix). */
  match(filter: string): Message[];
  /** Number of retained messages. */
  readonly size: number;
}

class RNode {
  children: Map<string, RNode> | null = null;
  msg: Message | null = null;
}

export class MemoryRetainedStore implements RetainedStore {
  private root = new RNode();
  private count = 0;

  get size(): number {
    return this.count;
  }

  set(msg: Message): void {
    let node = this.root;
    for (const level of msg.topic.split("/")) {
      node.children ??= new Map();
      let next = node.children.get(level);
      if (next === undefined) {
        next = new RNode();
        node.children.set(level, next);
      }
      node = next;
    }
    if (node.msg === null) this.count++;
    node.msg = msg;
  }

  delete(topic: string): void {
    const levels = topic.split("/");
    const path: RNode[] = [this.root];
    let node = this.root;
    for (const level of levels) {
      const next = node.children?.get(level);
      if (next === undefined) return;
      node = next;
      path.push(node);
    }
    if (node.msg === null) return;
    node.msg = null;
    this.count--;
    for (let i = levels.length; i > 0; i--) {
      const n = path[i];
      if (n.msg !== null || (n.children !== null && n.children.size > 0)) break;
      path[i - 1].children!.delete(levels[i - 1]);
    }
  }

  match(filter: string): Message[] {
    const out: Message[] = [];
    walk(this.root, filter.split("/"), 0, out);
    return out;
  }
}

function collectAll(node: RNode, out: Message[]): void {
  if (node.msg !== null) out.push(node.msg);
  if (node.children === null) return;
  for (const child of node.children.values()) collectAll(child, out);
}

function walk(node: RNode, f: string[], i: number, out: Message[]): void {
  if (i === f.length) {
    if (node.msg !== null) out.push(node.msg);
    return;
  }
  const level = f[i];
  if (level === "#") {
    // "a/#" matches "a" itself and everything below; at the root it skips "$" topics.
    if (i > 0 && node.msg !== null) out.push(node.msg);
    if (node.children === null) return;
    for (const [name, child] of node.children) {
      if (i === 0 && name.startsWith("$")) continue;
      collectAll(child, out);
    }
    return;
  }
  if (node.children === null) return;
  if (level === "+") {
    for (const [name, child] of node.children) {
      if (i === 0 && name.startsWith("$")) continue;
      walk(child, f, i + 1, out);
    }
    return;
  }
  const next = node.children.get(level);
  if (next !== undefined) walk(next, f, i + 1, out);
}
