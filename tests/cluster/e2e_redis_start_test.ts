/**
 * A node started while Redis does not answer waits for it (`[redis] start_timeout_ms`): its
 * HTTP endpoint answers meanwhile (/healthz 200, /readyz 503 saying why), it joins once Redis
 * answers, and it exits with status 1 when Redis never does. What waiting cannot cure (wrong
 * credentials) fails at once with status 2, and a stop while it waits ends the wait. Before, a
 * node exited ("cannot start: Connection is closed.") at the first refused connection, so an
 * orchestrator restarted it in a loop with a growing delay until long after Redis was back.
 */
import assert from "node:assert/strict";
import { connectClient, delay, endClient } from "../helpers/broker.ts";
import { startMain } from "../helpers/main_process.ts";
import { FAST_LEASES } from "../helpers/cluster.ts";
import { RedisServer, skipWithoutRedis } from "../helpers/redis.ts";
import { RedisClusterGroup } from "../helpers/redis_groups.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };
const repoRoot = new URL("../../", import.meta.url).pathname;

/** main.ts as a cluster node on Redis at `redis` (a URL or `--redis.*` flags). */
function node(redis: string | string[], args: string[] = []) {
  return startMain(repoRoot, [
    "--general.secure=false",
    "--general.bind=127.0.0.1",
    "--general.log_level=info",
    "--storage.enabled=false",
    "--listeners.ws.enabled=false",
    "--ports.tcp=0",
    "--redis.enabled=true",
    ...(typeof redis === "string" ? [`--redis.url=${redis}`] : redis),
    `--cluster.lease_renew_ms=${FAST_LEASES.renewMs}`,
    `--cluster.lease_ttl_ms=${FAST_LEASES.ttlMs}`,
    ...args,
  ]);
}

type Node = ReturnType<typeof node>;

async function http(n: Node): Promise<string> {
  const m = await n.waitFor(/HTTP endpoint .* on (\S+):(\d+)/, 20_000);
  return `http://127.0.0.1:${m[2]}`;
}

async function get(url: string): Promise<{ status: number; body: string }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  return { status: res.status, body: await res.text() };
}

/** A client on the node publishes to itself and gets its message: the node serves. */
async function serves(n: Node): Promise<void> {
  const port = Number((await n.waitFor(/listening for MQTT over tcp on \S+:(\d+)/, 30_000))[1]);
  const c = await connectClient(port, { clientId: "start-probe" });
  try {
    const got = new Promise<string>((r) => c.on("message", (_t, p) => r(p.toString())));
    await c.subscribeAsync("start/probe", { qos: 1 });
    await c.publishAsync("start/probe", "hello", { qos: 1 });
    assert.equal(await got, "hello");
  } finally {
    await endClient(c, true);
  }
}

Deno.test({
  ...opts,
  name: "redis start: a node started before Redis answers /healthz 200 and /readyz 503 " +
    "(starting) while it waits, then joins and serves once Redis is up",
  async fn() {
    await using redis = await RedisServer.start();
    await redis.kill(); // its port stays ours: nothing answers there until the restart
    await using n = node(redis.url);
    const url = await http(n);
    await n.waitFor(/store: waiting for Redis .*redis\.start_timeout_ms/, 20_000);
    await delay(1500);
    assert.equal((await get(`${url}/healthz`)).status, 200);
    const ready = await get(`${url}/readyz`);
    assert.equal(ready.status, 503);
    assert.match(ready.body, /starting: waiting for the store and the cluster bus/);
    // Scraped before anything started: the figures of an empty broker.
    const metrics = await get(`${url}/metrics`);
    assert.equal(metrics.status, 200);
    assert.match(metrics.body, /^mcloudtt_sessions\{state="online"\} 0$/m);
    assert.doesNotMatch(n.output(), /cannot start/);
    await redis.restart();
    await n.waitFor(/joined the cluster/, 30_000);
    await serves(n);
    assert.equal((await get(`${url}/readyz`)).status, 200);
  },
});

Deno.test({
  ...opts,
  name: "redis start: Redis that never answers within redis.start_timeout_ms ends the start " +
    "with status 1 and one line naming the key; 0 gives up at the first refusal",
  async fn() {
    await using redis = await RedisServer.start();
    await redis.kill();
    for (const timeout of [1500, 0]) {
      const started = Date.now();
      await using n = node(redis.url, [`--redis.start_timeout_ms=${timeout}`]);
      const status = await n.status;
      const took = Date.now() - started;
      assert.equal(status.code, 1, n.output());
      assert.match(
        n.output(),
        new RegExp(
          `cannot start: store: Redis did not answer within redis\\.start_timeout_ms ` +
            `\\(${timeout} ms\\): connect ECONNREFUSED`,
        ),
      );
      // Process start-up included; the wait itself is 1.5 s or none.
      assert.ok(took < 15_000, `exited after ${took} ms`);
    }
  },
});

Deno.test({
  ...opts,
  name: "redis start: wrong credentials fail at once with status 2, naming the keys to fix",
  async fn() {
    await using redis = await RedisServer.start();
    await redis.command("CONFIG", "SET", "requirepass", "right");
    for (const url of [`redis://:wrong@127.0.0.1:${redis.port}`, redis.url]) {
      const started = Date.now();
      await using n = node(url);
      const status = await n.status;
      assert.equal(status.code, 2, n.output());
      assert.match(
        n.output(),
        /cannot start: store: Redis refused this node \(check redis\.username and redis\.password.*\): (WRONGPASS|NOAUTH)/,
      );
      // Not after start_timeout_ms (300 s): at the first answer.
      assert.ok(Date.now() - started < 15_000);
    }
  },
});

Deno.test({
  ...opts,
  name: "redis start: SIGTERM while the start waits for Redis ends it at once, status 0",
  async fn() {
    await using redis = await RedisServer.start();
    await redis.kill();
    await using n = node(redis.url);
    await n.waitFor(/store: waiting for Redis/, 20_000);
    const signalled = Date.now();
    n.child.kill("SIGTERM");
    const status = await n.status;
    assert.equal(status.code, 0, n.output());
    assert.match(n.output(), /SIGTERM received while waiting for Redis: not starting/);
    assert.ok(Date.now() - signalled < 5000, `took ${Date.now() - signalled} ms`);
  },
});

Deno.test({
  ...opts,
  name: "redis start: a Redis Cluster with a master down at the start: the node waits, and " +
    "joins and serves once the master is back",
  async fn() {
    await using group = await RedisClusterGroup.start();
    const master = group.masters[1];
    await master.kill();
    await using n = node(group.brokerArgs);
    const url = await http(n);
    // The store's PING and the bus's connections get an answer from the other masters; the
    // cluster's own keys may live on the one that is down.
    await delay(4000);
    assert.equal(n.output().match(/cannot start/), null, n.output());
    assert.equal((await get(`${url}/healthz`)).status, 200);
    assert.equal((await get(`${url}/readyz`)).status, 503);
    await master.restart();
    await n.waitFor(/joined the cluster/, 60_000);
    assert.match(n.output(), /cluster: waiting for Redis/, "the start did not wait for the master");
    await serves(n);
  },
});
