/**
 * One list of V8 flags wherever the broker is started as shipped: `deno task start` and `dev`,
 * `deno task compile` (the binary, and so the container image), and the bench, which must measure
 * what ships.
 */
import assert from "node:assert/strict";
import { V8_FLAGS, V8_FLAGS_ARG } from "../../src/ops/v8_flags.ts";
import { BENCH_LIMITS, mcloudttArgs } from "../bench/brokers.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

function v8FlagArgs(words: readonly string[]): string[] {
  return words.filter((w) => w.startsWith("--v8-flags"));
}

Deno.test("deno.json start, dev and compile tasks pass exactly the shipped V8 flags", async () => {
  const tasks = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)).tasks;
  for (const name of ["start", "dev", "compile"]) {
    assert.deepEqual(v8FlagArgs(tasks[name].split(/\s+/)), [V8_FLAGS_ARG], `task ${name}`);
  }
  // The flags come before the script: after it they would be the program's own arguments.
  assert.ok(tasks.start.indexOf(V8_FLAGS_ARG) < tasks.start.indexOf("main.ts"));
});

Deno.test("the bench starts mcloudtt with the shipped V8 flags, plus its own", () => {
  const plain = v8FlagArgs(mcloudttArgs(1883, BENCH_LIMITS));
  assert.deepEqual(plain, [V8_FLAGS_ARG]);
  const traced = v8FlagArgs(mcloudttArgs(1883, BENCH_LIMITS, [], ["--trace-gc-nvp"]));
  assert.deepEqual(traced, [`--v8-flags=${[...V8_FLAGS, "--trace-gc-nvp"].join(",")}`]);
});

Deno.test("every shipped V8 flag is one this runtime knows", async () => {
  // V8 rejects an unknown flag only with a warning, so a renamed flag would silently do nothing.
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--v8-flags=--help", "data:,"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const help = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  for (const flag of V8_FLAGS) {
    const name = flag.replace(/=.*/, "");
    assert.ok(help.includes(`  ${name} (`), `${name} is not in this V8's --help`);
  }
});
