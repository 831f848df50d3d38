/**
 * A node's lease and its forwarded messages go over different Redis connections. When one
 * connection carried both, a renewal queued behind megabytes of forwarded messages (a publish
 * flood, a slow Redis pipe) reached Redis after the lease ran out: the other node handled a
 * healthy node as dead, and the node dropped every client when it learned it. The lease still
 * ends when the forwarding connection is gone for good: a node that cannot forward must not
 * claim to be a member for ever.
 *
 * The nodes reach Redis through a proxy (tests/helpers/redis_proxy.ts) that slows down or stalls
 * the forwarding connection of node a only (`mcloudtt:bus:<node>`), as a saturated or silent
 * pipe would.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import type { MqttClient } from "mqtt";
import { ClusterKeys } from "../../src/cluster/redis_scripts.ts";
import { connectClient, delay, endClient, subscriber } from "../helpers/broker.ts";
import { eventually, FAST_LEASES, TestCluster } from "../helpers/cluster.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";
import { redisCommand } from "../helpers/redis_resp.ts";
import { RedisProxy } from "../helpers/redis_proxy.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

const NODES = new ClusterKeys("mcloudtt").nodes;
const DEAD_HANDLED = /stopped renewing its lease: taking over its cleanup/;
const EXPELLED = /was declared dead by the cluster/;

/**
 * Rejects once `node` has handled another node as dead (polled from its log), so a flood into
 * an expelled node, whose client is gone, fails the test instead of hanging it.
 */
function deathOf(node: { output(): string }): { promise: Promise<never>; stop(): void } {
  let timer: ReturnType<typeof setInterval> | undefined;
  const promise = new Promise<never>((_, reject) => {
    timer = setInterval(() => {
      if (DEAD_HANDLED.test(node.output())) reject(new Error("b handled a as dead"));
    }, 50);
  });
  promise.catch(() => {});
  return { promise, stop: () => clearInterval(timer) };
}

/**
 * `client`, ended at once when disposed: not waiting for a PUBACK that will not come when the
 * test failed before it (a client whose node dropped it is never answered).
 */
function ended<C extends MqttClient>(client: C): C & AsyncDisposable {
  return Object.assign(client, {
    [Symbol.asyncDispose]: () => Promise.race([endClient(client, true), delay(2000)]),
  });
}

/** Redis's clock (ms), read past the proxy. */
async function redisNow(port: number): Promise<number> {
  const [sec, usec] = (await redisCommand(port, "TIME")).split("\n").map(Number);
  return sec * 1000 + Math.floor(usec / 1000);
}

/** The deadline of `node`'s lease on Redis's clock (ms), read past the proxy; 0 when none. */
async function leaseDeadline(port: number, node: string): Promise<number> {
  return Number(await redisCommand(port, "ZSCORE", NODES, node)) || 0;
}

Deno.test({
  name: "cluster: a node whose forwarding connection is saturated keeps its lease " +
    "(its renewals do not queue behind the forwarded messages)",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({
      names: ["a", "b"],
      redis: () => RedisProxy.start(),
      // The saturated connection keeps answering: it must not be closed as a silent one.
      args: ["--redis.command_timeout_ms=30000"],
    });
    const proxy = cluster.redis;
    const redisPort = proxy.redis.port;
    const [a, b] = cluster.nodes;
    // Five connections per node (README), the lease's among them.
    const names = (await redisCommand(redisPort, "CLIENT", "LIST")).match(/ name=\S+/g) ?? [];
    const ofA = names.map((n) => n.slice(6)).filter((n) => n.endsWith(`:${a.nodeId}`)).sort();
    assert.deepEqual(
      ofA,
      ["bus", "inbox", "lease", "routes"].map((r) => `mcloudtt:${r}:${a.nodeId}`),
    );
    assert.equal(names.filter((n) => n === " name=mcloudtt:store").length, 2);
    await using sub = await subscriber(b.port, "flood/#", 1, { clientId: "flood-sub" });
    await using pub = ended(await connectClient(a.port, { clientId: "flood-pub" }));
    // A slow pipe to Redis for a's forwarding connection, and a flood that fills it: what a
    // holds for b (up to max_forward_bytes, 64 MiB) takes about a minute to get through.
    const bus = new RegExp(`^mcloudtt:bus:${a.nodeId}$`);
    proxy.limit(bus, 1_000_000);
    const payload = Buffer.alloc(16 * 1024);
    const death = deathOf(b);
    let acked = false;
    let probe: Promise<unknown>;
    let sentAt = 0;
    try {
      for (let i = 0; i < 2000; i++) {
        await Promise.race([pub.publishAsync("flood/x", payload, { qos: 0 }), death.promise]);
      }
      // A QoS 1 message for b queued behind all that: its PUBACK waits for its write.
      sentAt = await redisNow(redisPort);
      probe = pub.publishAsync("flood/probe", "probe", { qos: 1 }).then(() => acked = true);
      probe.catch(() => {}); // awaited below unless the test failed first
      // a's lease is renewed on Redis more than a lease after the probe was queued, while the
      // probe is still waiting: renewals got through what the forwarding connection could not.
      // Before, the renewal waited behind the flood, b handled a as dead after lease_ttl_ms and
      // a dropped its clients when it learned it.
      const past = sentAt + 2 * FAST_LEASES.ttlMs + FAST_LEASES.renewMs;
      await Promise.race([
        eventually(
          "a's lease renewed a lease after the probe was queued",
          async () => (await leaseDeadline(redisPort, a.nodeId)) > past,
          20_000,
        ),
        death.promise,
      ]);
      assert.equal(acked, false, "the forwarding connection was not saturated");
    } finally {
      death.stop();
      proxy.limit(bus, null);
    }
    await probe;
    console.log(
      `probe acknowledged ${(await redisNow(redisPort)) - sentAt} ms after it was queued; ` +
        `a's lease renewed meanwhile more than ${FAST_LEASES.ttlMs} ms (a lease) after it`,
    );
    await eventually(
      "the probe reached b",
      () => sub.inbox.messages.some((m) => m.topic === "flood/probe"),
      30_000,
    );
    assert.doesNotMatch(b.output(), DEAD_HANDLED);
    assert.doesNotMatch(a.output(), EXPELLED);
    assert.ok(pub.connected, "a dropped its client");
  },
});

Deno.test({
  name: "cluster: a node whose forwarding connection answers nothing stops renewing its lease " +
    "once that connection is closed, reports it on /readyz, and rejoins when it is back",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({
      names: ["a", "b"],
      redis: () => RedisProxy.start(),
      args: ["--redis.command_timeout_ms=1500"],
    });
    const proxy = cluster.redis;
    const [a, b] = cluster.nodes;
    await using victim = await connectClient(a.port, { clientId: "victim", reconnectPeriod: 0 });
    let closedAt = 0;
    victim.on("close", () => closedAt ||= Date.now());
    const bus = new RegExp(`^mcloudtt:bus:${a.nodeId}$`);
    // Nothing sent on a's forwarding connection reaches Redis any more, on any new one either.
    proxy.limit(bus, 0);
    try {
      // The connection answers nothing: command_timeout_ms closes it, and it cannot come back.
      await eventually("a reports Redis unreachable", async () => {
        const r = await a.readiness();
        return r.status === 503 && r.problems.some((p) => p.includes("redis unreachable"));
      }, 15_000);
      // Its lease connection works, but a node that cannot forward does not go on claiming
      // to be a member: its lease runs out and b handles it as dead.
      await eventually("b handles a as dead", () => DEAD_HANDLED.test(b.output()), 20_000);
    } finally {
      proxy.limit(bus, null);
    }
    // Back: a learns it was handled, drops its clients and rejoins.
    await eventually("a learns it was expelled", () => EXPELLED.test(a.output()), 20_000);
    await eventually("victim's connection ended", () => closedAt !== 0, 10_000);
    await eventually("a is ready again", async () => (await a.readiness()).status === 200, 20_000);
    // And it serves the cluster again: a message from a reaches b.
    await using sub = await subscriber(b.port, "back/#", 1, { clientId: "back-sub" });
    await using pub = await connectClient(a.port, { clientId: "back-pub" });
    await eventually("a routes to b again", async () => {
      await pub.publishAsync("back/x", "hello", { qos: 1 });
      return sub.inbox.messages.some((m) => m.topic === "back/x");
    }, 20_000);
  },
});
