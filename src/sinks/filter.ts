/**
 * Which topics the topic log keeps: MQTT topic filters to include and to
 * exclude. Runs on the publish path, so answers are cached per topic.
 */
import { filterMatches, isValidFilter } from "../protocol/topic.ts";

/** Most topics whose answer is cached; the cache starts over when full. */
const CACHE_LIMIT = 10_000;

export class TopicSelector {
  private readonly cache = new Map<string, boolean>();
  private readonly everything: boolean;

  constructor(readonly include: readonly string[], readonly exclude: readonly string[]) {
    for (const f of [...include, ...exclude]) {
      if (!isValidFilter(f)) throw new Error(`"${f}" is not a valid MQTT topic filter`);
    }
    // The default (`#`, nothing excluded) needs no lookup: `#` matches every topic not starting with "$".
    this.everything = include.length === 1 && include[0] === "#" && exclude.length === 0;
  }

  /** True when `topic` matches an include filter and no exclude filter. */
  accepts(topic: string): boolean {
    if (this.everything) return topic.charCodeAt(0) !== 0x24; // "$"
    let hit = this.cache.get(topic);
    if (hit === undefined) {
      hit = this.include.some((f) => filterMatches(f, topic)) &&
        !this.exclude.some((f) => filterMatches(f, topic));
      if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
      this.cache.set(topic, hit);
    }
    return hit;
  }
}
