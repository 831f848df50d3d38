/**
 * The configuration's value types on their own (errors_test.ts checks the messages a user sees
 * end to end): hosts, lists, strict tables and defaults.
 */
import assert from "node:assert/strict";
import { bool, int, isHost, type Issue, list, table, text } from "../../src/config/spec.ts";
import { resolveConfig } from "../../src/config/mod.ts";
import { assertConfigError } from "./helpers.ts";

Deno.test("isHost accepts IPv4, IPv6 and hostnames, and nothing else", () => {
  for (
    const good of [
      "0.0.0.0",
      "127.0.0.1",
      "255.255.255.255",
      "::",
      "::1",
      "fe80::1",
      "2001:db8::8a2e:370:7334",
      "::ffff:192.0.2.128",
      "localhost",
      "redis-0.redis.default.svc.cluster.local",
      "example.com.",
      "a".repeat(63) + ".com",
    ]
  ) assert.ok(isHost(good), good);
  for (
    const bad of [
      "",
      "256.0.0.1",
      "1.2.3.04",
      "1..2.3",
      ":::",
      "1::2::3",
      "[::1]",
      "fe80::1%eth0",
      "-leading.example",
      "trailing-.example",
      "under_score.example",
      "a".repeat(64) + ".com",
      `${"a.".repeat(127)}com`,
      "host name",
      "host:1883",
      "http://host",
    ]
  ) assert.ok(!isHost(bad), bad);
});

Deno.test("a table fills defaults, reports its unknown keys after its known ones", () => {
  const t = table("t", { n: int(1, 10, 5), on: bool(false), name: text("x") });
  const issues: Issue[] = [];
  assert.deepEqual(t.parse(undefined, ["t"], issues), { n: 5, on: false, name: "x" });
  assert.deepEqual(t.parse({ n: 7 }, ["t"], issues), { n: 7, on: false, name: "x" });
  assert.deepEqual(issues, []);

  t.parse({ zz: 1, n: 11, yy: 2 }, ["t"], issues);
  assert.deepEqual(issues, [
    { path: ["t", "n"], message: "must be an integer from 1 to 10" },
    { path: ["t"], message: "unknown keys", unknownKeys: ["zz", "yy"] },
  ]);

  for (const notTable of [[], "s", 1, new Date(0)]) {
    const found: Issue[] = [];
    assert.equal(t.parse(notTable, ["t"], found), undefined);
    assert.deepEqual(found, [{ path: ["t"], message: "must be a table ([t])" }]);
  }
});

Deno.test("integers must be safe integers in range; lists are checked item by item", () => {
  const n = int(0, 100, 1);
  for (const bad of [1.5, NaN, Infinity, -1, 101, "5", true, 2 ** 60, 10n]) {
    const issues: Issue[] = [];
    assert.equal(n.parse(bad, ["k"], issues), undefined, String(bad));
    assert.equal(issues.length, 1);
  }
  const l = list(["d"], "must be a list of words", (v) => /^\w+$/.test(v), "a bad word");
  const issues: Issue[] = [];
  const fallback = l.parse(undefined, ["l"], issues);
  assert.deepEqual(fallback, ["d"]);
  fallback!.push("changed");
  assert.deepEqual(l.parse(undefined, ["l"], issues), ["d"], "the default is not shared");
  assert.equal(l.parse(["ok", 3, "no way"], ["l"], issues), undefined);
  assert.deepEqual(issues, [
    { path: ["l", 1], message: "must be a list of words" },
    { path: ["l", 2], message: "a bad word" },
  ]);
});

Deno.test("a TOML date where a table belongs is refused, not taken for an empty table", () => {
  assertConfigError(
    () => resolveConfig({ general: new Date(0) } as unknown as Parameters<typeof resolveConfig>[0]),
    "general",
    "must be a table ([general])",
  );
});
