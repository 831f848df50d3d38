/**
 * The flat list of config keys, derived from the schema so that env variables, flags and the
 * "did you mean" hints can never drift from what the schema accepts.
 */
import { CONFIG_TABLE } from "./schema.ts";
import type { KeyKind, Shape } from "./spec.ts";

export type { KeyKind };

/** One leaf key of the configuration. */
export interface KeyInfo {
  /** Dotted path, e.g. `listeners.ws.path`. */
  path: string;
  /** TOML table holding the key, e.g. `listeners.ws`. */
  section: string;
  kind: KeyKind;
  /** e.g. `MCLOUDTT_LISTENERS_WS_PATH`. */
  envName: string;
  /** e.g. `--listeners.ws.path`. */
  flag: string;
}

/** Prefix of every configuration environment variable. */
export const ENV_PREFIX = "MCLOUDTT_";

/** Name of the one MCLOUDTT_* variable that is not a key: the config file path. */
export const ENV_CONFIG_FILE = "MCLOUDTT_CONFIG";

/** Environment variable that sets the key at `path`. */
export function envNameFor(path: string): string {
  return ENV_PREFIX + path.replaceAll(".", "_").toUpperCase();
}

function collect(shape: Shape, prefix: string[], out: KeyInfo[]): void {
  for (const [name, child] of Object.entries(shape)) {
    const path = [...prefix, name];
    if (child.kind === "table") {
      collect(child.shape, path, out);
      continue;
    }
    const dotted = path.join(".");
    out.push({
      path: dotted,
      section: prefix.join("."),
      kind: child.kind,
      envName: envNameFor(dotted),
      flag: `--${dotted}`,
    });
  }
}

function buildKeys(): readonly KeyInfo[] {
  const out: KeyInfo[] = [];
  collect(CONFIG_TABLE.shape, [], out);
  // Env names flatten "." and "_" together; two keys sharing one would make env lookup ambiguous.
  const seen = new Set<string>();
  for (const key of out) {
    if (seen.has(key.envName)) throw new Error(`two config keys map to ${key.envName}`);
    seen.add(key.envName);
  }
  return out;
}

/** Every leaf key, in schema (and config.toml) order. */
export const KEYS: readonly KeyInfo[] = buildKeys();

/** Every TOML table name (`general`, `listeners`, `listeners.tcp`, ...). */
export const SECTIONS: readonly string[] = [
  ...new Set(
    KEYS.flatMap((k) => k.section.split(".").map((_, i, a) => a.slice(0, i + 1).join("."))),
  ),
];

const byPath = new Map(KEYS.map((k) => [k.path, k]));
const byEnv = new Map(KEYS.map((k) => [k.envName, k]));

/** The key at a dotted path, if there is one. */
export function keyByPath(path: string): KeyInfo | undefined {
  return byPath.get(path);
}

/** The key an environment variable sets, if there is one. */
export function keyByEnv(name: string): KeyInfo | undefined {
  return byEnv.get(name);
}

const TRUE_WORDS = new Set(["true", "1", "yes"]);
const FALSE_WORDS = new Set(["false", "0", "no"]);

function textToBool(text: string): boolean | string {
  const word = text.trim().toLowerCase();
  if (TRUE_WORDS.has(word)) return true;
  if (FALSE_WORDS.has(word)) return false;
  return text;
}

/**
 * Turn an env/flag string into the key's type. Text that does not convert is returned unchanged,
 * so the schema rejects it with the same message a wrong TOML value would get.
 */
export function coerceText(kind: KeyKind, text: string): unknown {
  switch (kind) {
    case "bool":
      return textToBool(text);
    case "auto-bool":
      return text.trim().toLowerCase() === "auto" ? "auto" : textToBool(text);
    case "int": {
      const trimmed = text.trim();
      // Beyond 2^53 Number() rounds: the message would then quote a value nobody typed.
      const n = /^[+-]?\d+$/.test(trimmed) ? Number(trimmed) : NaN;
      return Number.isSafeInteger(n) ? n : text;
    }
    case "string":
      return text;
    case "list":
      // A comma-separated list: `MCLOUDTT_BIGQUERY_EXCLUDE='$SYS/#,tmp/#'`; "" is the empty list.
      return text.split(",").map((s) => s.trim()).filter((s) => s !== "");
  }
}
