/**
 * What only the Redis bus can show: the Redis traffic it causes (none for a
 * topic nobody elsewhere wants, one XADD per destination and turn), and how
 * it lives through connection loss, a Redis restart that lost everything,
 * corrupt entries and the remains of departed nodes.
 */
import assert from "node:assert/strict";
import { RedisServer, skipWithoutRedis } from "../helpers/redis.ts";
import { commandStats, redisQuery } from "../helpers/redis_resp.ts";
import { encodeBody } from "../../src/cluster/codec.ts";
import { delay } from "../helpers/broker.ts";
import { message, RecordingHost, until } from "./contract.ts";
import { redisBus, redisCluster, startBuses } from "./redis_cluster.ts";
import { ClusterKeys } from "../../src/cluster/redis_scripts.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };
/** Slow leases, so background renewals do not blur a count of Redis commands. */
const SLOW_LEASES = { cluster: { lease_renew_ms: 5000, lease_ttl_ms: 20000 } };

function total(stats: Map<string, number>, skip: string[] = []): number {
  let n = 0;
  for (const [k, v] of stats) if (!skip.includes(k)) n += v;
  return n;
}

Deno.test({
  name: "redis bus: a topic nobody on another node wants costs no Redis command",
  ...opts,
  async fn() {
    await using server = await RedisServer.start();
    await using nodes = await startBuses(redisCluster(server, 2, SLOW_LEASES).buses);
    const [a, b] = nodes.buses;
    const [, hb] = nodes.hosts;
    await b.addRoute("wanted/#");
    await a.addRoute("local/#");
    await delay(50);
    await server.command("CONFIG", "RESETSTAT");
    for (let i = 0; i < 1000; i++) {
      const r = a.forward(message(`local/${i % 10}`, { qos: 1 }));
      assert.equal(r.written, null);
      a.forward(message(`nobody/${i}`));
    }
    await delay(100);
    const stats = await commandStats(server);
    assert.equal(stats.get("xadd") ?? 0, 0, "no XADD for unrouted topics");
    // What remains is the blocking readers' timeouts and the INFO call itself.
    assert.ok(total(stats) < 10, `only background commands ran: ${JSON.stringify([...stats])}`);
    assert.deepEqual(hb.delivered, []);
  },
});

Deno.test({
  name: "redis bus: many messages in one turn are one XADD per destination, one round trip",
  ...opts,
  async fn() {
    await using server = await RedisServer.start();
    await using nodes = await startBuses(redisCluster(server, 3, SLOW_LEASES).buses);
    const [a, b, c] = nodes.buses;
    const [, hb, hc] = nodes.hosts;
    await b.addRoute("batch/#");
    await c.addRoute("batch/+");
    await server.command("CONFIG", "RESETSTAT");
    const n = 500;
    const written = [];
    for (let i = 0; i < n; i++) {
      written.push(a.forward(message(`batch/${i}`, { qos: 1, payload: `${i}` })).written);
    }
    await Promise.all(written);
    await until(() => hb.delivered.length === n && hc.delivered.length === n, 5000);
    const stats = await commandStats(server);
    assert.equal(stats.get("xadd"), 2, "one XADD per destination node for the whole turn");
    // Per forwarded message copy: XADD + the reader's XREADGROUP, XACK and XDEL, amortised.
    const perMessage = ((stats.get("xadd") ?? 0) + (stats.get("xreadgroup") ?? 0) +
      (stats.get("xack") ?? 0) + (stats.get("xdel") ?? 0)) / (2 * n);
    console.log(`redis commands per forwarded message copy (batch of ${n}): ${perMessage}`);
    assert.ok(perMessage < 0.05);
    const order = hb.delivered.map((d) => Number(new TextDecoder().decode(d.msg.payload)));
    assert.deepEqual(order, Array.from({ length: n }, (_, i) => i));
  },
});

Deno.test({
  name:
    "redis bus: a share group's leftover is an entry of its own, apart from the turn's other records",
  ...opts,
  async fn() {
    await using server = await RedisServer.start();
    await using nodes = await startBuses(redisCluster(server, 2, SLOW_LEASES).buses);
    const [a, b] = nodes.buses;
    const [, hb] = nodes.hosts;
    await b.addRoute("jobs/#");
    await b.addRoute("$share/g/jobs/#");
    await server.command("CONFIG", "RESETSTAT");
    // One turn: a plain forward, a leftover, another plain forward. A node of an older version
    // skips an entry holding the leftover's record: the plain ones must be in other entries.
    const m = message("jobs/1", { qos: 1 });
    a.forward(message("jobs/0", { qos: 1 }));
    assert.equal(a.forwardShared(m, "$share/g/jobs/#"), true);
    await a.forward(message("jobs/2", { qos: 1 })).written;
    await until(() => hb.delivered.length === 2 && hb.redelivered.length === 1, 5000);
    const stats = await commandStats(server);
    assert.equal(stats.get("xadd"), 3, "three entries: before, the leftover, after");
    assert.deepEqual(hb.delivered.map((d) => d.msg.topic), ["jobs/0", "jobs/2"]);
  },
});

Deno.test({
  name: "redis bus: forwarding throughput (quick figure, not a benchmark)",
  ...opts,
  async fn() {
    await using server = await RedisServer.start();
    await using nodes = await startBuses(redisCluster(server, 2).buses);
    const [a, b] = nodes.buses;
    const [, hb] = nodes.hosts;
    await b.addRoute("tp/#");
    const n = 20_000;
    const t0 = performance.now();
    // 100 messages per turn, as a busy broker's read loop would produce.
    for (let i = 0; i < n; i += 100) {
      const w = [];
      for (let j = 0; j < 100; j++) w.push(a.forward(message("tp/x", { qos: 1 })).written);
      await Promise.all(w);
    }
    await until(() => hb.delivered.length === n, 20_000);
    const ms = performance.now() - t0;
    console.log(
      `forwarded ${n} QoS 1 messages node to node in ${ms.toFixed(0)} ms: ` +
        `${Math.round(n / ms * 1000)} msg/s`,
    );
  },
});

Deno.test({
  name:
    "redis bus: acknowledged forwards survive killed connections, and Redis outages are reported",
  ...opts,
  async fn() {
    await using server = await RedisServer.start();
    await using nodes = await startBuses(redisCluster(server, 2).buses);
    const [a, b] = nodes.buses;
    const [, hb] = nodes.hosts;
    await b.addRoute("blip/#");
    const acked: number[] = [];
    for (let i = 0; i < 300; i++) {
      const w = a.forward(message("blip/x", { qos: 1, payload: `${i}` })).written!;
      w.then(() => acked.push(i), () => {});
      if (i === 100 || i === 200) {
        await server.command("CLIENT", "KILL", "TYPE", "normal");
        await delay(1);
        await until(() => a.problems.length === 0 && b.problems.length === 0, 5000);
      }
      if (i % 10 === 0) await delay(5);
    }
    await delay(300);
    const payloads = () =>
      new Set(hb.delivered.map((d) => new TextDecoder().decode(d.msg.payload)));
    await until(
      () => {
        const got = payloads();
        return acked.every((i) => got.has(`${i}`));
      },
      5000,
      "every acknowledged forward delivered",
    );
    // Forwards issued while the connection was being re-established are refused, not lost.
    assert.ok(
      acked.length >= 150,
      `forwards after each reconnect were acknowledged (${acked.length})`,
    );
    // A full outage: the node keeps answering, says what is wrong, and recovers.
    await server.kill();
    await until(() => a.problems.some((p) => p.includes("redis unreachable")), 3000);
    const during = a.forward(message("blip/x", { qos: 1 })).written!;
    await assert.rejects(during);
    assert.equal(a.forward(message("nobody")).written, null);
    await server.restart();
    await until(() => a.problems.length === 0 && b.problems.length === 0, 5000, "recovery");
    await until(() => a.routeCount > 0, 5000, "a learns b's route again");
    const before = hb.delivered.length;
    await a.forward(message("blip/after", { qos: 1 })).written;
    await until(() => hb.delivered.length > before, 3000);
  },
});

Deno.test({
  name: "redis bus: after a Redis restart that lost everything, routes and inboxes come back",
  ...opts,
  async fn() {
    await using server = await RedisServer.start();
    await using nodes = await startBuses(redisCluster(server, 2).buses);
    const [a, b] = nodes.buses;
    const [, hb] = nodes.hosts;
    await b.addRoute("again/#");
    await b.addRoute("$share/g/again/x");
    const keys = new ClusterKeys(b.keys.prefix);
    await server.restart(true);
    assert.equal(await server.command("EXISTS", keys.table), "0");
    await until(() => a.problems.length === 0 && b.problems.length === 0, 5000, "recovery");
    await untilAsync(async () => (await server.command("HLEN", keys.table)) === "2", 5000);
    await untilAsync(
      async () => (await server.command("EXISTS", keys.inbox(b.nodeId))) === "1",
      5000,
    );
    await untilAsync(async () => {
      // Bounded, so a forward that never settles fails the test instead of hanging it.
      const written = a.forward(message("again/x", { qos: 1 })).written ?? Promise.resolve();
      await Promise.race([written.catch(() => {}), delay(1000)]);
      return hb.delivered.length > 0;
    }, 5000);
    assert.deepEqual(hb.delivered.at(-1)!.groups, ["$share/g/again/x"]);
  },
});

async function untilAsync(cond: () => Promise<boolean>, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond().catch(() => false))) {
    if (Date.now() > deadline) throw new Error("timed out");
    await delay(20);
  }
}

Deno.test({
  name: "redis bus: an inbox entry without message ids (an older node) or with a list that does " +
    "not fit is delivered, its messages without ids",
  ...opts,
  async fn() {
    await using server = await RedisServer.start();
    await using nodes = await startBuses(redisCluster(server, 2).buses);
    const [a, b] = nodes.buses;
    const [, hb] = nodes.hosts;
    await b.addRoute("old/#");
    const inbox = b.keys.inbox(b.nodeId);
    // A batch as version 1 writes it: no groups, then the body (all bytes below 0x80 here).
    const batch = (topic: string) =>
      String.fromCharCode(1, 0, 0, ...encodeBody(message(topic, { qos: 1 })));
    await redisQuery(server.port, "XADD", inbox, "*", "t", "m", "d", batch("old/1"));
    await redisQuery(server.port, "XADD", inbox, "*", "t", "m", "d", batch("old/2"), "i", "x y");
    const now = message("old/3", { qos: 1 });
    await a.forward(now).written;
    await until(() => hb.delivered.length === 3, 3000);
    assert.deepEqual(hb.delivered.map((d) => [d.msg.topic, d.msg.id]), [
      ["old/1", ""],
      ["old/2", ""],
      ["old/3", now.id],
    ]);
    assert.notEqual(now.id, "");
    assert.equal(b.stats.corrupt, 0);
  },
});

Deno.test({
  name: "redis bus: corrupt or foreign inbox and route-log entries are skipped, not fatal",
  ...opts,
  async fn() {
    await using server = await RedisServer.start();
    await using nodes = await startBuses(redisCluster(server, 2).buses);
    const [a, b] = nodes.buses;
    const [, hb] = nodes.hosts;
    const inbox = b.keys.inbox(b.nodeId);
    await server.command("XADD", inbox, "*", "t", "m", "d", "\x01garbage");
    await server.command("XADD", inbox, "*", "t", "zz");
    await server.command("XADD", inbox, "*", "hello", "world");
    await server.command("XADD", b.keys.log, "*", "k", "x");
    await b.addRoute("ok");
    await a.forward(message("ok", { qos: 1 })).written;
    await until(() => hb.delivered.length === 1, 3000);
    assert.equal(b.stats.corrupt, 3);
    assert.equal(b.problems.length, 0);
  },
});

Deno.test({
  name: "redis bus: a dead node's routes, lease and inbox are gone after one survivor handled it",
  ...opts,
  async fn() {
    await using server = await RedisServer.start();
    await using nodes = await startBuses(redisCluster(server, 3).buses);
    const [a, , c] = nodes.buses;
    const hosts = nodes.hosts;
    await c.addRoute("x/#");
    await c.addRoute("y");
    await c.halt();
    await until(() => hosts[0].down.length + hosts[1].down.length === 1, 5000, "nodeDown");
    const keys = a.keys;
    await untilAsync(async () => (await server.command("HLEN", keys.table)) === "0", 3000);
    // The inbox goes last, once what was left in it has gone to the adopted sessions.
    await untilAsync(
      async () => (await server.command("EXISTS", keys.inbox(c.nodeId))) === "0",
      3000,
    );
    assert.equal(await server.command("ZSCORE", keys.nodes, c.nodeId), "");
    assert.equal(await server.command("EXISTS", keys.nodeRoutes(c.nodeId)), "0");
  },
});

Deno.test({
  name:
    "redis bus: routes of a departed incarnation are purged when a node starts; a clean stop leaves nothing",
  ...opts,
  async fn() {
    await using server = await RedisServer.start();
    const bus = redisBus(server, "fresh", { redis: { key_prefix: "purge" } });
    const keys = bus.keys;
    await server.command("HSET", keys.table, "ghost-1\nold/#", "1");
    await server.command("SADD", keys.nodeRoutes("ghost-1"), "old/#");
    await bus.start(new RecordingHost());
    try {
      assert.equal(await server.command("HEXISTS", keys.table, "ghost-1\nold/#"), "0");
      assert.equal(bus.routeCount, 0);
      await bus.addRoute("mine");
      assert.equal(await server.command("HLEN", keys.table), "1");
    } finally {
      await bus.stop();
    }
    assert.equal(await server.command("HLEN", keys.table), "0");
    assert.equal(await server.command("ZCARD", keys.nodes), "0");
    assert.equal(await server.command("EXISTS", keys.inbox(bus.nodeId)), "0");
  },
});

Deno.test({
  name: "redis bus: a SUBACK-time route is visible to every node when addRoute resolves (fence)",
  ...opts,
  async fn() {
    await using server = await RedisServer.start();
    await using nodes = await startBuses(redisCluster(server, 3).buses);
    const [a, b, c] = nodes.buses;
    const [, hb] = nodes.hosts;
    for (let i = 0; i < 20; i++) {
      await b.addRoute(`fence/${i}`);
      // Immediately after the "SUBACK", both other nodes route to B.
      assert.notEqual(a.forward(message(`fence/${i}`, { qos: 1 })).written, null, `A, ${i}`);
      assert.notEqual(c.forward(message(`fence/${i}`, { qos: 1 })).written, null, `C, ${i}`);
    }
    await until(() => hb.delivered.length === 40, 3000);
  },
});

Deno.test({
  name:
    "redis bus: a renewal answered only after a lease's time (Redis held it) declares nobody dead",
  ...opts,
  async fn() {
    // As in a Redis Cluster failover: ioredis holds one node's renewal and retries it until the
    // promoted replica answers, while the other node's renewals failed meanwhile (here: its
    // command timeout is shorter, so its connection is closed and re-established). The renewal
    // that gets through was sent before the outage and finds the other node's lease run out; that
    // node was cut off as this one was, not dead.
    await using server = await RedisServer.start();
    const prefix = `t${crypto.randomUUID().slice(0, 8)}`;
    await using nodes = await startBuses([
      redisBus(server, "short", { redis: { key_prefix: prefix, command_timeout_ms: 600 } }),
      redisBus(server, "long", { redis: { key_prefix: prefix, command_timeout_ms: 5000 } }),
    ]);
    await delay(300);
    await server.command("CLIENT", "PAUSE", "1500", "ALL");
    await delay(1500 + 1500);
    assert.deepEqual(nodes.hosts.map((h) => [h.down, h.expulsions]), [[[], 0], [[], 0]]);
    await until(() => nodes.buses.every((b) => b.problems.length === 0), 3000, "ready");
  },
});
