/**
 * Messages in flight count in `mcloudtt_queued_bytes` (limits.max_queued_bytes_total) on the
 * node that holds the session, and only there: a session that moves to another node with
 * unacknowledged messages lets them go on the node it left, the node it moves to counts them
 * as it restores them from the store, and they go when its client acknowledges them. Two broker
 * processes on one redis-server.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { type Packet, RawClient } from "../helpers/broker.ts";
import { type ClusterNode, eventually, TestCluster } from "../helpers/cluster.ts";
import { metric, scrape } from "../helpers/ops.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };
const persistent = { clean: false, properties: { sessionExpiryInterval: 3600 } };
type Publish = Packet & { messageId: number; dup: boolean };

async function gauge(node: ClusterNode): Promise<number> {
  return metric(await scrape(await node.httpUrl()), "mcloudtt_queued_bytes");
}

Deno.test({
  name: "cluster: messages in flight count on the node that holds their session, and go with it",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b"] });
    const [a, b] = cluster.nodes;
    const first = await RawClient.connect(a.port, 5);
    await first.handshake("mover", 5, persistent);
    await first.sendPacket({
      cmd: "subscribe",
      messageId: 1,
      subscriptions: [{ topic: "t", qos: 1 }],
    });
    await first.expect("suback");
    {
      await using pub = await RawClient.connect(a.port, 5);
      await pub.handshake("pub");
      for (let i = 1; i <= 5; i++) {
        const payload = Buffer.alloc(1000, i);
        await pub.sendPacket({ cmd: "publish", topic: "t", qos: 1, messageId: i, payload });
        await pub.expect("puback");
      }
    }
    // Received, never acknowledged: 5 in flight, each 1000 bytes, topic, objects and entry.
    for (let i = 0; i < 5; i++) await first.expect("publish");
    const each = 1000 + 1 + 512 + 64;
    assert.equal(await gauge(a), 5 * each);

    // The client comes back on b: the session moves with what is in flight.
    await using second = await RawClient.connect(b.port, 5);
    await second.handshake("mover", 5, persistent);
    const again: Publish[] = [];
    while (again.length < 5) again.push(await second.expect("publish") as Publish);
    assert.ok(again.every((p) => p.dup));
    // Before: a counted nothing in flight, nor did b.
    await eventually("a lets the moved session's messages go", async () => (await gauge(a)) === 0);
    assert.equal(await gauge(b), 5 * each);
    for (const p of again) await second.sendPacket({ cmd: "puback", messageId: p.messageId });
    await second.sendPacket({ cmd: "pingreq" });
    await second.expect("pingresp");
    assert.equal(await gauge(b), 0);
    assert.equal(await gauge(a), 0);
    first.close();
  },
});
