import assert from "node:assert/strict";
import { runDeno, withTempDir } from "./helpers.ts";

const fixture = new URL("./fixtures/load_or_exit.ts", import.meta.url).pathname;
/** Run the fixture in `cwd` with a clean environment (plus `env`). */
function runFixture(cwd: string, args: string[], env: Record<string, string> = {}) {
  return runDeno(cwd, ["--allow-read", "--allow-env", fixture, ...args], env);
}

Deno.test("a bad config makes the process exit 2 with the one-line message on stderr", async () => {
  await withTempDir({ "config.toml": "[limits]\nmax_packet_size = -5\n" }, async (dir) => {
    const { code, stdout, stderr } = await runFixture(dir, ["serve"]);
    assert.equal(code, 2);
    assert.equal(stdout, "");
    assert.equal(
      stderr.trim(),
      "config error: limits.max_packet_size = -5 (from config.toml): must be an integer from 64 " +
        "to 268435455; set it in [limits] of config.toml or MCLOUDTT_LIMITS_MAX_PACKET_SIZE",
    );
  });
});

Deno.test("a bad env variable or flag in a real process also exits 2", async () => {
  await withTempDir({}, async (dir) => {
    const byEnv = await runFixture(dir, [], { MCLOUDTT_PORTS_TPC: "1" });
    assert.equal(byEnv.code, 2);
    assert.match(
      byEnv.stderr,
      /^config error: MCLOUDTT_PORTS_TPC .*did you mean MCLOUDTT_PORTS_TCP\?/,
    );
    const byFlag = await runFixture(dir, ["--ports.tcp=x"]);
    assert.equal(byFlag.code, 2);
    assert.match(byFlag.stderr, /^config error: ports\.tcp = "x" \(from flag --ports\.tcp\)/);
  });
});

Deno.test("a good config runs through, with env and flags applied and other args left", async () => {
  await withTempDir({ "config.toml": "[ports]\ntcp = 1000\nws = 1001\n" }, async (dir) => {
    const { code, stdout, stderr } = await runFixture(
      dir,
      ["serve", "--ports.tcp", "2000", "--verbose"],
      { MCLOUDTT_PORTS_WS: "3000" },
    );
    assert.equal(stderr, "");
    assert.equal(code, 0);
    assert.deepEqual(JSON.parse(stdout), {
      ports: { tcp: 2000, ws: 3000 },
      rest: ["serve", "--verbose"],
    });
  });
});
