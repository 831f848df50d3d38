/**
 * Two broker processes behave as one on each Redis deployment the config
 * offers besides a single server: Sentinel (`[redis] mode = "sentinel"`, a
 * primary, a replica and three sentinels) and Redis Cluster (`mode =
 * "cluster"`, three masters, so the broker's keys spread over slots on
 * different servers). On each: cross-node delivery at QoS 0 and 1, a retained
 * message seen by a later subscriber on the other node, and a persistent
 * session resumed on the other node with Session Present and its queue.
 */
import assert from "node:assert/strict";
import { connectClient, type Packet, RawClient, subscriber } from "../helpers/broker.ts";
import { TestCluster } from "../helpers/cluster.ts";
import { type RedisBackend, skipWithoutRedis } from "../helpers/redis.ts";
import { RedisClusterGroup, RedisSentinelGroup } from "../helpers/redis_groups.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

type P = Packet & Record<string, unknown>;
const text = (p: P) => new TextDecoder().decode(p.payload as Uint8Array);
const PERSISTENT = { clean: false, properties: { sessionExpiryInterval: 300 } };

/** The three behaviours, on nodes a and b of `cluster`. */
async function behavesAsOne(cluster: TestCluster<RedisBackend>): Promise<void> {
  const [a, b] = cluster.nodes;

  // Cross-node delivery, QoS 0 and 1, in order.
  await using sub = await subscriber(b.port, "m/#", 1, { clientId: "sub" });
  await using pub = await connectClient(a.port, { clientId: "pub" });
  await pub.publishAsync("m/0", "zero", { qos: 0 });
  await pub.publishAsync("m/1", "one", { qos: 1 });
  const got = [await sub.inbox.next(5000), await sub.inbox.next(5000)];
  assert.deepEqual(got.map((m) => `${m.topic}=${m.payload}`), ["m/0=zero", "m/1=one"]);
  assert.deepEqual(got.map((m) => m.packet.qos), [0, 1]);

  // Retained on a, seen by a later subscriber on b (acknowledged means stored).
  await pub.publishAsync("r/1", "kept", { qos: 1, retain: true });
  await using late = await subscriber(b.port, "r/#", 1, { clientId: "late" });
  const ret = await late.inbox.next(5000);
  assert.equal(`${ret.topic}=${ret.payload}`, "r/1=kept");
  assert.equal(ret.packet.retain, true);

  // A persistent session made on a resumes on b with Session Present and its queue.
  const first = await RawClient.connect(a.port);
  assert.equal((await first.handshake("pers", 5, PERSISTENT)).sessionPresent, false);
  await first.sendPacket({
    cmd: "subscribe",
    messageId: 1,
    subscriptions: [{ topic: "p/#", qos: 1 }],
  });
  assert.deepEqual((await first.expect("suback")).granted, [1]);
  await first.sendPacket({ cmd: "disconnect" });
  await first.expectClosed();
  await using pubB = await connectClient(b.port, { clientId: "pub-b" });
  for (let i = 0; i < 3; i++) await pubB.publishAsync(`p/${i}`, `queued-${i}`, { qos: 1 });
  await using second = await RawClient.connect(b.port);
  assert.equal((await second.handshake("pers", 5, PERSISTENT)).sessionPresent, true);
  const queued: P[] = [];
  for (let i = 0; i < 3; i++) queued.push(await second.expect("publish") as P);
  assert.deepEqual(queued.map(text), ["queued-0", "queued-1", "queued-2"]);
  assert.deepEqual(queued.map((p) => p.qos), [1, 1, 1]);
  for (const p of queued) await second.sendPacket({ cmd: "puback", messageId: p.messageId });
}

Deno.test({
  name: "redis sentinel mode: two nodes deliver, retain and resume sessions as one broker",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({
      names: ["a", "b"],
      redis: () => RedisSentinelGroup.start({ replicas: 1, sentinels: 3 }),
    });
    await behavesAsOne(cluster);
    // The nodes talk to the primary the sentinels name: the replica holds the same state.
    const primary = await cluster.redis.primary();
    const replica = cluster.redis.servers.find((s) => s !== primary)!;
    assert.notEqual(await replica.command("EXISTS", "mcloudtt:{s:pers}:meta"), "0");
  },
});

Deno.test({
  name: "redis cluster mode: two nodes deliver, retain and resume sessions as one broker",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({
      names: ["a", "b"],
      redis: () => RedisClusterGroup.start({ masters: 3 }),
    });
    await behavesAsOne(cluster);
    // The keys really are spread: every master holds some of them.
    for (const m of cluster.redis.masters) {
      assert.notEqual(await m.command("DBSIZE"), "0", `master ${m.port} holds keys`);
    }
  },
});
