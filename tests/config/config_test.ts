import assert from "node:assert/strict";
import { defaultConfig, loadConfig, resolveConfig } from "../../src/config/mod.ts";
import { withTempDir } from "./helpers.ts";

Deno.test("with no file, env or flags every key has its default", async () => {
  await withTempDir({}, (dir) => {
    const { config, file, rest } = loadConfig({ args: [], env: {}, cwd: dir });
    assert.equal(file, null);
    assert.deepEqual(rest, []);
    assert.deepEqual(config, defaultConfig());
    assert.equal(config.limits.max_packet_size, 1048576);
    assert.equal(config.general.secure, true);
    assert.equal(config.listeners.ws.path, "/mqtt");
    assert.equal(config.limits.max_session_expiry_interval, 4294967295);
  });
});

Deno.test("./config.toml in the working directory overrides defaults, other keys keep theirs", async () => {
  const toml = '[limits]\nmax_packet_size = 2048\n\n[listeners.ws]\npath = "/file"\n';
  await withTempDir({ "config.toml": toml }, (dir) => {
    const { config, file } = loadConfig({ args: [], env: {}, cwd: dir });
    assert.equal(file, `${dir}/config.toml`);
    assert.equal(config.limits.max_packet_size, 2048);
    assert.equal(config.listeners.ws.path, "/file");
    assert.equal(config.limits.receive_maximum, 32);
    assert.equal(config.ports.tcp, 1883);
  });
});

Deno.test("MCLOUDTT_CONFIG names the file, and --config beats it", async () => {
  const files = { "a.toml": "[ports]\ntcp = 1001\n", "b.toml": "[ports]\ntcp = 1002\n" };
  await withTempDir(files, (dir) => {
    const env = { MCLOUDTT_CONFIG: "a.toml" };
    assert.equal(loadConfig({ args: [], env, cwd: dir }).config.ports.tcp, 1001);
    const byFlag = loadConfig({ args: ["--config", `${dir}/b.toml`], env, cwd: dir });
    assert.equal(byFlag.config.ports.tcp, 1002);
    assert.equal(byFlag.file, `${dir}/b.toml`);
    assert.equal(loadConfig({ args: ["--config=b.toml"], env, cwd: dir }).config.ports.tcp, 1002);
  });
});

Deno.test("environment overrides the file, flags override the environment", async () => {
  const toml = "[limits]\nmax_packet_size = 1000\nreceive_maximum = 10\ntopic_alias_maximum = 5\n";
  await withTempDir({ "config.toml": toml }, (dir) => {
    const env = {
      MCLOUDTT_LIMITS_MAX_PACKET_SIZE: "2000",
      MCLOUDTT_LIMITS_RECEIVE_MAXIMUM: "20",
      MCLOUDTT_LISTENERS_WS_PATH: "/env",
    };
    const args = ["--limits.max_packet_size=3000", "--listeners.ws.path", "/flag"];
    const { config } = loadConfig({ args, env, cwd: dir });
    assert.equal(config.limits.max_packet_size, 3000); // file, env and flag: flag wins
    assert.equal(config.limits.receive_maximum, 20); // file and env: env wins
    assert.equal(config.limits.topic_alias_maximum, 5); // file only
    assert.equal(config.listeners.ws.path, "/flag");
  });
});

Deno.test("env and flag text is coerced to the key's type", async () => {
  await withTempDir({}, (dir) => {
    const env = {
      MCLOUDTT_GENERAL_SECURE: "no",
      MCLOUDTT_GENERAL_WEBSOCKET: "0",
      MCLOUDTT_TLS_REQUIRE_CLIENT_ID_MATCH: "YES",
      MCLOUDTT_LISTENERS_TCP_TLS: "true",
      MCLOUDTT_AUTH_ALLOW_ANONYMOUS: "auto",
      MCLOUDTT_TLS_CERTFILE: "123",
    };
    const args = ["--redis.enabled", "1", "--redis.port=+6380", "--limits.max_topic_levels= 7 "];
    const { config } = loadConfig({ args, env, cwd: dir });
    assert.equal(config.general.secure, false);
    assert.equal(config.general.websocket, false);
    assert.equal(config.tls.require_client_id_match, true);
    assert.equal(config.listeners.tcp.tls, true);
    assert.equal(config.auth.allow_anonymous, "auto");
    assert.equal(config.tls.certfile, "123"); // strings stay strings
    assert.equal(config.redis.enabled, true);
    assert.equal(config.redis.port, 6380);
    assert.equal(config.limits.max_topic_levels, 7);
  });
});

Deno.test("MCLOUDTT_CONFIG is not taken for a key and other variables are ignored", async () => {
  await withTempDir({ "c.toml": "" }, (dir) => {
    const env = { MCLOUDTT_CONFIG: "c.toml", HOME: "/nowhere", MQTT_PORT: "1" };
    assert.deepEqual(loadConfig({ args: [], env, cwd: dir }).config, defaultConfig());
  });
});

Deno.test("arguments that are not config flags are handed back in order", async () => {
  await withTempDir({}, (dir) => {
    const args = ["serve", "--help", "--ports.tcp", "0", "-v", "--version=2", "--", "--ports.ws=1"];
    const { config, rest } = loadConfig({ args, env: {}, cwd: dir });
    assert.deepEqual(rest, ["serve", "--help", "-v", "--version=2", "--", "--ports.ws=1"]);
    assert.equal(config.ports.tcp, 0);
    assert.equal(config.ports.ws, 8080); // after "--" nothing is a config flag
  });
});

Deno.test("TOML dotted keys and inline tables reach the same keys", async () => {
  const toml = 'listeners.ws.path = "/dotted"\nlimits = { max_topic_levels = 9 }\n';
  await withTempDir({ "config.toml": toml }, (dir) => {
    const { config } = loadConfig({ args: [], env: {}, cwd: dir });
    assert.equal(config.listeners.ws.path, "/dotted");
    assert.equal(config.limits.max_topic_levels, 9);
  });
});

Deno.test("resolveConfig fills defaults around a partial object without touching it", () => {
  const partial = { general: { secure: false }, ports: { tcp: 0 } };
  const config = resolveConfig(partial);
  assert.equal(config.general.secure, false);
  assert.equal(config.general.websocket, true);
  assert.equal(config.ports.tcp, 0);
  assert.equal(config.ports.ws, 8080);
  assert.deepEqual(partial, { general: { secure: false }, ports: { tcp: 0 } });
  assert.deepEqual(resolveConfig(), defaultConfig());
});

Deno.test("loaded configs are independent copies", () => {
  const a = resolveConfig();
  a.limits.max_packet_size = 99;
  assert.equal(resolveConfig().limits.max_packet_size, 1048576);
  assert.equal(defaultConfig().limits.max_packet_size, 1048576);
});
