/**
 * Retained messages. `RetainedStore` is the interface a cluster backend
 * implements; `MemoryRetainedStore` keeps them in a trie over topic levels so
 * a wildcard subscription finds its retained messages without scanning all,
 * within limits on their number and (approximate) memory.
 */
import type { Message } from "../protocol/message.ts";
import { Levels } from "./levels.ts";

export interface RetainedStore {
  /**
   * Stores `msg` as the retained message of its topic, replacing any earlier
   * one; false (and nothing stored) when that would pass the store's limits.
   */
  set(msg: Message): boolean;
  /** Whether `set(msg)` would stay within the limits (checked before a publish is accepted). */
  fits(msg: Message): boolean;
  /** Removes the retained message of `topic`, if any. */
  delete(topic: string): void;
  /** Retained messages whose topic matches `filter` (no share prefix). */
  match(filter: string): Message[];
  /** Number of retained messages. */
  readonly size: number;
}

export interface RetainedLimits {
  /** Most retained messages (limits.max_retained_messages). */
  maxMessages: number;
  /** Most approximate bytes (limits.max_retained_bytes). */
  maxBytes: number;
}

/** What the store charges for a message besides its bytes: the message object and its node. */
const MESSAGE_OVERHEAD = 160;
/** What it charges per topic level: a trie node and the level's name. */
const LEVEL_OVERHEAD = 48;

/** Approximate memory a retained message costs (topic, payload, properties, objects, levels). */
export function retainedBytes(msg: Message): number {
  let levels = 1;
  const t = msg.topic;
  for (let i = t.indexOf("/"); i >= 0; i = t.indexOf("/", i + 1)) levels++;
  return MESSAGE_OVERHEAD + LEVEL_OVERHEAD * levels + t.length * 2 + msg.topicBytes.length +
    msg.payload.length + (msg.props?.length ?? 0);
}

class RNode extends Levels<RNode> {
  msg: Message | null = null;
}

const UNLIMITED: RetainedLimits = { maxMessages: Infinity, maxBytes: Infinity };

export class MemoryRetainedStore implements RetainedStore {
  private root = new RNode();
  private count = 0;
  private bytesHeld = 0;

  constructor(private readonly limits: RetainedLimits = UNLIMITED) {}

  get size(): number {
    return this.count;
  }

  /** Approximate bytes held. */
  get bytes(): number {
    return this.bytesHeld;
  }

  private find(topic: string): RNode | undefined {
    let node: RNode | undefined = this.root;
    for (const level of topic.split("/")) {
      node = node.child(level);
      if (node === undefined) return undefined;
    }
    return node;
  }

  fits(msg: Message): boolean {
    const old = this.find(msg.topic)?.msg ?? null;
    const count = this.count + (old === null ? 1 : 0);
    const bytes = this.bytesHeld + retainedBytes(msg) - (old === null ? 0 : retainedBytes(old));
    // A replacement that does not grow the store is always allowed, even over the limits.
    if (old !== null && bytes <= this.bytesHeld) return true;
    return count <= this.limits.maxMessages && bytes <= this.limits.maxBytes;
  }

  set(msg: Message): boolean {
    if (!this.fits(msg)) return false;
    msg.own();
    let node = this.root;
    for (const level of msg.topic.split("/")) {
      let next = node.child(level);
      if (next === undefined) {
        next = new RNode();
        node.setChild(level, next);
      }
      node = next;
    }
    if (node.msg === null) this.count++;
    else this.bytesHeld -= retainedBytes(node.msg);
    node.msg = msg;
    this.bytesHeld += retainedBytes(msg);
    return true;
  }

  delete(topic: string): void {
    const levels = topic.split("/");
    const path: RNode[] = [this.root];
    let node = this.root;
    for (const level of levels) {
      const next = node.child(level);
      if (next === undefined) return;
      node = next;
      path.push(node);
    }
    if (node.msg === null) return;
    this.bytesHeld -= retainedBytes(node.msg);
    node.msg = null;
    this.count--;
    for (let i = levels.length; i > 0; i--) {
      const n = path[i];
      if (n.msg !== null || n.hasChildren) break;
      path[i - 1].deleteChild(levels[i - 1]);
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
  for (const [, child] of node.children()) collectAll(child, out);
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
    for (const [name, child] of node.children()) {
      if (i === 0 && name.startsWith("$")) continue;
      collectAll(child, out);
    }
    return;
  }
  if (level === "+") {
    for (const [name, child] of node.children()) {
      if (i === 0 && name.startsWith("$")) continue;
      walk(child, f, i + 1, out);
    }
    return;
  }
  const next = node.child(level);
  if (next !== undefined) walk(next, f, i + 1, out);
}
