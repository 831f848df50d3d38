import assert from "node:assert/strict";
import { ConfigError, loadConfig } from "../../src/config/mod.ts";
import { withTempDir } from "./helpers.ts";

Deno.test("topic filter lists come from TOML arrays, or comma-separated env and flags", async () => {
  const toml = '[bigquery]\ninclude = ["a/#", "$SYS/#"]\n';
  await withTempDir({ "config.toml": toml }, (dir) => {
    const fromFile = loadConfig({ args: [], env: {}, cwd: dir }).config.bigquery;
    assert.deepEqual(fromFile.include, ["a/#", "$SYS/#"]);
    assert.deepEqual(fromFile.exclude, []);
    const env = { MCLOUDTT_BIGQUERY_EXCLUDE: "$SYS/#, tmp/+ ," };
    assert.deepEqual(loadConfig({ args: [], env, cwd: dir }).config.bigquery.exclude, [
      "$SYS/#",
      "tmp/+",
    ]);
    const args = ["--topic_log_file.include=x/#"];
    assert.deepEqual(loadConfig({ args, env: {}, cwd: dir }).config.topic_log_file.include, [
      "x/#",
    ]);
    assert.deepEqual(
      loadConfig({ args: ["--bigquery.include="], env: {}, cwd: dir }).config.bigquery.include,
      [],
    );
  });
});

Deno.test("a bad topic filter, endpoint or retry range names the key", async () => {
  await withTempDir({}, (dir) => {
    const fails = (args: string[], pattern: RegExp) => {
      assert.throws(() => loadConfig({ args, env: {}, cwd: dir }), (e: unknown) => {
        assert.ok(e instanceof ConfigError);
        assert.match(e.message, pattern);
        return true;
      });
    };
    fails(
      ["--bigquery.exclude=a/#/b"],
      /^config error: bigquery\.exclude = \["a\/#\/b"\] \(from flag/,
    );
    fails(["--bigquery.endpoint=localhost:9050"], /bigquery\.endpoint.*http/);
    fails(["--bigquery.retry_initial_ms=500", "--bigquery.retry_max_ms=100"], /retry_max_ms/);
    fails(["--bigquery.overflow=keep"], /"drop-oldest", "spill"/);
    fails(["--adapter.group=a/b"], /adapter\.group/);
    fails(["--adapter.url=http://x:1"], /adapter\.url.*mqtt:\/\//);
    // Without a port it would have dialled mqtts's 8883, where mcloudtt serves nothing.
    fails(["--adapter.url=mqtts://broker"], /adapter\.url.*with its port.*1883 by default/);
    fails(["--adapter.url=mqtt://[::1]"], /adapter\.url.*with its port/);
  });
});
