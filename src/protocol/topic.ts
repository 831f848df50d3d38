/** Topic name and topic filter rules (MQTT 5 section 4.7, 4.8.2). */

/** Limits that apply to every topic name and filter. */
export interface TopicLimits {
  maxTopicLength: number;
  maxTopicLevels: number;
}

/** A parsed topic filter; `group` is set for `$share/{group}/{filter}`. */
export interface TopicFilter {
  /** The filter as the client sent it, including any `$share/group/` prefix. */
  key: string;
  /** The filter to match topics against (without the share prefix). */
  filter: string;
  group: string | null;
}

/** Why a filter was refused: a reason code fit for SUBACK/UNSUBACK. */
export type FilterProblem = "invalid" | "too-long";

function levelCount(s: string): number {
  let n = 1;
  for (let i = s.indexOf("/"); i !== -1; i = s.indexOf("/", i + 1)) n++;
  return n;
}

function utf8Length(s: string): number {
  // Most topics are ASCII; only count precisely when they are not.
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c > 0x7f) {
      // A surrogate pair is 2 UTF-16 units and 4 UTF-8 bytes: 2 more, like a 3-byte character.
      n += c > 0x7ff ? 2 : 1;
      if (c >= 0xd800 && c <= 0xdbff) i++;
    }
  }
  return n;
}

/** True when the string is a valid topic filter body (no share prefix). */
export function isValidFilter(f: string): boolean {
  if (f.length === 0) return false;
  let start = 0;
  for (;;) {
    const slash = f.indexOf("/", start);
    const end = slash === -1 ? f.length : slash;
    const len = end - start;
    for (let i = start; i < end; i++) {
      const c = f.charCodeAt(i);
      if (c === 0x23 /* # */) {
        if (len !== 1 || slash !== -1) return false;
      } else if (c === 0x2b /* + */) {
        if (len !== 1) return false;
      }
    }
    if (slash === -1) return true;
    start = slash + 1;
  }
}

/** Parses a SUBSCRIBE/UNSUBSCRIBE filter, including shared subscriptions. */
export function parseFilter(key: string, limits: TopicLimits): TopicFilter | FilterProblem {
  let filter = key;
  let group: string | null = null;
  if (key.startsWith("$share/")) {
    const slash = key.indexOf("/", 7);
    if (slash === -1) return "invalid";
    group = key.slice(7, slash);
    filter = key.slice(slash + 1);
    if (group.length === 0 || /[+#]/.test(group)) return "invalid";
  }
  if (!isValidFilter(filter)) return "invalid";
  if (utf8Length(filter) > limits.maxTopicLength || levelCount(filter) > limits.maxTopicLevels) {
    return "too-long";
  }
  return { key, filter, group };
}

/** Why a topic name cannot be published to, or null when it is fine. */
export function topicNameProblem(
  topic: string,
  limits: TopicLimits,
): "invalid" | "too-long" | null {
  if (topic.length === 0) return "invalid";
  if (topic.includes("+") || topic.includes("#")) return "invalid";
  if (utf8Length(topic) > limits.maxTopicLength || levelCount(topic) > limits.maxTopicLevels) {
    return "too-long";
  }
  return null;
}

/** Reference matcher: does `filter` match `topic`? Used by tests and retained lookup. */
export function filterMatches(filter: string, topic: string): boolean {
  if (topic.startsWith("$") && (filter.startsWith("+") || filter.startsWith("#"))) return false;
  const f = filter.split("/");
  const t = topic.split("/");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === "#") return true;
    if (i >= t.length) return false;
    if (f[i] !== "+" && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}
