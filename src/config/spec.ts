/**
 * The few value types the configuration is made of, and strict tables of them: each turns a
 * parsed input (`undefined` when nothing set the key) into a typed value or an issue for
 * format.ts. It replaces a general schema library: its modules and the schema built with it were
 * 38,000 heap objects and 4.1 MB, a third of an idle broker's heap, which every mark-compact traced
 * for the life of the process (issue 14). The value types here are a few hundred objects.
 */

/** True for the objects TOML tables and JS literals produce (not Dates, arrays or class instances). */
export function isTable(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** How a text value (from env or a flag) is turned into the key's type before validation. */
export type KeyKind = "bool" | "int" | "auto-bool" | "string" | "list";

/** Extra data attached to cross-field issues so the error formatter can blame the right key. */
export interface CrossFieldParams {
  /** Keys that could be at fault, best first; the first one some source actually set is blamed. */
  blame?: string[];
  /**
   * The problem as said of a blamed key other than the issue's own, by key: the message names
   * the other key, so blaming it with the same words would compare a key with itself.
   */
  blamed?: Record<string, string>;
  /** Replaces the generic "set it in [section] ..." advice. */
  fix?: string;
}

/** One thing wrong with the input. */
export interface Issue {
  /** Where: table and key names, and an index inside a list. */
  readonly path: readonly (string | number)[];
  readonly message: string;
  /** Set for keys a table does not have (`path` is then the table's). */
  readonly unknownKeys?: readonly string[];
  readonly params?: CrossFieldParams;
}

type Path = readonly (string | number)[];

/** A leaf value: its kind (for env and flags) and its parser. */
export interface Leaf<T> {
  readonly kind: KeyKind;
  /** The value, or `undefined` after pushing an issue. */
  parse(input: unknown, path: Path, issues: Issue[]): T | undefined;
}

/** A table: known keys only, each with a default, so a missing table is all defaults. */
export interface Table<S extends Shape> {
  readonly kind: "table";
  readonly shape: S;
  parse(input: unknown, path: Path, issues: Issue[]): Output<S> | undefined;
}

/** The keys of a table. */
export type Shape = { readonly [key: string]: Leaf<unknown> | Table<Shape> };

/** The value a leaf or table yields. */
export type Infer<N> = N extends Leaf<infer T> ? T : N extends Table<infer S> ? Output<S> : never;

/** The object a table of `S` yields. */
export type Output<S extends Shape> = { -readonly [K in keyof S]: Infer<S[K]> };

function leaf<T>(
  kind: KeyKind,
  fallback: T,
  message: string,
  accept: (v: unknown) => v is T,
  check?: (v: T) => string | null,
): Leaf<T> {
  return {
    kind,
    parse(input, path, issues) {
      if (input === undefined) return fallback;
      if (!accept(input)) {
        issues.push({ path, message });
        return undefined;
      }
      const problem = check?.(input) ?? null;
      if (problem !== null) {
        issues.push({ path, message: problem });
        return undefined;
      }
      return input;
    },
  };
}

const isString = (v: unknown): v is string => typeof v === "string";

// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

/**
 * Why a string with a control character in it is refused, or null. No path, name, URL or id in
 * the configuration can hold one: a NUL in a path failed only at start (or in the middle of a
 * message), and a newline in a path broke the one-line messages that quote it.
 */
function controlProblem(v: string): string | null {
  const at = v.search(CONTROL);
  if (at < 0) return null;
  const code = v.charCodeAt(at).toString(16).toUpperCase().padStart(4, "0");
  return `must not contain control characters (U+${code} at character ${at + 1})`;
}

/** An integer in [min, max]. */
export function int(min: number, max: number, fallback: number): Leaf<number> {
  const msg = `must be an integer from ${min} to ${max}`;
  const accept = (v: unknown): v is number =>
    typeof v === "number" && Number.isSafeInteger(v) && v >= min && v <= max;
  return leaf("int", fallback, msg, accept);
}

/** true or false. */
export function bool(fallback: boolean): Leaf<boolean> {
  const accept = (v: unknown): v is boolean => typeof v === "boolean";
  return leaf("bool", fallback, "must be true or false", accept);
}

/** `true | false | "auto"`: "auto" defers to a general switch, see resolve.ts. */
export function autoBool(): Leaf<boolean | "auto"> {
  const accept = (v: unknown): v is boolean | "auto" => typeof v === "boolean" || v === "auto";
  return leaf("auto-bool", "auto", 'must be true, false or "auto"', accept);
}

/** One of the given strings. */
export function oneOf<const T extends readonly [string, ...string[]]>(
  values: T,
  fallback: T[number],
): Leaf<T[number]> {
  const msg = `must be one of ${values.map((v) => JSON.stringify(v)).join(", ")}`;
  const accept = (v: unknown): v is T[number] => (values as readonly unknown[]).includes(v);
  return leaf("string", fallback, msg, accept);
}

/** Any string without control characters. */
export function text(fallback: string): Leaf<string> {
  return leaf("string", fallback, "must be a string", isString, controlProblem);
}

/** Any string at all: a password is opaque bytes to whoever checks it, and is never quoted. */
export function secret(fallback: string): Leaf<string> {
  return leaf("string", fallback, "must be a string", isString);
}

/** A string that passes `test`; `message` says what else is expected. */
export function textWhere(
  fallback: string,
  message: string,
  test: (v: string) => boolean,
  typeMessage = message,
): Leaf<string> {
  return leaf(
    "string",
    fallback,
    typeMessage,
    isString,
    (v) => controlProblem(v) ?? (test(v) ? null : message),
  );
}

/** A string of at least one character. */
export function nonEmptyText(fallback: string): Leaf<string> {
  const msg = "must be a non-empty string";
  return textWhere(fallback, msg, (v) => v.length > 0);
}

/**
 * A list of strings (TOML array; env and flags give it comma-separated). `message` is for a value
 * that is not a list of strings, `itemMessage` for an item that fails `test`.
 */
export function list(
  fallback: readonly string[],
  message: string,
  test: (v: string) => boolean,
  itemMessage = message,
): Leaf<string[]> {
  return {
    kind: "list",
    parse(input, path, issues) {
      if (input === undefined) return [...fallback];
      if (!Array.isArray(input)) {
        issues.push({ path, message });
        return undefined;
      }
      const before = issues.length;
      input.forEach((item, i) => {
        const problem = typeof item !== "string"
          ? message
          : controlProblem(item) ?? (test(item) ? null : itemMessage);
        if (problem !== null) issues.push({ path: [...path, i], message: problem });
      });
      return issues.length === before ? [...input] as string[] : undefined;
    },
  };
}

function isIpv4(v: string): boolean {
  const parts = v.split(".");
  return parts.length === 4 && parts.every((p) => /^(0|[1-9]\d{0,2})$/.test(p) && Number(p) < 256);
}

function isIpv6(v: string): boolean {
  if (!v.includes(":") || !/^[0-9A-Fa-f:.]+$/.test(v)) return false;
  // The URL parser implements the IPv6 address grammar (including an embedded IPv4 tail).
  return URL.canParse(`http://[${v}]/`);
}

const LABEL = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

function isHostname(v: string): boolean {
  const name = v.endsWith(".") ? v.slice(0, -1) : v;
  if (name.length === 0 || name.length > 253) return false;
  const labels = name.split(".");
  // A name ending in a number would read as an (invalid) IPv4 address: "256.0.0.1", "1.2.3.04".
  return labels.every((l) => LABEL.test(l)) && !/^\d+$/.test(labels[labels.length - 1]);
}

/** An IPv4 address, an IPv6 address or a hostname. */
export function isHost(v: string): boolean {
  return isIpv4(v) || isIpv6(v) || isHostname(v);
}

/** An address as the socket layer sees it: IPv6 in its shortest form, a hostname in lower case. */
function canonicalHost(v: string): string {
  if (isIpv6(v)) return new URL(`http://[${v}]/`).hostname.slice(1, -1);
  return v.toLowerCase();
}

/**
 * Whether listening on `a` and on `b`, at one port, collides: the same address, or a wildcard
 * and an address it covers. "0.0.0.0" covers every IPv4 address, "::" every address (Linux
 * listens on it dual-stack). A hostname is compared only as written: what it resolves to is
 * known at start. Comparing only the text let "0.0.0.0" and "127.0.0.1" pass, and the start
 * then failed saying another process had the port.
 */
export function bindsOverlap(a: string, b: string): boolean {
  const [x, y] = [canonicalHost(a), canonicalHost(b)];
  const covers = (wild: string, other: string) =>
    wild === "::" || (wild === "0.0.0.0" && isIpv4(other));
  return x === y || covers(x, y) || covers(y, x);
}

/** A table named `name` (for its message) with exactly the keys of `shape`. */
export function table<const S extends Shape>(name: string, shape: S): Table<S> {
  const keys = Object.keys(shape);
  return {
    kind: "table",
    shape,
    parse(input, path, issues) {
      if (input === undefined) input = {};
      if (!isTable(input)) {
        issues.push({ path, message: `must be a table ([${name}])` });
        return undefined;
      }
      const out: Record<string, unknown> = {};
      for (const key of keys) out[key] = shape[key].parse(input[key], [...path, key], issues);
      const unknown = Object.keys(input).filter((k) => !Object.hasOwn(shape, k));
      if (unknown.length > 0) issues.push({ path, message: "unknown keys", unknownKeys: unknown });
      return out as Output<S>;
    },
  };
}
