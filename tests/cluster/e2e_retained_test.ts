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
