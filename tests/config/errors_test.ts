import assert from "node:assert/strict";
import { loadConfig, resolveConfig } from "../../src/config/mod.ts";
import type { DeepPartial } from "../../src/config/mod.ts";
import type { Config } from "../../src/config/mod.ts";
import { assertConfigError, withTempDir } from "./helpers.ts";

/** Load with ./config.toml = `toml` (if given) in a fresh directory. */
async function loadIn(
  toml: string | undefined,
  opts: { args?: string[]; env?: Record<string, string> },
  ...fragments: string[]
): Promise<void> {
  const files: Record<string, string> = toml === undefined ? {} : { "config.toml": toml };
  await withTempDir(files, (dir) => {
    assertConfigError(
      () => loadConfig({ args: opts.args ?? [], env: opts.env ?? {}, cwd: dir }),
      ...fragments,
    );
  });
}

Deno.test("out-of-range value in the file: key, value, file, range and fix on one line", async () => {
  await withTempDir({ "config.toml": "[limits]\nmax_packet_size = -5\n" }, (dir) => {
    const e = assertConfigError(() => loadConfig({ args: [], env: {}, cwd: dir }));
    assert.equal(
      e.message,
      "config error: limits.max_packet_size = -5 (from config.toml): must be an integer from 64 " +
        "to 268435455; set it in [limits] of config.toml or MCLOUDTT_LIMITS_MAX_PACKET_SIZE",
    );
    assert.equal(e.key, "limits.max_packet_size");
    assert.equal(e.source, "config.toml");
  });
});

Deno.test("TOML syntax error names the file, line and column", async () => {
  await loadIn("[general]\nsecure = true\nbind = \n", {}, "config.toml line 3", "invalid TOML");
  await loadIn("[ports]\ntcp = 1\ntcp = 2\n", {}, "config.toml line 3");
});

Deno.test("unknown key in the file suggests the nearest known key", async () => {
  await loadIn(
    "[limits]\nmax_pakcet_size = 5\n",
    {},
    "limits.max_pakcet_size = 5 (from config.toml): unknown key",
    "did you mean limits.max_packet_size?",
  );
  // A key in the wrong table finds its real home.
  await loadIn("[limits]\ntimeout = 5\n", {}, "limits.timeout", "did you mean general.timeout?");
  await loadIn("max_packet_size = 5\n", {}, "did you mean limits.max_packet_size?");
  await loadIn(
    "[general]\nzzzzzzzz = 1\n",
    {},
    "general.zzzzzzzz = 1 (from config.toml): unknown key;",
  );
});

Deno.test("unknown table in the file suggests the nearest table", async () => {
  await loadIn(
    "[limts]\nmax_packet_size = 5\n",
    {},
    "[limts]",
    "unknown table",
    "did you mean [limits]?",
  );
  await loadIn("[listeners.wss]\n", {}, "[listeners.wss]", "did you mean [listeners.ws]?");
});

Deno.test("wrong types in the file are reported with the expected type", async () => {
  await loadIn('[ports]\ntcp = "1883"\n', {}, 'ports.tcp = "1883" (from config.toml)', "integer");
  await loadIn("[limits]\nconnect_timeout = 1.5\n", {}, "limits.connect_timeout = 1.5", "integer");
  await loadIn('[general]\nsecure = "yes"\n', {}, "general.secure", "must be true or false");
  await loadIn('[listeners.tcp]\ntls = "on"\n', {}, "listeners.tcp.tls", '"auto"');
  await loadIn('[general]\nlog_level = "verbose"\n', {}, "general.log_level", '"warning"');
  await loadIn('[listeners.ws]\npath = "mqtt"\n', {}, "listeners.ws.path", 'starting with "/"');
  await loadIn('[general]\nbind = "no such host!"\n', {}, "general.bind", "hostname");
  await loadIn("limits = 5\n", {}, "limits = 5 (from config.toml)", "[limits] table");
  await loadIn("[general]\ntimeout = 1979-05-27\n", {}, "general.timeout = 1979-05-27");
});

Deno.test("bigquery.enabled needs project_id and dataset_id", async () => {
  await loadIn(
    "[bigquery]\nenabled = true\n",
    {},
    "bigquery.project_id",
    "bigquery.enabled = true",
  );
  await loadIn(
    '[bigquery]\nenabled = true\nproject_id = "p"\n',
    {},
    "bigquery.dataset_id",
    "MCLOUDTT_BIGQUERY_DATASET_ID",
  );
  await withTempDir({}, (dir) => {
    const args = ["--bigquery.enabled=true", "--bigquery.project_id=p", "--bigquery.dataset_id=d"];
    assert.equal(loadConfig({ args, env: {}, cwd: dir }).config.bigquery.enabled, true);
  });
});

Deno.test("both listeners on the same port and bind is refused, blaming the key that was set", async () => {
  await loadIn("[ports]\ntcp = 8080\n", {}, "ports.tcp = 8080 (from config.toml)", "port 8080");
  await loadIn(
    undefined,
    { args: ["--ports.ws", "1883"] },
    "ports.ws = 1883 (from flag --ports.ws)",
  );
  // Binds that do not overlap, a disabled listener, or port 0 are all fine. (127.0.0.1 beside
  // tcp's default 0.0.0.0 overlaps: config_attack_test.ts.)
  await withTempDir({}, (dir) => {
    const ok = (args: string[]) => loadConfig({ args, env: {}, cwd: dir });
    ok(["--ports.ws=1883", "--listeners.tcp.bind=127.0.0.1", "--listeners.ws.bind=127.0.0.2"]);
    ok(["--ports.ws=1883", "--general.websocket=false"]);
    ok(["--ports.ws=1883", "--listeners.tcp.enabled=false"]);
    ok(["--ports.ws=0", "--ports.tcp=0"]);
  });
});

Deno.test("a cross-key rule blaming the other key says the rule of that key", async () => {
  // The key that was set is blamed; the words are about it, not a copy of the other key's.
  await loadIn(
    undefined,
    { args: ["--cluster.lease_renew_ms=4000"] },
    "cluster.lease_renew_ms = 4000 (from flag --cluster.lease_renew_ms): must be at most half " +
      "cluster.lease_ttl_ms (6000)",
  );
  await loadIn(
    undefined,
    { args: ["--cluster.lease_ttl_ms=3000"] },
    "cluster.lease_ttl_ms = 3000 (from flag --cluster.lease_ttl_ms): must be at least twice " +
      "cluster.lease_renew_ms (2000)",
  );
  await loadIn(
    undefined,
    { args: ["--redis.enabled=true", "--redis.wait_replicas=1", "--redis.wait_timeout_ms=5000"] },
    "redis.wait_timeout_ms = 5000 (from flag --redis.wait_timeout_ms): must be below " +
      "redis.command_timeout_ms (5000) when redis.wait_replicas > 0",
  );
  await loadIn(
    "[bigquery]\nretry_initial_ms = 60000\n",
    {},
    "bigquery.retry_initial_ms = 60000 (from config.toml): must be at most bigquery.retry_max_ms (30000)",
  );
});

Deno.test("a client certificate requirement needs TLS on that listener", async () => {
  await loadIn(
    '[general]\nsecure = false\n[listeners.ws]\nclient_certificate = "optional"\n',
    {},
    'listeners.ws.client_certificate = "optional" (from config.toml)',
    "needs TLS",
  );
  await loadIn(
    undefined,
    {
      env: {
        MCLOUDTT_LISTENERS_TCP_TLS: "false",
        MCLOUDTT_LISTENERS_TCP_CLIENT_CERTIFICATE: "required",
      },
    },
    "listeners.tcp.client_certificate",
    "env MCLOUDTT_LISTENERS_TCP_CLIENT_CERTIFICATE",
  );
  await withTempDir({}, (dir) => {
    // Explicit TLS on one listener while general.secure is off is consistent.
    const args = ["--general.secure=false", "--listeners.tcp.tls=true"];
    const env = { MCLOUDTT_LISTENERS_TCP_CLIENT_CERTIFICATE: "required" };
    loadConfig({ args, env, cwd: dir });
  });
});

Deno.test("bad environment values name the variable", async () => {
  await loadIn(
    "[limits]\nmax_packet_size = 2048\n",
    { env: { MCLOUDTT_LIMITS_MAX_PACKET_SIZE: "12abc" } },
    'limits.max_packet_size = "12abc" (from env MCLOUDTT_LIMITS_MAX_PACKET_SIZE)',
    "must be an integer",
    "unset MCLOUDTT_LIMITS_MAX_PACKET_SIZE",
  );
  await loadIn(
    undefined,
    { env: { MCLOUDTT_GENERAL_SECURE: "maybe" } },
    "general.secure",
    "env MCLOUDTT_GENERAL_SECURE",
  );
  await loadIn(
    undefined,
    { env: { MCLOUDTT_PORTS_TCP: "" } },
    'ports.tcp = "" (from env MCLOUDTT_PORTS_TCP)',
  );
});

Deno.test("unknown MCLOUDTT_ variables are errors that suggest the real name", async () => {
  await loadIn(
    undefined,
    { env: { MCLOUDTT_LIMITS_MAX_PAKCET_SIZE: "5" } },
    "MCLOUDTT_LIMITS_MAX_PAKCET_SIZE",
    "unknown variable",
    "did you mean MCLOUDTT_LIMITS_MAX_PACKET_SIZE?",
  );
  await loadIn(undefined, { env: { MCLOUDTT_LIMITS: "5" } }, "MCLOUDTT_LIMITS", "unknown variable");
});

Deno.test("bad and unknown flags are errors naming the flag", async () => {
  await loadIn(
    "[ports]\ntcp = 1000\n",
    { args: ["--ports.tcp=70000"] },
    "ports.tcp = 70000 (from flag --ports.tcp)",
    "from 0 to 65535",
  );
  await loadIn(undefined, { args: ["--ports.tpc=1"] }, "--ports.tpc", "did you mean --ports.tcp?");
  await loadIn(undefined, { args: ["--nosuch.key=1"] }, "--nosuch.key", "unknown flag");
  await loadIn(undefined, { args: ["--ports.tcp"] }, "--ports.tcp", "needs a value");
  await loadIn(undefined, { args: ["--ports.tcp", "--help"] }, "--ports.tcp", "needs a value");
  await loadIn(undefined, { args: ["--config"] }, "--config", "needs a value");
});

Deno.test("an explicitly named config file that is missing is an error, never skipped", async () => {
  await loadIn(
    undefined,
    { args: ["--config", "nope.toml"] },
    "nope.toml",
    "--config",
    "does not exist",
  );
  await loadIn(
    undefined,
    { env: { MCLOUDTT_CONFIG: "gone.toml" } },
    "gone.toml",
    "MCLOUDTT_CONFIG",
  );
});

Deno.test("resolveConfig rejects what the schema rejects, naming resolveConfig()", () => {
  const bad = { limits: { max_packet_size: 1 } } satisfies DeepPartial<Config>;
  assertConfigError(() => resolveConfig(bad), "limits.max_packet_size = 1 (from resolveConfig())");
  const unknown = { general: { secure: false, sekure: true } } as DeepPartial<Config>;
  assertConfigError(() => resolveConfig(unknown), "general.sekure", "did you mean general.secure?");
});

Deno.test("with several problems the first one is reported", async () => {
  // The command line is read before the environment, which is read before the file.
  await loadIn(
    "[limits]\nmax_packet_size = -5\n",
    { args: ["--nosuch.key=1"], env: { MCLOUDTT_NOSUCH: "1" } },
    "--nosuch.key",
  );
  await loadIn(
    "[limits]\nmax_packet_size = -5\n",
    { env: { MCLOUDTT_NOSUCH: "1" } },
    "MCLOUDTT_NOSUCH",
  );
});

Deno.test("log_levels names only modules that log: a typo is refused, topic-log can be named", async () => {
  await loadIn(
    undefined,
    { args: ["--general.log_levels=conection=debug"] },
    'general.log_levels = "conection=debug" (from flag --general.log_levels)',
    "modules: auth, bq-adapter, broker",
  );
  await loadIn(undefined, { env: { MCLOUDTT_GENERAL_LOG_LEVELS: "router=debug" } }, "log_levels");
  const ok = loadConfig({
    args: ["--general.log_levels=topic-log=debug, bq-adapter=warning,store=error"],
    env: {},
    cwd: "/nonexistent",
  });
  assert.equal(ok.config.general.log_levels, "topic-log=debug, bq-adapter=warning,store=error");
});

Deno.test("redis.key_prefix with a brace is refused (it would be every key's cluster hash tag)", async () => {
  await loadIn(
    undefined,
    { env: { MCLOUDTT_REDIS_KEY_PREFIX: "app{1}" } },
    `redis.key_prefix = "app{1}" (from env MCLOUDTT_REDIS_KEY_PREFIX)`,
    "without { or }, e.g. mcloudtt",
  );
  await loadIn('[redis]\nkey_prefix = ""\n', {}, "redis.key_prefix", "non-empty");
  assert.equal(
    resolveConfig({ redis: { key_prefix: "tenant-a:mqtt" } }).redis.key_prefix,
    "tenant-a:mqtt",
  );
});
