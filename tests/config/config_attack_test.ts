/**
 * Hostile input to the configuration loader: every key of the schema given values of the wrong
 * type, out of range, malformed or with control characters, through flags, the environment and
 * typed values; names with newlines; nesting, size and encoding a config file should not have.
 * Whatever it is, the loader answers with one ConfigError on one line, never another exception.
 */
import assert from "node:assert/strict";
import {
  ConfigError,
  type KeyInfo,
  KEYS,
  loadConfig,
  resolveConfig,
} from "../../src/config/mod.ts";
import { CONFIG_TABLE } from "../../src/config/schema.ts";
import type { Issue, Leaf } from "../../src/config/spec.ts";
import { assertConfigError, runDeno, withTempDir } from "./helpers.ts";

const NOWHERE = "/nonexistent-mcloudtt-config-dir";

/** The leaf of the schema at a dotted path, to ask it what it accepts. */
function leafOf(key: KeyInfo): Leaf<unknown> {
  // deno-lint-ignore no-explicit-any
  let node: any = CONFIG_TABLE;
  for (const part of key.path.split(".")) node = node.shape[part];
  return node as Leaf<unknown>;
}

/** [min, max] of an integer key, read from its own message so the test follows the schema. */
function rangeOf(key: KeyInfo): [number, number] {
  const issues: Issue[] = [];
  leafOf(key).parse("x", [], issues);
  const m = /from (\d+) to (\d+)/.exec(issues[0].message);
  assert.ok(m, `${key.path}: ${issues[0].message}`);
  return [Number(m[1]), Number(m[2])];
}

/** Whether the leaf takes a string value `v` (a string key may take "abc", an int never does). */
function accepts(key: KeyInfo, v: unknown): boolean {
  const issues: Issue[] = [];
  leafOf(key).parse(v, [], issues);
  return issues.length === 0;
}

/** Keys whose value is opaque to mcloudtt (passwords): any string at all is theirs. */
const OPAQUE = new Set(["adapter.password", "redis.password"]);

/** Text that no key of `key`'s kind may take from an env variable or a flag. */
function badTexts(key: KeyInfo): string[] {
  const controls = ["a\u0000b", "a\nb", "a\r\nb", "tab\there", "x".repeat(1 << 20) + "\n"];
  switch (key.kind) {
    case "int": {
      const [min, max] = rangeOf(key);
      return [
        "",
        " ",
        "abc",
        "1.5",
        "1e3",
        "1e309",
        "Infinity",
        "-Infinity",
        "NaN",
        "0x10",
        "5abc",
        "1_000",
        "９",
        "9007199254740993",
        "-9007199254740993",
        "99999999999999999999999",
        String(min - 1),
        String(max + 1),
        "x".repeat(1 << 20),
        ...controls,
      ];
    }
    case "bool":
      return ["", "maybe", "2", "-1", "auto", "truee", "on", "t\nrue", ...controls];
    case "auto-bool":
      return ["", "maybe", "2", "autoo", "on", "a\nuto", ...controls];
    case "list":
      return ["a\u0000b", "ok,a\nb", "x".repeat(1 << 20) + "\u0007"];
    case "string": {
      if (OPAQUE.has(key.path)) return [];
      // A key with a set of values (oneOf, a pattern) refuses a word none of them is.
      const words = ["zz-not-a-value", ""].filter((w) => !accepts(key, w));
      return [...words, ...controls];
    }
  }
}

/** Typed values (what TOML or resolveConfig gives) of the wrong type for the key's kind. */
function badValues(key: KeyInfo): unknown[] {
  const always = [[1], { a: 1 }, new Date(0), null];
  switch (key.kind) {
    case "int":
      return [...always, "5", true, 1.5, -0.5, NaN, Infinity, -Infinity, 2 ** 53, 10n];
    case "bool":
    case "auto-bool":
      return [...always, "true", 1, 0, NaN];
    case "list":
      return [...always, "#", 5, ["#", 5], ["#", ["#"]], ["a\u0000b"], true];
    case "string":
      return [...always, 5, true, 1.5, ["x"]];
  }
}

/** The one-line ConfigError `fn` throws, which must name `key` and say what is allowed. */
function expectKeyError(fn: () => unknown, key: KeyInfo, what: string): void {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof ConfigError, `${what}: expected a ConfigError, got ${caught}`);
  const message = caught.message;
  // deno-lint-ignore no-control-regex
  assert.ok(!/[\u0000-\u001f\u007f\u2028\u2029]/.test(message), `${what}: not one line`);
  assert.ok(message.length < 1000, `${what}: ${message.length} characters`);
  assert.ok(message.includes(key.path), `${what}: does not name ${key.path}: ${message}`);
  assert.match(message, /must /, `${what}: does not say what is allowed: ${message}`);
  assert.equal(caught.exitCode, 2);
}

Deno.test("every key refuses bad text from a flag and an env variable, and wrong types, on one line", () => {
  let cases = 0;
  for (const key of KEYS) {
    for (const text of badTexts(key)) {
      const what = `${key.flag}=${JSON.stringify(text.slice(0, 30))}`;
      expectKeyError(
        () => loadConfig({ args: [`${key.flag}=${text}`], env: {}, cwd: NOWHERE }),
        key,
        what,
      );
      expectKeyError(
        () => loadConfig({ args: [], env: { [key.envName]: text }, cwd: NOWHERE }),
        key,
        `${key.envName}=${JSON.stringify(text.slice(0, 30))}`,
      );
      cases += 2;
    }
    const [section, name] = [key.section, key.path.slice(key.section.length + 1)];
    for (const value of badValues(key)) {
      // resolveConfig takes the values TOML gives (numbers, strings, arrays, tables, dates).
      let partial: Record<string, unknown> = { [name]: value };
      for (const part of section.split(".").reverse()) partial = { [part]: partial };
      expectKeyError(
        () => resolveConfig(partial),
        key,
        `${key.path} = ${String(value).slice(0, 30)}`,
      );
      cases++;
    }
  }
  assert.ok(cases > 3000, `only ${cases} cases`);
});

Deno.test("passwords take any string; other strings refuse control characters, naming the first", () => {
  const config = resolveConfig({ redis: { password: "p\u0000\nw" }, adapter: { password: "\t" } });
  assert.equal(config.redis.password, "p\u0000\nw");
  assertConfigError(
    () => loadConfig({ args: [], env: { MCLOUDTT_TLS_CERTFILE: "a\nb" }, cwd: NOWHERE }),
    'tls.certfile = "a\\nb" (from env MCLOUDTT_TLS_CERTFILE)',
    "must not contain control characters (U+000A at character 2)",
  );
  assertConfigError(
    () => resolveConfig({ bigquery: { include: ["ok/#", "a\u0000b"] } }),
    "bigquery.include",
    "U+0000 at character 2",
  );
});

Deno.test("an integer past 2^53 is quoted as typed, not as the number it rounds to", () => {
  const e = assertConfigError(
    () => loadConfig({ args: ["--limits.max_read_rate=9007199254740993"], env: {}, cwd: NOWHERE }),
  );
  assert.ok(e.message.includes('limits.max_read_rate = "9007199254740993"'), e.message);
});

Deno.test("names with newlines or bidi controls from any channel are escaped: the message stays one line", async () => {
  const one = (fn: () => unknown, ...fragments: string[]) => {
    const e = assertConfigError(fn, ...fragments);
    // deno-lint-ignore no-control-regex
    assert.ok(!/[\u0000-\u001f\u007f-\u009f\u202a-\u202e]/.test(e.message), e.message);
  };
  one(() => loadConfig({ args: ["--ports.t\ncp=1"], env: {}, cwd: NOWHERE }), "--ports.t\\u000acp");
  one(() => loadConfig({ args: ["--a\rb.c=1"], env: {}, cwd: NOWHERE }), "--a\\u000db.c");
  one(() => loadConfig({ args: [], env: { "MCLOUDTT_X\nY": "1" }, cwd: NOWHERE }), "X\\u000aY");
  one(() => loadConfig({ args: ["--config=a\nb.toml"], env: {}, cwd: NOWHERE }), "a\\u000ab.toml");
  one(
    () => loadConfig({ args: [], env: { MCLOUDTT_CONFIG: "c\u202e.toml" }, cwd: NOWHERE }),
    "c\\u202e.toml",
  );
  await withTempDir({ "config.toml": '[ports]\n"t\\ncp" = 1\n' }, (dir) => {
    one(() => loadConfig({ args: [], env: {}, cwd: dir }), "ports.t\\u000acp = 1");
  });
  await withTempDir({ "config.toml": '["a\\u2028b"]\nc = 1\n' }, (dir) => {
    one(() => loadConfig({ args: [], env: {}, cwd: dir }), "[a\\u2028b]", "unknown table");
  });
});

Deno.test("a megabyte-long unknown name is refused at once, with a short message", () => {
  const started = performance.now();
  const long = "X".repeat(1 << 20);
  const byEnv = assertConfigError(() =>
    loadConfig({ args: [], env: { [`MCLOUDTT_${long}`]: "1" }, cwd: NOWHERE })
  );
  const byFlag = assertConfigError(() =>
    loadConfig({ args: [`--ports.${long}=1`], env: {}, cwd: NOWHERE })
  );
  assert.ok(byEnv.message.length < 400 && byFlag.message.length < 400);
  // Suggestions used to measure the name against every key: 26 s for the flag, 37 s for the env.
  assert.ok(performance.now() - started < 3000, `${performance.now() - started} ms`);
});

Deno.test("nesting no key has is refused as an unknown table, never a stack overflow", async () => {
  await withTempDir({ "config.toml": `a${".a".repeat(20000)} = 1\n` }, (dir) => {
    assertConfigError(() => loadConfig({ args: [], env: {}, cwd: dir }), "[a]", "unknown table");
  });
  await withTempDir({ "config.toml": `[listeners.tcp${".x".repeat(20000)}]\n` }, (dir) => {
    assertConfigError(
      () => loadConfig({ args: [], env: {}, cwd: dir }),
      "[listeners.tcp.x]",
      "unknown table",
    );
  });
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  assertConfigError(() => resolveConfig({ general: cyclic }), "[general.self]", "unknown table");
});

Deno.test("a config file too large, endless, not UTF-8 or named empty is refused in one line", async () => {
  const big = `[general]\n${"# padding\n".repeat(110_000)}`;
  await withTempDir({ "big.toml": big }, (dir) => {
    assertConfigError(
      () => loadConfig({ args: ["--config", "big.toml"], env: {}, cwd: dir }),
      "config file big.toml (from --config) is larger than 1048576 bytes",
    );
  });
  // A device that never ends used to be read until memory ran out.
  assertConfigError(
    () => loadConfig({ args: ["--config=/dev/zero"], env: {}, cwd: NOWHERE }),
    "/dev/zero",
    "larger than",
  );
  await withTempDir({}, async (dir) => {
    await Deno.writeFile(
      `${dir}/config.toml`,
      new Uint8Array([...new TextEncoder().encode('[tls]\n\ncertfile = "caf'), 0xe9, 0x22, 0x0a]),
    );
    assertConfigError(
      () => loadConfig({ args: [], env: {}, cwd: dir }),
      "config file config.toml (from default location) is not valid UTF-8 (line 3)",
    );
    assertConfigError(
      () => loadConfig({ args: ["--config="], env: {}, cwd: dir }),
      "--config (from command line): is empty; give the path of a TOML file",
    );
    // A directory is not read as a file.
    assertConfigError(
      () => loadConfig({ args: [`--config=${dir}`], env: {}, cwd: dir }),
      "cannot be read",
    );
  });
  // A byte order mark is fine: TOML is UTF-8, and editors write one.
  await withTempDir({ "config.toml": "\ufeff[ports]\ntcp = 5\n" }, (dir) => {
    assert.equal(loadConfig({ args: [], env: {}, cwd: dir }).config.ports.tcp, 5);
  });
});

Deno.test("listeners on one port with overlapping binds are refused, not left to fail at start", () => {
  const load = (...args: string[]) => loadConfig({ args, env: {}, cwd: NOWHERE });
  assertConfigError(
    () =>
      load(
        "--ports.ws=1883",
        "--listeners.tcp.bind=0.0.0.0",
        "--listeners.ws.bind=127.0.0.1",
      ),
    "ports.ws = 1883 (from flag --ports.ws)",
    "port 1883 (0.0.0.0 and 127.0.0.1 overlap)",
  );
  assertConfigError(
    () => load("--ports.ws=1883", "--listeners.tcp.bind=::", "--listeners.ws.bind=10.1.2.3"),
    "overlap",
  );
  assertConfigError(
    () => load("--http.port=1883", "--http.bind=::", "--general.bind=127.0.0.1"),
    "http.port = 1883 (from flag --http.port)",
    "the HTTP endpoint and listeners.tcp would both listen on port 1883 (:: and 127.0.0.1 overlap)",
  );
  // The same address written two ways.
  assertConfigError(
    () => load("--ports.ws=1883", "--listeners.tcp.bind=::1", "--listeners.ws.bind=0:0::1"),
    "overlap",
  );
  // Separate addresses of one family, or an IPv4 wildcard and an IPv6 address, do not collide.
  load("--ports.ws=1883", "--listeners.tcp.bind=127.0.0.1", "--listeners.ws.bind=127.0.0.2");
  load("--ports.ws=1883", "--listeners.tcp.bind=0.0.0.0", "--listeners.ws.bind=::1");
  load("--http.port=1883", "--http.bind=0.0.0.0", "--general.bind=::1");
});

Deno.test("adapter.certfile and adapter.keyfile come together", () => {
  assertConfigError(
    () => resolveConfig({ adapter: { certfile: "client.crt" } }),
    'adapter.certfile = "client.crt" (from resolveConfig()): needs adapter.keyfile too',
    'set adapter.keyfile, or set adapter.certfile = ""',
  );
  assertConfigError(
    () => loadConfig({ args: [], env: { MCLOUDTT_ADAPTER_KEYFILE: "k.pem" }, cwd: NOWHERE }),
    "adapter.keyfile",
    "env MCLOUDTT_ADAPTER_KEYFILE",
    "needs adapter.certfile too",
  );
  resolveConfig({ adapter: { certfile: "c.pem", keyfile: "k.pem" } });
});

const main = new URL("../../main.ts", import.meta.url).pathname;
/** Start the real broker in `cwd` with a clean environment; its exit code and output. */
function runMain(cwd: string, args: string[], env: Record<string, string> = {}) {
  return runDeno(cwd, ["--no-check", "-A", main, ...args], env);
}

/** Exit 2 and exactly one line on stderr, a config error with every fragment and no trace. */
function assertOneLineExit(
  out: { code: number; stdout: string; stderr: string },
  ...fragments: string[]
) {
  assert.equal(out.code, 2, out.stderr);
  assert.equal(out.stdout, "");
  assert.ok(out.stderr.endsWith("\n"), JSON.stringify(out.stderr));
  const lines = out.stderr.slice(0, -1).split("\n");
  assert.equal(lines.length, 1, out.stderr);
  assert.match(lines[0], /^config error: /);
  assert.ok(!/\bat .*:\d+:\d+/.test(lines[0]), "a stack trace");
  for (const fragment of fragments) assert.ok(lines[0].includes(fragment), lines[0]);
}

Deno.test("the broker itself exits 2 with one line for a newline in a name, deep nesting, overlapping binds and a TLS path with a newline", async () => {
  const plain = ["--general.secure=false", "--ports.tcp=0", "--ports.ws=0", "--http.port=0"];
  await withTempDir({ "config.toml": '[general]\n"sec\\nure" = false\n' }, async (dir) => {
    assertOneLineExit(await runMain(dir, plain), "general.sec\\u000aure = false");
  });
  await withTempDir({ "config.toml": `a${".a".repeat(20000)} = 1\n` }, async (dir) => {
    assertOneLineExit(await runMain(dir, plain), "[a]", "unknown table");
  });
  await withTempDir({}, async (dir) => {
    assertOneLineExit(
      await runMain(dir, [
        ...plain,
        "--ports.tcp=41883",
        "--ports.ws=41883",
        "--listeners.tcp.bind=0.0.0.0",
        "--listeners.ws.bind=127.0.0.1",
      ]),
      "ports.ws = 41883",
      "(0.0.0.0 and 127.0.0.1 overlap)",
    );
    // The TLS check quoted the path as it was, newline and all, over three lines.
    assertOneLineExit(
      await runMain(dir, ["--ports.tcp=0", "--ports.ws=0", "--http.port=0"], {
        MCLOUDTT_TLS_CERTFILE: "broker\n.crt",
      }),
      'tls.certfile = "broker\\n.crt" (from env MCLOUDTT_TLS_CERTFILE)',
    );
  });
});
