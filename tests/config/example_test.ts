import assert from "node:assert/strict";
import { parse } from "smol-toml";
import { defaultConfig, KEYS, loadConfig } from "../../src/config/mod.ts";

const repoRoot = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

function leafPaths(table: Record<string, unknown>, prefix = ""): string[] {
  return Object.entries(table).flatMap(([name, value]) => {
    const path = prefix ? `${prefix}.${name}` : name;
    return typeof value === "object" && value !== null && !(value instanceof Date) &&
        !Array.isArray(value)
      ? leafPaths(value as Record<string, unknown>, path)
      : [path];
  });
}

Deno.test("the example config.toml at the repository root loads and equals the defaults", () => {
  const { config, file } = loadConfig({ args: [], env: {}, cwd: repoRoot });
  assert.equal(file, `${repoRoot}/config.toml`);
  assert.deepEqual(config, defaultConfig());
});

Deno.test("the example config.toml lists every key, in schema order", async () => {
  const text = await Deno.readTextFile(`${repoRoot}/config.toml`);
  assert.deepEqual(leafPaths(parse(text)), KEYS.map((k) => k.path));
});
