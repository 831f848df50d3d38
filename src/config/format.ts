/**
 * Turns a schema issue into a one-line ConfigError: which key, its value, where that value came
 * from, what is wrong, and how to fix it in that same place.
 */
import { ConfigError, shownName } from "./errors.ts";
import { envNameFor, keyByPath, KEYS, SECTIONS } from "./keys.ts";
import { isTable, type Layer, type Source, sourceLabel } from "./sources.ts";
import type { Issue } from "./spec.ts";
import { nearest } from "./suggest.ts";

const MAX_VALUE_CHARS = 60;

function showValue(value: unknown): string {
  let text: string;
  if (isTable(value)) text = "{...}";
  else if (typeof value === "string" || Array.isArray(value)) text = JSON.stringify(value);
  // TOML dates: smol-toml's toISOString keeps the form written (date only, local time...).
  else if (value instanceof Date) text = value.toISOString();
  else text = String(value);
  text = text.replace(/\s+/g, " ");
  return text.length > MAX_VALUE_CHARS ? `${text.slice(0, MAX_VALUE_CHARS - 3)}...` : text;
}

function valueAt(values: Record<string, unknown>, path: string, fallback: unknown): unknown {
  let node: unknown = values;
  for (const part of path.split(".")) {
    if (!isTable(node) || !(part in node)) return fallback;
    node = node[part];
  }
  return node;
}

function parentOf(path: string): string {
  const dot = path.lastIndexOf(".");
  return dot < 0 ? "" : path.slice(0, dot);
}

/** "[limits] of config.toml" or "the top level of config.toml". */
function placeInFile(table: string, file: string): string {
  return table ? `[${table}] of ${file}` : `the top level of ${file}`;
}

/** Advice for fixing the value of a known key, phrased for where the value came from. */
function fixFor(path: string, source: Source): string {
  const env = envNameFor(path);
  switch (source.kind) {
    case "file":
      return `set it in ${placeInFile(parentOf(path), source.path)} or ${env}`;
    case "env":
      return `fix or unset ${env}`;
    case "flag":
      return `fix the value of ${source.flag}`;
    case "object":
      return `fix ${path} in the object passed to ${source.label}`;
    case "default":
      return `set it in [${parentOf(path)}] of the config file, ${env} or --${path}`;
  }
}

function removeFix(path: string, source: Source): string {
  switch (source.kind) {
    case "file":
      return `rename or remove it in ${placeInFile(parentOf(path), source.path)}`;
    case "object":
      return `rename or remove it in the object passed to ${source.label}`;
    default:
      return `rename or remove it (in ${sourceLabel(source)})`;
  }
}

/** Source of a path, or of the first value noted under it (an unknown table has no own note). */
function sourceOf(layer: Layer, path: string): Source {
  const exact = layer.sources.get(path);
  if (exact) return exact;
  for (const [noted, source] of layer.sources) {
    if (noted.startsWith(`${path}.`)) return source;
  }
  return { kind: "default" };
}

function unknownKeyError(layer: Layer, path: string): ConfigError {
  const value = valueAt(layer.values, path, undefined);
  const source = sourceOf(layer, path);
  const from = `(from ${sourceLabel(source)})`;
  if (isTable(value)) {
    const guess = nearest(path, SECTIONS);
    const hint = guess ? ` (did you mean [${guess}]?)` : "";
    return new ConfigError(
      `[${shownName(path)}] ${from}: unknown table${hint}; ${removeFix(path, source)}`,
      { key: path, source: sourceLabel(source) },
    );
  }
  const guess = nearest(path, KEYS.map((k) => k.path));
  const hint = guess ? ` (did you mean ${guess}?)` : "";
  return new ConfigError(
    `${shownName(path)} = ${showValue(value)} ${from}: unknown key${hint}; ${
      removeFix(path, source)
    }`,
    { key: path, source: sourceLabel(source) },
  );
}

/**
 * The ConfigError for one schema issue, given the merged layer that was validated. `defaults`
 * supplies values of keys the layers left out (cross-field issues can blame those).
 */
export function issueToError(
  issue: Issue,
  layer: Layer,
  defaults: Record<string, unknown>,
): ConfigError {
  // An issue inside a list (`include.1`) is reported against the key holding the list.
  const base = issue.path.filter((p) => typeof p !== "number").map(String).join(".");
  if (issue.unknownKeys !== undefined) {
    const key = issue.unknownKeys[0];
    return unknownKeyError(layer, base ? `${base}.${key}` : key);
  }
  const params = issue.params ?? {};
  // Blame the first suspect someone actually set: that is the value the reader can change.
  const path = params.blame?.find((p) => layer.sources.has(p)) ?? base;
  const source = sourceOf(layer, path);
  const value = valueAt(layer.values, path, valueAt(defaults, path, undefined));
  const problem = (params.blamed?.[path] ?? issue.message).replace(/\s+/g, " ");
  let fix = params.fix;
  if (!fix) {
    fix = keyByPath(path) || !SECTIONS.includes(path)
      ? fixFor(path, source)
      : `make it a [${path}] table (in ${sourceLabel(source)})`;
  }
  return new ConfigError(
    `${path} = ${showValue(value)} (from ${sourceLabel(source)}): ${problem}; ${fix}`,
    { key: path, source: sourceLabel(source) },
  );
}
