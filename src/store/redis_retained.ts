/**
 * Reading the retained messages of the Redis store in topic order (UTF-16 code units, as
 * JavaScript compares strings), a page at a time, for a node's start.
 *
 * Redis keeps the retained topics in a set (`P:{ret}:index`), in no order, and each message in
 * a string of its own (`P:{ret}:t:<topic>`). The pages come from windows of the first
 * `retained_scan_topics` topics (in topic order) after the last one handed over: one SSCAN of
 * the index per window, which holds topics only, never payloads; then, for one page's topics at
 * a time, their sizes (STRLEN) and the messages that fit the page's bytes (MGET). A start that
 * keeps few messages reads one window and one page; one that keeps more than a window holds
 * scans the index again for each further window (the index's size times the windows, in
 * time, not in memory).
 */
import type { Buffer } from "node:buffer";
import { getLogger } from "@logtape/logtape";
import { CorruptValueError, decodeMessage } from "./redis_codec.ts";
import type { RedisKeys } from "./redis_keys.ts";
import type { RedisClient } from "./redis.ts";
import {
  compareTopics,
  type RetainedCount,
  type RetainedPageSize,
  type StoredMessage,
} from "./types.ts";

const log = getLogger(["mcloudtt", "store", "redis"]);

/** Default of `[redis] retained_scan_topics`. */
export const DEFAULT_RETAINED_SCAN_TOPICS = 100_000;

/** Members an SSCAN step asks for (a hint to Redis). */
const SCAN_COUNT = 1000;

export class RetainedReader {
  private readonly windowTopics: number;

  constructor(
    private readonly client: RedisClient,
    private readonly keys: RedisKeys,
    /** `[redis] retained_scan_topics`. */
    windowTopics = DEFAULT_RETAINED_SCAN_TOPICS,
  ) {
    this.windowTopics = Math.max(1, windowTopics);
  }

  /** See `Store.retainedPages`. Expired messages (gone from Redis) leave the index. */
  async *pages(size: RetainedPageSize, after?: string): AsyncIterable<StoredMessage[]> {
    let from = after ?? null;
    for (;;) {
      const window = await this.window(from);
      let i = 0;
      while (i < window.topics.length) {
        const topics = window.topics.slice(i, i + Math.max(1, size.messages));
        const lengths = await this.lengths(topics);
        let n = 0;
        for (let bytes = 0; n < topics.length && bytes < size.bytes; n++) bytes += lengths[n];
        n = Math.max(1, n);
        const page = await this.values(topics.slice(0, n));
        i += n;
        if (page.length > 0) yield page;
      }
      if (!window.more) return;
      from = window.topics.at(-1)!;
    }
  }

  /**
   * The first `windowTopics` topics of the index after `after` in topic order (one SSCAN,
   * holding at most twice that many), and whether the index holds more after them.
   */
  private async window(after: string | null): Promise<{ topics: string[]; more: boolean }> {
    const n = this.windowTopics;
    let held: string[] = [];
    /** Once `held` was cut to n topics: every topic after this one is past the window. */
    let cutoff: string | null = null;
    let more = false;
    // SSCAN may return a topic twice (the set rehashed meanwhile): cut only distinct ones.
    const cut = () => {
      held = distinctSorted(held);
      if (held.length > n) {
        held.length = n;
        cutoff = held[n - 1];
        more = true;
      }
    };
    await this.scan((topics) => {
      for (const t of topics) {
        if (after !== null && t <= after) continue;
        if (cutoff !== null && t > cutoff) {
          more = true;
          continue;
        }
        held.push(t);
      }
      if (held.length >= 2 * n) cut();
    });
    cut();
    return { topics: held, more };
  }

  /** The stored sizes of the retained messages of `topics` (0 for one that is gone). */
  private async lengths(topics: readonly string[]): Promise<number[]> {
    const p = this.client.pipeline();
    for (const t of topics) p.strlen(this.keys.retained(t));
    const replies = await p.exec();
    return topics.map((_, i) => {
      const [e, v] = replies?.[i] ?? [null, 0];
      if (e) throw e;
      return Number(v) || 0;
    });
  }

  /** The retained messages of `topics`, in their order; the gone ones leave the index. */
  private async values(topics: readonly string[]): Promise<StoredMessage[]> {
    const out: StoredMessage[] = [];
    const values: (Buffer | null)[] = await this.client.mgetBuffer(
      ...topics.map((t) => this.keys.retained(t)),
    );
    const versions = await this.client.mget(...topics.map((t) => this.keys.retainedVersion(t)));
    const gone: string[] = [];
    values.forEach((v, i) => {
      if (v === null) {
        gone.push(topics[i]);
        return;
      }
      try {
        const m = decodeMessage(v);
        if (m.topic !== topics[i]) throw new CorruptValueError("stored under another topic");
        out.push(versions[i] === null ? m : { ...m, version: versions[i]! });
      } catch (e) {
        log.warn("skipped the retained message of {topic}: {error}", {
          topic: topics[i],
          error: e instanceof Error ? e.message : String(e),
        });
      }
    });
    if (gone.length > 0) await this.client.srem(this.keys.retainedIndex, ...gone);
    return out;
  }

  /**
   * See `Store.countRetained`. Topics only: one SSCAN of the index and an EXISTS per step of
   * it. Redis deletes a retained message when it expires (its PX), so none counted has:
   * `expired` is 0. A topic SSCAN returns twice (the set rehashed while it is scanned, by other
   * nodes' writes) is counted twice.
   */
  async count(after: string | null, _now: number): Promise<RetainedCount> {
    let count = 0;
    await this.scan(async (topics) => {
      const past = after === null ? topics : topics.filter((t) => t > after);
      if (past.length > 0) {
        count += await this.client.exists(...past.map((t) => this.keys.retained(t)));
      }
    });
    return { count, expired: 0 };
  }

  /**
   * Every topic of the index, for a `retain-delete-range` (RedisStore.write): the core sends
   * none to a shared store, whose retained messages are the cluster's.
   */
  async allTopics(): Promise<Set<string>> {
    const all = new Set<string>();
    await this.scan((topics) => {
      for (const t of topics) all.add(t);
    });
    return all;
  }

  /** One SSCAN of the index, each step's topics handed to `step` (awaited). */
  private async scan(step: (topics: string[]) => void | Promise<void>): Promise<void> {
    let cursor = "0";
    do {
      const [next, topics] = await this.client.sscan(
        this.keys.retainedIndex,
        cursor,
        "COUNT",
        SCAN_COUNT,
      );
      cursor = next;
      await step(topics);
    } while (cursor !== "0");
  }
}

/** `topics` sorted in topic order, each once (in place). */
function distinctSorted(topics: string[]): string[] {
  topics.sort(compareTopics);
  let n = 0;
  for (let i = 0; i < topics.length; i++) {
    if (i === 0 || topics[i] !== topics[i - 1]) topics[n++] = topics[i];
  }
  topics.length = n;
  return topics;
}
