/**
 * Retained messages in a cluster of broker processes: set on one node, seen
 * by new subscribers on every node, including a node started later; clearing
 * and Message Expiry hold cluster-wide.
 */
import assert from "node:assert/strict";
import { collect, connectClient, delay } from "../helpers/broker.ts";
import { TestCluster } from "../helpers/cluster.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

/** What a new subscriber to `filter` on `port` gets as retained messages within `ms`. */
async function retainedOn(port: number, filter: string, ms = 400): Promise<string[]> {
  await using c = await connectClient(port, { clientId: `look-${crypto.randomUUID()}` });
  const box = collect(c);
  await c.subscribeAsync(filter, { qos: 1 });
  await delay(ms);
  for (const m of box.messages) assert.equal(m.packet.retain, true, "sent as retained");
  return box.messages.map((m) => `${m.topic}=${m.payload}`).sort();
}

Deno.test({
  name: "cluster: retained messages are seen on every node, a later one too; clear and expiry hold",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b"] });
    const [a, b] = cluster.nodes;
    await using pub = await connectClient(a.port, { clientId: "pub" });
    await pub.publishAsync("ret/1", "one", { qos: 1, retain: true });
    await pub.publishAsync("ret/2", "two", { qos: 1, retain: true });
    await pub.publishAsync("ret/2", "two-v2", { qos: 1, retain: true });
    // Acknowledged means stored: no wait before looking on the other node.
    assert.deepEqual(await retainedOn(b.port, "ret/#"), ["ret/1=one", "ret/2=two-v2"]);

    const c = await cluster.add("c");
    assert.deepEqual(await retainedOn(c.port, "ret/#"), ["ret/1=one", "ret/2=two-v2"]);

    // Cleared on b: gone everywhere.
    await using pubB = await connectClient(b.port, { clientId: "pub-b" });
    await pubB.publishAsync("ret/1", "", { qos: 1, retain: true });
    for (const n of [a, b, c]) {
      assert.deepEqual(await retainedOn(n.port, "ret/#"), ["ret/2=two-v2"]);
    }

    // Message Expiry: present while it lasts, on every node, then gone everywhere.
    await pub.publishAsync("exp/1", "short", {
      qos: 1,
      retain: true,
      properties: { messageExpiryInterval: 2 },
    });
    for (const n of [a, b, c]) {
      assert.deepEqual(await retainedOn(n.port, "exp/#", 100), ["exp/1=short"]);
    }
    await delay(2200);
    for (const n of [a, b, c]) assert.deepEqual(await retainedOn(n.port, "exp/#", 200), []);
    const d = await cluster.add("d");
    assert.deepEqual(await retainedOn(d.port, "exp/#", 200), [], "a later node has it expired");
    assert.deepEqual(await retainedOn(d.port, "ret/#", 200), ["ret/2=two-v2"]);
  },
});

Deno.test({
  name:
    "cluster: one topic's retained message set (or cleared) on two nodes at once ends the same " +
    "on every node, in Redis and on a node started later",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b", "c"] });
    const [a, b, c] = cluster.nodes;
    await using pa = await connectClient(a.port, { clientId: "pa" });
    await using pb = await connectClient(b.port, { clientId: "pb" });
    const K = 30;
    for (let i = 0; i < K; i++) {
      // Set on a and on b in the same moment; every third topic is cleared on b instead.
      await Promise.all([
        pa.publishAsync(`race/${i}`, `A${i}`, { qos: 1, retain: true }),
        pb.publishAsync(`race/${i}`, i % 3 === 0 ? "" : `B${i}`, { qos: 1, retain: true }),
      ]);
    }
    await delay(500);
    const seen = [await retainedOn(a.port, "race/#"), await retainedOn(b.port, "race/#")];
    seen.push(await retainedOn(c.port, "race/#"));
    // Before versions each node kept the update that reached it last, and most topics differed.
    assert.deepEqual(seen[1], seen[0], "b serves what a serves");
    assert.deepEqual(seen[2], seen[0], "c serves what a serves");
    const d = await cluster.add("d");
    assert.deepEqual(
      await retainedOn(d.port, "race/#"),
      seen[0],
      "a node started later, from Redis",
    );
    // Each topic holds one of the two updates.
    for (const line of seen[0]) assert.match(line, /^race\/(\d+)=(A|B)\1$/);
  },
});
