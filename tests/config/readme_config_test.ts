/**
 * The README's configuration table (section "## Configuration": one row per `[section]`) must name
 * every key of the schema in its section's row, no key the schema lacks, and, where it states a
 * key's default in the `key` (default ...) form, the true default. Written after the table had
 * drifted from the schema over many sessions (the `[bigquery]`, `[topic_log_file]` and `[adapter]`
 * rows named a few keys each, and a choice list no longer matched).
 *
 * Only key names and the first literal of a parenthesis right after a key are read, so the prose
 * around them can say anything.
 */
import assert from "node:assert/strict";
import { defaultConfig, KEYS, validateConfig } from "../../src/config/mod.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** Metric label values and other snake_case words the table names that are not keys. */
const NOT_KEYS = new Set(["queue_total_full"]);

interface Row {
  sections: string[];
  text: string;
}

/** The rows of the table under "## Configuration". */
function readRows(readme: string): Row[] {
  const start = readme.indexOf("\n## Configuration\n");
  assert.ok(start >= 0, 'README has no "## Configuration" section');
  const end = readme.indexOf("\n## ", start + 1);
  const rows: Row[] = [];
  for (const line of readme.slice(start, end).split("\n")) {
    const m = /^\|\s*((?:`\[[a-z_.]+\]`,?\s*)+)\|(.*)\|\s*$/.exec(line);
    if (m === null) continue;
    const sections = [...m[1].matchAll(/`\[([a-z_.]+)\]`/g)].map((s) => s[1]);
    rows.push({ sections, text: m[2] });
  }
  assert.ok(rows.length > 0, "no `[section]` rows in the configuration table");
  return rows;
}

/** Sections that hold keys (`listeners.tcp`, not `listeners`). */
const keySections = [...new Set(KEYS.map((k) => k.section))];
const keysOf = (section: string) => KEYS.filter((k) => k.section === section);

function valueAt(config: unknown, path: string): unknown {
  return path.split(".").reduce((v, part) => (v as Record<string, unknown>)[part], config);
}

/** The text inside the parenthesis opening at `open` (nested ones included). */
function parenthesis(text: string, open: number): string {
  let depth = 0;
  for (let i = open; i < text.length; i++) {
    if (text[i] === "(") depth++;
    else if (text[i] === ")" && --depth === 0) return text.slice(open + 1, i);
  }
  return text.slice(open + 1);
}

const UNITS: Record<string, number> = { KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 };

/** The literal a default starts with, with the choices listed as `"a" \| "b"`; undefined if none. */
function literal(text: string): { value: unknown; choices: string[] } | undefined {
  const t = text.trimStart();
  let m: RegExpExecArray | null;
  if ((m = /^(true|false)\b/.exec(t)) !== null) return { value: m[1] === "true", choices: [] };
  if ((m = /^\[\]/.exec(t)) !== null) return { value: [], choices: [] };
  if ((m = /^(\d+)(?:\s+(KiB|MiB|GiB)\b)?/.exec(t)) !== null) {
    return { value: Number(m[1]) * (m[2] ? UNITS[m[2]] : 1), choices: [] };
  }
  if ((m = /^"([^"]*)"((?:\s*\\\|\s*"[^"]*")*)/.exec(t)) !== null) {
    const rest = [...m[2].matchAll(/"([^"]*)"/g)].map((c) => c[1]);
    return { value: m[1], choices: rest.length > 0 ? [m[1], ...rest] : [] };
  }
  return undefined;
}

/** The values a key of `oneOf` accepts, from the message a wrong one gets; [] for other kinds. */
function choicesOf(path: string): string[] {
  const input: Record<string, unknown> = {};
  const parts = path.split(".");
  let at = input;
  for (const part of parts.slice(0, -1)) at = (at[part] ??= {}) as Record<string, unknown>;
  at[parts.at(-1)!] = "no-such-choice";
  const result = validateConfig(input);
  if (result.ok) return [];
  const m = /^must be one of (.*)$/.exec(result.issues[0].message);
  return m === null ? [] : m[1].split(", ").map((c) => JSON.parse(c));
}

const readme = Deno.readTextFileSync(`${ROOT}README.md`);
const rows = readRows(readme);

Deno.test("the README configuration table has a row for every section with keys, and no other", () => {
  const named = rows.flatMap((r) => r.sections);
  assert.deepEqual([...named].sort(), [...keySections].sort());
});

Deno.test("each README configuration row names every key of its sections", () => {
  const missing: string[] = [];
  for (const row of rows) {
    const named = new Set([...row.text.matchAll(/`([a-z][a-z0-9_]*)`/g)].map((m) => m[1]));
    for (const section of row.sections) {
      for (const key of keysOf(section)) {
        const name = key.path.slice(section.length + 1);
        if (!named.has(name)) missing.push(key.path);
      }
    }
  }
  assert.deepEqual(missing, [], "keys the README configuration table does not name");
});

Deno.test("the README configuration table names no key its section lacks", () => {
  const known = new Set(KEYS.map((k) => k.path));
  const topSections = new Set(KEYS.map((k) => k.path.split(".")[0]));
  const unknown: string[] = [];
  for (const row of rows) {
    for (const [, code] of row.text.matchAll(/`([^`]+)`/g)) {
      // `key = value` names its key.
      const name = code.replace(/\s*=.*$/, "");
      if (/^[a-z][a-z0-9_]*$/.test(name)) {
        if (name.startsWith("mcloudtt") || NOT_KEYS.has(name)) continue;
        if (!row.sections.some((s) => known.has(`${s}.${name}`))) {
          unknown.push(`[${row.sections.join("], [")}] ${name}`);
        }
      } else if (/^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$/.test(name)) {
        // A dotted name whose first part is a section is a full key path.
        if (topSections.has(name.split(".")[0]) && !known.has(name)) unknown.push(name);
      }
    }
  }
  assert.deepEqual(unknown, [], "names in the README configuration table that are not keys");
});

Deno.test("defaults and choices the README configuration table states are the schema's", () => {
  const defaults = defaultConfig();
  const wrong: string[] = [];
  let checked = 0;
  for (const row of rows) {
    for (const m of row.text.matchAll(/`([a-z][a-z0-9_]*)` \(/g)) {
      const stated = literal(parenthesis(row.text, m.index + m[0].length - 1));
      if (stated === undefined) continue;
      for (const section of row.sections) {
        const path = `${section}.${m[1]}`;
        if (!KEYS.some((k) => k.path === path)) continue;
        checked++;
        const actual = valueAt(defaults, path);
        if (JSON.stringify(actual) !== JSON.stringify(stated.value)) {
          wrong.push(
            `${path}: README ${JSON.stringify(stated.value)}, schema ${JSON.stringify(actual)}`,
          );
        }
        if (stated.choices.length > 0) {
          const choices = choicesOf(path);
          if (JSON.stringify([...choices].sort()) !== JSON.stringify([...stated.choices].sort())) {
            wrong.push(`${path}: README choices ${stated.choices}, schema ${choices}`);
          }
        }
      }
    }
  }
  assert.deepEqual(wrong, []);
  // The parsing must keep finding most defaults: a format change would otherwise check nothing.
  assert.ok(checked > 100, `only ${checked} defaults parsed`);
});
