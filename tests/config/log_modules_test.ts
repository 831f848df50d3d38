/**
 * `[general] log_levels` accepts the modules in LOG_MODULES only, so that list must name every
 * logger the sources create, and nothing else.
 */
import assert from "node:assert/strict";
import { LOG_MODULES } from "../../src/config/schema.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** Every .ts file under `dir`. */
function* tsFiles(dir: string): Generator<string> {
  for (const e of Deno.readDirSync(dir)) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) yield* tsFiles(path);
    else if (e.isFile && e.name.endsWith(".ts")) yield path;
  }
}

Deno.test("LOG_MODULES is exactly the modules of the loggers in src/ and main.ts", async () => {
  const found = new Set<string>();
  const files = [`${ROOT}main.ts`, ...tsFiles(`${ROOT}src`)];
  for (const file of files) {
    const text = await Deno.readTextFile(file);
    for (const m of text.matchAll(/getLogger\(\s*\[\s*"mcloudtt"\s*,\s*"([^"]+)"/g)) {
      found.add(m[1]);
    }
    // A category built at run time could not be checked here.
    assert.doesNotMatch(text, /getLogger\(\s*\[\s*"mcloudtt"\s*,\s*[^"\s]/, file);
  }
  assert.deepEqual([...found].sort(), [...LOG_MODULES].sort());
});
