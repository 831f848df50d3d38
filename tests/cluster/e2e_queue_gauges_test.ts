/**
 * The queue gauges (`mcloudtt_queued_messages`, `mcloudtt_queued_bytes`, what
 * limits.max_queued_bytes_total is checked against) of a node a session leaves: a session that
 * moves to another node, or that the cluster took away from a node frozen past its lease, no
 * longer counts on the node it left, nor keeps the bytes of a message it shared with a session
 * that stays there counted after that session drained. Left counted, a node's total only grows,
 * until nothing is queued for anyone. Two or three broker processes on one redis-server.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { delay, RawClient } from "../helpers/broker.ts";
import { type ClusterNode, eventually, TestCluster } from "../helpers/cluster.ts";
import { metric, scrape } from "../helpers/ops.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };
const persistent = { clean: false, properties: { sessionExpiryInterval: 3600 } };

async function queued(node: ClusterNode): Promise<{ messages: number; bytes: number }> {
  const m = await scrape(await node.httpUrl());
  return {
    messages: metric(m, "mcloudtt_queued_messages"),
    bytes: metric(m, "mcloudtt_queued_bytes"),
  };
}

/** An offline persistent session of `clientId` on `node`, subscribed to "t" at QoS 1. */
async function offline(node: ClusterNode, clientId: string): Promise<void> {
  await using s = await RawClient.connect(node.port, 5);
  await s.handshake(clientId, 5, persistent);
  await s.sendPacket({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic: "t", qos: 1 }] });
  await s.expect("suback");
  await s.sendPacket({ cmd: "disconnect" });
}

async function publish(node: ClusterNode, n: number): Promise<void> {
  await using pub = await RawClient.connect(node.port, 5);
  await pub.handshake("pub");
  for (let i = 1; i <= n; i++) {
    const payload = Buffer.alloc(1000, 0x2e);
    await pub.sendPacket({ cmd: "publish", topic: "t", qos: 1, messageId: i, payload });
    await pub.expect("puback");
  }
}

/** Resumes `clientId` on `node` and acknowledges what arrives until nothing has for a while. */
async function resume(node: ClusterNode, clientId: string): Promise<number> {
  await using s = await RawClient.connect(node.port, 5);
  // The CONNACK may wait for a frozen node to be found dead (a few seconds).
  await s.sendPacket({
    cmd: "connect",
    protocolId: "MQTT",
    protocolVersion: 5,
    clientId,
    keepalive: 60,
    ...persistent,
  });
  assert.equal((await s.expect("connack", 15_000)).reasonCode, 0);
  return (await s.drainPublishes()).length;
}

Deno.test({
  name: "cluster: a session that moves to another node leaves the queue gauges of the node it left",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b"] });
    const [a, b] = cluster.nodes;
    await offline(a, "mover");
    await offline(a, "stays");
    await publish(a, 20);
    const before = await queued(a);
    assert.equal(before.messages, 40);
    // Each message once, shared by the two queues.
    assert.ok(before.bytes < 2 * 20 * 1100, `${before.bytes} bytes`);

    assert.equal(await resume(b, "mover"), 20);
    // Before: still 40 messages and every byte counted on a.
    assert.deepEqual(await queued(a), { messages: 20, bytes: before.bytes - 20 * 64 });
    assert.equal(await resume(a, "stays"), 20);
    // Before: 20 messages and their bytes (the moved queue's references) for ever.
    assert.deepEqual(await queued(a), { messages: 0, bytes: 0 });
    assert.deepEqual(await queued(b), { messages: 0, bytes: 0 });
  },
});

Deno.test({
  name: "cluster: a node expelled after a freeze drops its queues from its gauges",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b"] });
    const [a, b] = cluster.nodes;
    await offline(a, "frozen-1");
    await offline(a, "frozen-2");
    await publish(b, 10);
    await eventually("queued on a", async () => (await queued(a)).messages === 20);
    // Frozen past its lease: b adopts its sessions; a hears it was expelled once it runs again.
    a.signal("SIGSTOP");
    await eventually("adopted by b", () => /adopted 2 of its sessions/.test(b.output()), 15_000);
    a.signal("SIGCONT");
    await a.proc.waitFor(/declared dead by the cluster/, 10_000);
    await delay(200);
    // Before: 20 messages stayed counted on a, whose sessions are b's now.
    assert.deepEqual(await queued(a), { messages: 0, bytes: 0 });
    assert.equal((await queued(b)).messages, 20);
    for (const id of ["frozen-1", "frozen-2"]) assert.equal(await resume(b, id), 10);
    assert.deepEqual(await queued(b), { messages: 0, bytes: 0 });
  },
});

Deno.test({
  name: "cluster: a session adopted from a dead node and handed back leaves the adopter's gauges",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b", "c"] });
    const [a, b, c] = cluster.nodes;
    await offline(b, "handed");
    await publish(a, 10);
    await eventually("queued on b", async () => (await queued(b)).messages === 10);
    // b freezes; its client comes back on c, whose claim waits for b, until b is found dead.
    // The survivor that adopts the session (with its queue) hands it back to c.
    b.signal("SIGSTOP");
    assert.equal(await resume(c, "handed"), 10);
    const adopter = /adopted 1 of its sessions/.test(a.output()) ? a : c;
    if (adopter === a) {
      // Before: the 10 messages stayed counted on a, which no longer had the session.
      assert.deepEqual(await queued(a), { messages: 0, bytes: 0 });
    }
    assert.deepEqual(await queued(c), { messages: 0, bytes: 0 });
    await b.kill();
  },
});
