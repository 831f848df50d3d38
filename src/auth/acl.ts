/**
 * Topic access control list: a line-based file of rules, default deny once loaded.
 *
 * ```
 * pattern readwrite devices/%c/#   # everyone; %u = username, %c = client id
 * user alice                       # following topic lines apply to username alice
 * topic read sensors/#
 * client dev-42                    # following topic lines apply to client id dev-42
 * topic readwrite fleet/42/#
 * anonymous                        # following topic lines apply to clients without a username
 * topic read public/#
 * ```
 *
 * Tokens are separated by whitespace, so topics and names containing spaces cannot be written in
 * a rule (a `%u` substitution may still produce one). After a line's fixed tokens only a `#`
 * comment may follow; a lone `#` in the topic position is the wildcard, not a comment.
 */

import type { SubscribeAccess as SubscribeAccessCode } from "./types.ts";

/** Who is asking: the connected client's username (undefined when anonymous) and client id. */
export interface AclContext {
  readonly username?: string;
  readonly clientId: string;
}

/** Raised when an ACL file cannot be read or a line is malformed. */
export class AclParseError extends Error {
  override name = "AclParseError";

  constructor(
    message: string,
    readonly source: string,
    readonly line?: number,
  ) {
    super(line === undefined ? `${source}: ${message}` : `${source}:${line}: ${message}`);
  }
}

const READ = 1;
const WRITE = 2;
const DENY = 4;

// Maps, not object literals, so that names like "constructor" are not found on the prototype.
const ACCESS: ReadonlyMap<string, number> = new Map([
  ["read", READ],
  ["write", WRITE],
  ["readwrite", READ | WRITE],
  ["deny", DENY],
]);

const SHARE_PREFIX = "$share/";

/** The answer to a SUBSCRIBE: refused, granted, or granted with per-message checks. */
export const SubscribeAccess = {
  Denied: 0,
  Granted: 1,
  Filtered: 2,
} as const satisfies Record<string, SubscribeAccessCode>;

/** A pattern level: literal text, a wildcard, or text with %u / %c holes filled per check. */
type Level =
  | { readonly kind: "fixed"; readonly text: string }
  | { readonly kind: "template"; readonly parts: readonly Part[] };

/** Template pieces: literal text or a placeholder. */
type Part = string | typeof USERNAME | typeof CLIENT_ID;

const USERNAME = Symbol("username");
const CLIENT_ID = Symbol("clientId");

interface Rule {
  readonly access: number;
  readonly levels: readonly Level[];
  /** The levels when the pattern has no placeholders, so checks need not allocate. */
  readonly resolved?: readonly string[];
}

interface Substitutions {
  readonly username: string | undefined;
  readonly clientId: string | undefined;
}

/** A parsed ACL; immutable, so reload by loading anew. */
export class Acl {
  readonly #patterns: readonly Rule[];
  readonly #users: ReadonlyMap<string, readonly Rule[]>;
  readonly #clients: ReadonlyMap<string, readonly Rule[]>;
  readonly #anonymous: readonly Rule[];

  private constructor(
    patterns: Rule[],
    users: Map<string, Rule[]>,
    clients: Map<string, Rule[]>,
    anonymous: Rule[],
  ) {
    this.#patterns = patterns;
    this.#users = users;
    this.#clients = clients;
    this.#anonymous = anonymous;
  }

  /** Reads and parses the ACL file at `path`. */
  static async load(path: string): Promise<Acl> {
    let text: string;
    try {
      text = await Deno.readTextFile(path);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      throw new AclParseError(`cannot read: ${message}`, path);
    }
    return Acl.parse(text, path);
  }

  /** Parses ACL text; `source` names the file in error messages. */
  static parse(text: string, source: string): Acl {
    const patterns: Rule[] = [];
    const users = new Map<string, Rule[]>();
    const clients = new Map<string, Rule[]>();
    const anonymous: Rule[] = [];
    let section: Rule[] | undefined;

    const lines = text.replace(/^\uFEFF/, "").split("\n");
    for (let i = 0; i < lines.length; i++) {
      const fail: (message: string) => never = (message) => {
        throw new AclParseError(message, source, i + 1);
      };
      const tokens = lines[i].trim().split(/\s+/);
      const keyword = tokens[0];
      if (keyword === "" || keyword.startsWith("#")) continue;
      const arity = ARITY.get(keyword);
      if (arity === undefined) {
        fail(`unknown directive '${keyword}' (expected pattern, topic, user, client or anonymous)`);
      }
      // A name starting with '#' is far more likely a comment after a forgotten name.
      if (tokens.length < arity + 1 || (arity === 1 && tokens[1].startsWith("#"))) {
        fail(`'${keyword}' needs ${describeArity(keyword)}`);
      }
      if (tokens.length > arity + 1 && !tokens[arity + 1].startsWith("#")) {
        fail(`unexpected '${tokens[arity + 1]}' after ${keyword} line (comments start with #)`);
      }
      switch (keyword) {
        case "pattern":
          patterns.push(compileRule(tokens[1], tokens[2], fail));
          break;
        case "topic":
          if (section === undefined) {
            fail("'topic' must follow a 'user', 'client' or 'anonymous' line");
          }
          section.push(compileRule(tokens[1], tokens[2], fail));
          break;
        case "user":
          section = sectionFor(users, tokens[1]);
          break;
        case "client":
          section = sectionFor(clients, tokens[1]);
          break;
        case "anonymous":
          section = anonymous;
          break;
      }
    }
    return new Acl(patterns, users, clients, anonymous);
  }

  /** Whether the client may publish to the concrete `topic`. */
  canPublish(ctx: AclContext, topic: string): boolean {
    if (!isTopicName(topic)) return false;
    return this.#decide(ctx, WRITE, topic.split("/"), filterMatches, filterMatches);
  }

  /** Whether the client may receive a message published to the concrete `topic`. */
  canReceive(ctx: AclContext, topic: string): boolean {
    if (!isTopicName(topic)) return false;
    return this.#decide(ctx, READ, topic.split("/"), filterMatches, filterMatches);
  }

  /**
   * Whether the client may subscribe to `filter` (a `$share/<group>/` prefix is checked on the
   * inner filter): see `subscribeAccess`.
   */
  canSubscribe(ctx: AclContext, filter: string): boolean {
    return this.subscribeAccess(ctx, filter) !== SubscribeAccess.Denied;
  }

  /**
   * What a subscription to `filter` may receive. Denied when no read rule can match any topic of
   * the filter, or a deny rule matches every topic of it. Granted when one read rule covers every
   * topic the filter can match and no deny rule can match any of them: no message needs checking.
   * Otherwise Filtered: granted, and each message is checked with `canReceive` at delivery.
   */
  subscribeAccess(ctx: AclContext, filter: string): SubscribeAccessCode {
    const inner = unshare(filter);
    if (inner === undefined || !isFilter(inner)) return SubscribeAccess.Denied;
    const subject = inner.split("/");
    let readable = false;
    let covered = false;
    let denied = false;
    for (const [rule, pattern] of this.#applicable(ctx)) {
      if (rule.access & DENY) {
        if (filterCovers(pattern, subject)) return SubscribeAccess.Denied;
        if (!denied && filtersIntersect(pattern, subject)) denied = true;
      } else if ((rule.access & READ) && !covered && filtersIntersect(pattern, subject)) {
        readable = true;
        if (filterCovers(pattern, subject)) covered = true;
      }
    }
    if (!readable) return SubscribeAccess.Denied;
    return covered && !denied ? SubscribeAccess.Granted : SubscribeAccess.Filtered;
  }

  /** The rule sets that apply to `ctx`: everyone's, its user's (or anonymous), its client id's. */
  #groupsFor(ctx: AclContext): (readonly Rule[] | undefined)[] {
    return [
      this.#patterns,
      ctx.username === undefined ? this.#anonymous : this.#users.get(ctx.username),
      this.#clients.get(ctx.clientId),
    ];
  }

  /** Every rule that applies to `ctx`, with its pattern resolved for it. */
  *#applicable(ctx: AclContext): Generator<[Rule, readonly string[]]> {
    const subs = substitutions(ctx);
    for (const rules of this.#groupsFor(ctx)) {
      if (rules === undefined) continue;
      for (const rule of rules) {
        const pattern = rule.resolved ?? resolve(rule.levels, subs);
        if (pattern !== undefined) yield [rule, pattern];
      }
    }
  }

  #decide(
    ctx: AclContext,
    wanted: number,
    subject: readonly string[],
    allows: (pattern: readonly string[], subject: readonly string[]) => boolean,
    denies: (pattern: readonly string[], subject: readonly string[]) => boolean,
  ): boolean {
    const subs = substitutions(ctx);
    let allowed = false;
    for (const rules of this.#groupsFor(ctx)) {
      if (rules === undefined) continue;
      for (const rule of rules) {
        // Once allowed, only deny rules can still change the answer.
        if (allowed && (rule.access & DENY) === 0) continue;
        if ((rule.access & (wanted | DENY)) === 0) continue;
        const pattern = rule.resolved ?? resolve(rule.levels, subs);
        if (pattern === undefined) continue;
        if (rule.access & DENY) {
          if (denies(pattern, subject)) return false;
        } else if (allows(pattern, subject)) {
          allowed = true;
        }
      }
    }
    return allowed;
  }
}

const ARITY: ReadonlyMap<string, number> = new Map([
  ["pattern", 2],
  ["topic", 2],
  ["user", 1],
  ["client", 1],
  ["anonymous", 0],
]);

function describeArity(keyword: string): string {
  return keyword === "user" || keyword === "client"
    ? `a ${keyword === "user" ? "username" : "client id"}`
    : "an access (read, write, readwrite or deny) and a topic pattern";
}

function sectionFor(map: Map<string, Rule[]>, key: string): Rule[] {
  let rules = map.get(key);
  if (rules === undefined) {
    rules = [];
    map.set(key, rules);
  }
  return rules;
}

type Fail = (message: string) => never;

function compileRule(accessText: string, pattern: string, fail: Fail): Rule {
  const access = ACCESS.get(accessText);
  if (access === undefined) {
    fail(`unknown access '${accessText}' (expected read, write, readwrite or deny)`);
  }
  if (pattern.startsWith(SHARE_PREFIX) || pattern === "$share") {
    fail(`'${pattern}': write rules for the inner filter; $share subscriptions are checked on it`);
  }
  if (!isFilter(pattern)) {
    fail(`'${pattern}' is not a valid topic filter ('#' must be last, '+' and '#' a whole level)`);
  }
  const levels = pattern.split("/").map(compileLevel);
  const fixed = levels.every((level) => level.kind === "fixed");
  return {
    access,
    levels,
    resolved: fixed ? levels.map((level) => (level as { text: string }).text) : undefined,
  };
}

function compileLevel(text: string): Level {
  if (!/%[uc]/.test(text)) return { kind: "fixed", text };
  const parts: Part[] = [];
  for (const piece of text.split(/(%[uc])/)) {
    if (piece === "%u") parts.push(USERNAME);
    else if (piece === "%c") parts.push(CLIENT_ID);
    else if (piece !== "") parts.push(piece);
  }
  return { kind: "template", parts };
}

/** The %u / %c values of `ctx`, each undefined when unsafe to substitute. */
function substitutions(ctx: AclContext): Substitutions {
  return { username: safeValue(ctx.username), clientId: safeValue(ctx.clientId) };
}

/** A value usable in a substitution, or undefined when it could widen or escape the pattern. */
function safeValue(value: string | undefined): string | undefined {
  if (value === undefined || value === "" || /[+#/]/.test(value)) return undefined;
  return value;
}

/** Fills placeholders; undefined when a needed value is missing or unsafe, so the rule is skipped. */
function resolve(levels: readonly Level[], subs: Substitutions): string[] | undefined {
  const out: string[] = [];
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i];
    if (level.kind === "fixed") {
      out.push(level.text);
      continue;
    }
    let text = "";
    for (const part of level.parts) {
      if (typeof part === "string") {
        text += part;
        continue;
      }
      const value = part === USERNAME ? subs.username : subs.clientId;
      if (value === undefined) return undefined;
      text += value;
    }
    // A value must not turn a rule into one for '$' topics (client id "$SYS" and pattern "%c/#").
    if (i === 0 && text.startsWith("$") && typeof level.parts[0] !== "string") return undefined;
    out.push(text);
  }
  return out;
}

/** Strips `$share/<group>/`; undefined when the share syntax is malformed. */
function unshare(filter: string): string | undefined {
  if (!filter.startsWith(SHARE_PREFIX)) return filter;
  const slash = filter.indexOf("/", SHARE_PREFIX.length);
  if (slash <= SHARE_PREFIX.length) return undefined;
  const group = filter.slice(SHARE_PREFIX.length, slash);
  if (/[+#]/.test(group)) return undefined;
  const inner = filter.slice(slash + 1);
  return inner === "" ? undefined : inner;
}

function isTopicName(topic: string): boolean {
  return topic !== "" && !/[+#\0]/.test(topic);
}

function isFilter(filter: string): boolean {
  if (filter === "" || filter.includes("\0")) return false;
  const levels = filter.split("/");
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i];
    if (level === "#") {
      if (i !== levels.length - 1) return false;
    } else if (level !== "+" && /[+#]/.test(level)) {
      return false;
    }
  }
  return true;
}

const isWildcard = (level: string) => level === "+" || level === "#";

/** MQTT matching of a concrete topic by a filter, including the rule that wildcards skip `$`. */
function filterMatches(filter: readonly string[], topic: readonly string[]): boolean {
  if (isWildcard(filter[0]) && topic[0].startsWith("$")) return false;
  for (let i = 0; i < filter.length; i++) {
    const level = filter[i];
    if (level === "#") return true;
    if (i >= topic.length) return false;
    if (level !== "+" && level !== topic[i]) return false;
  }
  return filter.length === topic.length;
}

/** Whether every topic matched by `filter` is also matched by `pattern`. */
function filterCovers(pattern: readonly string[], filter: readonly string[]): boolean {
  // Wildcards at the start of the pattern never match '$' topics, but a literal '$' filter does.
  if (isWildcard(pattern[0]) && !isWildcard(filter[0]) && filter[0].startsWith("$")) return false;
  for (let i = 0; i < filter.length; i++) {
    const p = pattern[i];
    if (p === "#") return true;
    if (p === undefined) return false;
    const f = filter[i];
    if (f === "#") return false;
    if (f === "+") {
      if (p !== "+") return false;
    } else if (p !== "+" && p !== f) {
      return false;
    }
  }
  // `a/#` also matches `a`, so a trailing '#' covers the filter's exact length.
  return pattern.length === filter.length ||
    (pattern.length === filter.length + 1 && pattern[filter.length] === "#");
}

/** Whether some topic is matched by both filters. */
function filtersIntersect(a: readonly string[], b: readonly string[]): boolean {
  if (startsOnlyWithDollar(a) && isWildcard(b[0])) return false;
  if (startsOnlyWithDollar(b) && isWildcard(a[0])) return false;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] === "#" || b[i] === "#") return true;
    if (a[i] !== "+" && b[i] !== "+" && a[i] !== b[i]) return false;
  }
  if (a.length === b.length) return true;
  // The longer one can still meet the shorter if its only extra level is a '#' (parent match).
  const longer = a.length > b.length ? a : b;
  return longer.length === n + 1 && longer[n] === "#";
}

function startsOnlyWithDollar(filter: readonly string[]): boolean {
  return !isWildcard(filter[0]) && filter[0].startsWith("$");
}
