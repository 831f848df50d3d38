/**
 * The effective configuration as TOML, for `mcloudtt check-config`: every key with its value and
 * where that value came from (default, file, env, flag), secrets masked.
 */
import { KEYS } from "./keys.ts";
import type { Config } from "./schema.ts";
import { isTable, type Source, sourceLabel } from "./sources.ts";

const MASK = "********";

/** Keys whose value is a secret: `password`, `redis.password`, `*_secret`, `*_token`. */
function isSecret(path: string): boolean {
  const name = path.slice(path.lastIndexOf(".") + 1);
  return /(^|_)(password|secret|token)$/.test(name);
}

/** A URL keeps its shape but not its password: redis://user:********@host:6379. */
function maskUrl(value: string): string {
  return value.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/@]*:)[^@/]*@/i, `$1${MASK}@`);
}

/** A value as TOML, masked when the key is a secret or the value a URL with a password. */
export function tomlValue(path: string, value: unknown): string {
  if (typeof value === "string") {
    if (isSecret(path) && value !== "") return JSON.stringify(MASK);
    return JSON.stringify(path.endsWith("url") ? maskUrl(value) : value);
  }
  if (Array.isArray(value)) return `[${value.map((v) => tomlValue(path, v)).join(", ")}]`;
  return String(value);
}

function valueAt(config: Config, path: string): unknown {
  let node: unknown = config;
  for (const part of path.split(".")) node = isTable(node) ? node[part] : undefined;
  return node;
}

function describe(source: Source | undefined): string {
  if (source === undefined) return "default";
  return source.kind === "file" ? `file ${sourceLabel(source)}` : sourceLabel(source);
}

/** The configuration as TOML with a `# source` comment on every key. */
export function formatEffective(
  config: Config,
  sources: ReadonlyMap<string, Source>,
): string {
  const lines: string[] = [];
  let section = "";
  for (const key of KEYS) {
    if (key.section !== section) {
      section = key.section;
      if (lines.length > 0) lines.push("");
      lines.push(`[${section}]`);
    }
    const name = key.path.slice(section.length + 1);
    const entry = `${name} = ${tomlValue(key.path, valueAt(config, key.path))}`;
    lines.push(`${entry.padEnd(40)} # ${describe(sources.get(key.path))}`);
  }
  return lines.join("\n") + "\n";
}
