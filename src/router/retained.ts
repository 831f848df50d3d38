/**
 * Retained messages. `RetainedStore` is the interface a cluster backend
 * implements; `MemoryRetainedStore` keeps them in a trie over topic levels so
 * a wildcard subscription finds its retained messages without scanning all,
 * within limits on their number and (approximate) memory.
 */
import type { Message } from "../protocol/message.ts";
import { Levels } from "./levels.ts";
import { newerOrSame, NO_VERSION } from "./retain_version.ts";

export interface RetainedStore {
  /**
   * Stores `msg` as the retained message of its topic, replacing any earlier
   * one; false (and nothing stored) when that would pass the store's limits.
   * With a `version` (retain_version.ts), an update older than the topic's
   * current one (or than its recent deletion) changes nothing (true: it was
   * not refused, it lost).
   */
  set(msg: Message, version?: string): boolean;
  /** Whether `set(msg)` would stay within the limits (checked before a publish is accepted). */
  fits(msg: Message): boolean;
  /** The limit `set(msg)` would pass (its configuration key), or null when it fits. */
  limitPassed(msg: Message): RetainedLimit | null;
  /**
   * The limit every message of a topic that holds none would pass now (as `limitPassed` would
   * name it), or null while the smallest one could still be set: once it is not null, a start
   * restoring stored retained messages reads no more of them.
   */
  limitReached(): RetainedLimit | null;
  /** How many more messages, and about how many more bytes, the limits allow now. */
  room(): { readonly messages: number; readonly bytes: number };
  /** Removes the retained message of `topic`, if any and not newer than `version`. */
  delete(topic: string, version?: string): void;
  /** Whether `topic` has a retained message. */
  has(topic: string): boolean;
  /** The version (retain_version.ts) of `topic`'s retained message; NO_VERSION when none. */
  versionOf(topic: string): string;
  /**
   * Whether a deletion of `topic` with a version would be remembered now (within the bounds of
   * remembered deletions); a shared store keeps it too only then.
   */
  tombstoneFits?(topic: string): boolean;
  /** Retained messages whose topic matches `filter` (no share prefix). */
  match(filter: string): Message[];
  /**
   * The retained messages matching `filter`, found lazily as the iterator is
   * advanced, so a subscription over many of them is streamed at its
   * receiver's pace without a snapshot. A topic's message is yielded as it is
   * when the walk reaches it, and only if it was set before the cursor was
   * made: one set (or replaced) later reaches the new subscriber live, and a
   * deleted one is not yielded.
   */
  cursor(filter: string): Iterator<Message>;
  /** Number of retained messages. */
  readonly size: number;
}

/** A retained limit, named by its configuration key (in logs and metric labels). */
export type RetainedLimit = "max_retained_messages" | "max_retained_bytes";

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

/**
 * The least `retainedBytes` of any message: a one-character topic, one level, no payload or
 * properties.
 */
const LEAST_RETAINED_BYTES = MESSAGE_OVERHEAD + LEVEL_OVERHEAD + 2 + 1;

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
  /** The store's `generation` when `msg` was set: cursors skip messages newer than themselves. */
  gen = 0;
  /** The version of the update that set `msg` (retain_version.ts). */
  ver = NO_VERSION;
}

/**
 * How long, and for how many topics, a deletion's version is remembered: an older update of the
 * topic that arrives later (from another node) must not bring the message back. Updates of one
 * topic from two nodes reach each node within milliseconds; a node behind its inbox by more than
 * this could still bring back a deleted message.
 */
export const TOMBSTONE_MS = 60_000;
export const TOMBSTONES_MAX = 10_000;
/**
 * Topic bytes the remembered deletions may hold (in memory, UTF-16): clears of topics that hold
 * nothing cost nothing else, so without it a client clearing long absent topics grew memory
 * past the retained limits. When full of deletions younger than TOMBSTONE_MS, a new one is not
 * remembered (nor in Redis): a late older update of that topic could then bring it back.
 */
export const TOMBSTONE_BYTES_MAX = 1 << 20;
const TOMBSTONE_OVERHEAD = 64;

function tombstoneCost(topic: string): number {
  return topic.length * 2 + TOMBSTONE_OVERHEAD;
}

const UNLIMITED: RetainedLimits = { maxMessages: Infinity, maxBytes: Infinity };

export class MemoryRetainedStore implements RetainedStore {
  private root = new RNode();
  private count = 0;
  private bytesHeld = 0;
  /** Counts every set, so a cursor tells the messages it may yield from later ones. */
  private generation = 0;
  /** Versions of recent deletions by topic, oldest first, with when they were made. */
  private readonly tombstones = new Map<string, { ver: string; at: number }>();
  private tombstoneBytes = 0;

  constructor(
    private readonly limits: RetainedLimits = UNLIMITED,
    private readonly now: () => number = Date.now,
  ) {}

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

  has(topic: string): boolean {
    return (this.find(topic)?.msg ?? null) !== null;
  }

  versionOf(topic: string): string {
    const node = this.find(topic);
    return node === undefined || node.msg === null ? NO_VERSION : node.ver;
  }

  fits(msg: Message): boolean {
    return this.limitPassed(msg) === null;
  }

  limitPassed(msg: Message): RetainedLimit | null {
    const old = this.find(msg.topic)?.msg ?? null;
    const count = this.count + (old === null ? 1 : 0);
    const bytes = this.bytesHeld + retainedBytes(msg) - (old === null ? 0 : retainedBytes(old));
    // A replacement that does not grow the store is always allowed, even over the limits.
    if (old !== null && bytes <= this.bytesHeld) return null;
    if (count > this.limits.maxMessages) return "max_retained_messages";
    return bytes > this.limits.maxBytes ? "max_retained_bytes" : null;
  }

  room(): { readonly messages: number; readonly bytes: number } {
    return {
      messages: Math.max(0, this.limits.maxMessages - this.count),
      bytes: Math.max(0, this.limits.maxBytes - this.bytesHeld),
    };
  }

  limitReached(): RetainedLimit | null {
    if (this.count + 1 > this.limits.maxMessages) return "max_retained_messages";
    return this.bytesHeld + LEAST_RETAINED_BYTES > this.limits.maxBytes
      ? "max_retained_bytes"
      : null;
  }

  set(msg: Message, version = NO_VERSION): boolean {
    if (version !== NO_VERSION) {
      const current = this.find(msg.topic);
      if (current?.msg != null && !newerOrSame(version, current.ver)) return true;
      const tomb = this.tombstones.get(msg.topic);
      if (tomb !== undefined) {
        if (!newerOrSame(version, tomb.ver)) return true;
        this.tombstones.delete(msg.topic);
        this.tombstoneBytes -= tombstoneCost(msg.topic);
      }
    }
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
    node.gen = ++this.generation;
    node.ver = version;
    this.bytesHeld += retainedBytes(msg);
    return true;
  }

  delete(topic: string, version = NO_VERSION): void {
    if (version !== NO_VERSION) {
      const current = this.find(topic);
      if (current?.msg != null && !newerOrSame(version, current.ver)) return;
      this.remember(topic, version);
    }
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

  tombstoneFits(topic: string): boolean {
    const t = this.tombstones;
    const now = this.now();
    // Oldest first: those past TOMBSTONE_MS go.
    for (const [k, v] of t) {
      if (now - v.at < TOMBSTONE_MS) break;
      t.delete(k);
      this.tombstoneBytes -= tombstoneCost(k);
    }
    if (t.has(topic)) return true;
    return t.size < TOMBSTONES_MAX &&
      this.tombstoneBytes + tombstoneCost(topic) <= TOMBSTONE_BYTES_MAX;
  }

  /** Keeps a deletion's version, within TOMBSTONE_MS, TOMBSTONES_MAX and TOMBSTONE_BYTES_MAX. */
  private remember(topic: string, ver: string): void {
    if (!this.tombstoneFits(topic)) return;
    const t = this.tombstones;
    const old = t.get(topic);
    if (old !== undefined) {
      if (!newerOrSame(ver, old.ver)) return;
      t.delete(topic);
    } else this.tombstoneBytes += tombstoneCost(topic);
    t.set(topic, { ver, at: this.now() });
  }

  /** Deletions remembered (for tests). */
  get tombstoneCount(): number {
    return this.tombstones.size;
  }

  match(filter: string): Message[] {
    const out: Message[] = [];
    const c = this.cursor(filter);
    for (let r = c.next(); !r.done; r = c.next()) out.push(r.value);
    return out;
  }

  cursor(filter: string): Iterator<Message> {
    return walk(this.root, filter.split("/"), this.generation);
  }
}

/** A node still to visit: `i` is the filter level it is matched against, ALL below a `#`. */
interface Frame {
  node: RNode;
  i: number;
  /** Its children still to visit, once it was entered (`#` and `+` levels). */
  kids: Iterator<[string, RNode]> | null;
}

const ALL = -1;

/**
 * Depth-first walk of the nodes matching `f`, with an explicit stack (a
 * generator per level would cost a delegation per level for every message).
 * Map iterators stay valid while the store changes, so the walk may be
 * suspended between messages for as long as its receiver needs.
 */
function* walk(root: RNode, f: string[], before: number): Generator<Message, void, undefined> {
  const stack: Frame[] = [{ node: root, i: 0, kids: null }];
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    if (top.kids === null) {
      const { node, i } = top;
      if (i === f.length) {
        stack.pop();
        if (node.msg !== null && node.gen <= before) yield node.msg;
        continue;
      }
      const level = i === ALL ? "#" : f[i];
      if (level !== "#" && level !== "+") {
        stack.pop();
        const next = node.child(level);
        if (next !== undefined) stack.push({ node: next, i: i + 1, kids: null });
        continue;
      }
      // "a/#" matches "a" itself and everything below (not the root: "#" is no topic).
      if (level === "#" && i !== 0 && node.msg !== null && node.gen <= before) {
        top.kids = node.children();
        yield node.msg;
      } else {
        top.kids = node.children();
      }
      continue;
    }
    const r = top.kids.next();
    if (r.done) {
      stack.pop();
      continue;
    }
    const [name, child] = r.value;
    // A wildcard at the root does not match topics beginning with "$" [MQTT-4.7.2-1].
    if (top.i === 0 && name.startsWith("$")) continue;
    const wild = top.i === ALL || f[top.i] === "#";
    stack.push({ node: child, i: wild ? ALL : top.i + 1, kids: null });
  }
}
