/**
 * Retained messages in the cluster's Redis store and a node started with lower retained limits
 * than its peers: it keeps the first topics that fit in its own memory (the same ones on every
 * node with those limits), counts and logs the others, and leaves them in Redis, where the
 * nodes with higher limits serve them and a node restarted with higher limits gets them back.
 * A real redis-server and broker processes.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { RawClient } from "../helpers/broker.ts";
import { type ClusterNode, TestCluster } from "../helpers/cluster.ts";
import { metric, scrape } from "../helpers/ops.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";
import { redisCommand } from "../helpers/redis_resp.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

/** The topics of the retained messages a new subscription to `filter` on `node` receives, sorted. */
async function retainedTopics(node: ClusterNode, filter: string): Promise<string[]> {
  await using s = await RawClient.connect(node.port, 5);
  await s.handshake(`sub-${crypto.randomUUID()}`);
  await s.sendPacket({
    cmd: "subscribe",
    messageId: 1,
    subscriptions: [{ topic: filter, qos: 0 }],
  });
  await s.expect("suback");
  const topics: string[] = [];
  for (;;) {
    const p = await s.next(500).catch(() => null) as { cmd: string; topic?: string } | null;
    if (p === null) return topics.sort();
    if (p.cmd === "publish") topics.push(p.topic!);
  }
}

Deno.test({
  name:
    "cluster: a node with lower retained limits keeps the first topics and leaves the rest in Redis",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a"] });
    const a = cluster.node("a");
    const all = Array.from({ length: 12 }, (_, i) => `r/${String(i).padStart(2, "0")}`);
    {
      await using pub = await RawClient.connect(a.port, 5);
      await pub.handshake("pub");
      let messageId = 0;
      // Newest topic first: the order Redis hands them over in is not the order kept.
      for (const topic of [...all].reverse()) {
        const payload = Buffer.from(topic);
        await pub.sendPacket({
          cmd: "publish",
          topic,
          qos: 1,
          messageId: ++messageId,
          retain: true,
          payload,
        });
        assert.ok(((await pub.expect("puback")).reasonCode as number ?? 0) < 0x80);
      }
    }
    const lower = ["--limits.max_retained_messages=4"];
    const b = await cluster.add("b", undefined, lower);
    const c = await cluster.add("c", undefined, lower);
    for (const node of [b, c]) {
      await node.proc.waitFor(
        /8 of 12 stored retained messages not restored.*8 over limits\.max_retained_messages.*they stay in the shared store for nodes with higher limits/,
      );
      // The same four on both: before, each kept whichever four Redis listed first.
      assert.deepEqual(await retainedTopics(node, "r/#"), all.slice(0, 4));
      const m = await scrape(await node.httpUrl());
      assert.equal(
        metric(m, 'mcloudtt_retained_dropped_at_start_total{reason="max_retained_messages"}'),
        8,
      );
    }
    // Nothing was deleted: a serves all of them, and Redis still holds all of them.
    assert.deepEqual(await retainedTopics(a, "r/#"), all);
    assert.equal(await redisCommand(cluster.redis.port, "SCARD", "mcloudtt:{ret}:index"), "12");
    // b again, with a's limits: it gets them all back.
    await b.stop();
    const b2 = await cluster.add("b");
    assert.deepEqual(await retainedTopics(b2, "r/#"), all);
  },
});
