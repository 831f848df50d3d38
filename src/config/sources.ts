/**
 * Turns each configuration source (TOML file, environment, flags, an in-process object) into a
 * layer of raw values plus a note of where every value came from, for error messages.
 */
import { parse as parseToml, TomlError } from "smol-toml";
import { ConfigError, shownName } from "./errors.ts";
import {
  coerceText,
  ENV_CONFIG_FILE,
  ENV_PREFIX,
  keyByEnv,
  keyByPath,
  type KeyInfo,
  KEYS,
} from "./keys.ts";
import { nearest } from "./suggest.ts";
import { isTable } from "./spec.ts";

export { isTable };

/** Where a value came from. */
export type Source =
  | { kind: "file"; path: string }
  | { kind: "env"; name: string }
  | { kind: "flag"; flag: string }
  | { kind: "object"; label: string }
  | { kind: "default" };

/** Raw (unvalidated) nested values from one source, and the source of each dotted path in it. */
export interface Layer {
  values: Record<string, unknown>;
  sources: Map<string, Source>;
}

/** Short human label of a source, as shown in "(from ...)". */
export function sourceLabel(source: Source): string {
  switch (source.kind) {
    case "file":
      return source.path;
    case "env":
      return `env ${source.name}`;
    case "flag":
      return `flag ${source.flag}`;
    case "object":
      return source.label;
    case "default":
      return "default";
  }
}

/**
 * How deep tables are followed when noting sources and merging. The schema's deepest key is three
 * tables down (`listeners.ws.path`), and a table it does not know is reported by its own name, so
 * nothing below this depth is ever looked at. Without the bound, a dotted TOML key 10,000 levels
 * deep (or a cyclic object given to resolveConfig) overflowed the stack with a RangeError.
 */
const MAX_DEPTH = 8;

function notePaths(
  value: Record<string, unknown>,
  prefix: string,
  source: Source,
  out: Map<string, Source>,
  depth = 1,
): void {
  for (const [name, child] of Object.entries(value)) {
    const path = prefix ? `${prefix}.${name}` : name;
    out.set(path, source);
    if (isTable(child) && depth < MAX_DEPTH) notePaths(child, path, source, out, depth + 1);
  }
}

function setPath(target: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split(".");
  let node = target;
  for (const part of parts.slice(0, -1)) {
    const next = node[part];
    node = isTable(next) ? next : (node[part] = {});
  }
  node[parts[parts.length - 1]] = value;
}

function layerFromKeys(entries: { key: KeyInfo; text: string; source: Source }[]): Layer {
  const layer: Layer = { values: {}, sources: new Map() };
  for (const { key, text, source } of entries) {
    setPath(layer.values, key.path, coerceText(key.kind, text));
    layer.sources.set(key.path, source);
  }
  return layer;
}

/** A layer holding a plain object, e.g. what an embedder passes to resolveConfig. */
export function objectLayer(values: Record<string, unknown>, source: Source): Layer {
  const sources = new Map<string, Source>();
  notePaths(values, "", source, sources);
  return { values, sources };
}

/** Parse TOML text read from `label`; syntax errors become a ConfigError with line and column. */
export function tomlLayer(text: string, label: string): Layer {
  let values: Record<string, unknown>;
  try {
    values = parseToml(text);
  } catch (e) {
    if (!(e instanceof TomlError)) throw e;
    const reason = e.message.split("\n")[0].replace(/^Invalid TOML document:\s*/, "");
    throw new ConfigError(
      `${label} line ${e.line}, column ${e.column}: invalid TOML: ${reason}; fix the syntax there`,
      { source: label },
      { cause: e },
    );
  }
  return objectLayer(values, { kind: "file", path: label });
}

/** The MCLOUDTT_<SECTION>_<KEY> variables of `env`; any other MCLOUDTT_* name is an error. */
export function envLayer(env: Readonly<Record<string, string | undefined>>): Layer {
  const entries: { key: KeyInfo; text: string; source: Source }[] = [];
  for (const [name, text] of Object.entries(env)) {
    if (!name.startsWith(ENV_PREFIX) || name === ENV_CONFIG_FILE || text === undefined) continue;
    const key = keyByEnv(name);
    if (!key) {
      const guess = nearest(name, [...KEYS.map((k) => k.envName), ENV_CONFIG_FILE]);
      const hint = guess ? ` (did you mean ${guess}?)` : "";
      throw new ConfigError(
        `${shownName(name)} (from environment): unknown variable${hint}; rename or unset it ` +
          `(variables are ${ENV_PREFIX}<SECTION>_<KEY>, e.g. ${KEYS[0].envName})`,
        { key: name, source: "environment" },
      );
    }
    entries.push({ key, text, source: { kind: "env", name } });
  }
  return layerFromKeys(entries);
}

/** Config flags split off the command line. */
export interface SplitArgs {
  /** Value of `--config`, if given. */
  configFile?: string;
  /** Layer built from the `--<section>.<key>` flags. */
  layer: Layer;
  /** All other arguments, in order, untouched (everything from a bare `--` on included). */
  rest: string[];
}

/**
 * Take `--config PATH` and `--<section>.<key> VALUE` (or `=VALUE`) flags out of `args`. A flag
 * counts as a config flag when its name is `config` or contains a dot; others are left in `rest`.
 */
export function splitArgs(args: readonly string[]): SplitArgs {
  const rest: string[] = [];
  const entries: { key: KeyInfo; text: string; source: Source }[] = [];
  let configFile: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      rest.push(...args.slice(i));
      break;
    }
    const body = arg.startsWith("--") ? arg.slice(2) : "";
    const eq = body.indexOf("=");
    const name = eq < 0 ? body : body.slice(0, eq);
    if (name !== "config" && !name.includes(".")) {
      rest.push(arg);
      continue;
    }
    const flag = `--${name}`;
    const key = name === "config" ? undefined : keyByPath(name);
    if (name !== "config" && !key) {
      const guess = nearest(flag, KEYS.map((k) => k.flag));
      const hint = guess ? ` (did you mean ${guess}?)` : "";
      throw new ConfigError(
        `${shownName(flag)} (from command line): unknown flag${hint}; ` +
          `config flags are --<section>.<key>=<value>, e.g. ${KEYS[0].flag}=false`,
        { key: flag, source: "command line" },
      );
    }
    let text: string;
    if (eq >= 0) {
      text = body.slice(eq + 1);
    } else if (i + 1 < args.length && !args[i + 1].startsWith("--")) {
      text = args[++i];
    } else {
      throw new ConfigError(
        `${flag} (from command line): needs a value; write ${flag}=<value> or ${flag} <value>`,
        { key: flag, source: "command line" },
      );
    }
    if (key) entries.push({ key, text, source: { kind: "flag", flag } });
    else configFile = text;
  }
  return { configFile, layer: layerFromKeys(entries), rest };
}

/** Deep-merge layers, later ones winning, keeping the source of every value that survives. */
export function mergeLayers(layers: readonly Layer[]): Layer {
  const merged: Layer = { values: {}, sources: new Map() };
  const mergeInto = (
    target: Record<string, unknown>,
    from: Record<string, unknown>,
    depth: number,
  ): Record<string, unknown> => {
    for (const [name, value] of Object.entries(from)) {
      const existing = target[name];
      // Below MAX_DEPTH a table is taken as it is: no key lives there (see notePaths).
      if (!isTable(value) || depth >= MAX_DEPTH) target[name] = value;
      else if (isTable(existing)) mergeInto(existing, value, depth + 1);
      else target[name] = mergeInto({}, value, depth + 1);
    }
    return target;
  };
  for (const layer of layers) {
    mergeInto(merged.values, layer.values, 1);
    for (const [path, source] of layer.sources) merged.sources.set(path, source);
  }
  return merged;
}
