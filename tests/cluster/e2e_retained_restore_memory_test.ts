/**
 * A node with low retained limits starting against a Redis that holds many retained messages
 * reads their topics (to take them in topic order) and the payloads of the ones it keeps, not
 * the others: its peak RSS (VmHWM of the broker process) stays near what a node holding nothing
 * costs, whatever Redis holds. A real redis-server, filled through the Redis store; a broker
 * process (`main.ts`) as a cluster node.
 */
import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { RawClient } from "../helpers/broker.ts";
import { mib, peakRssOf } from "../helpers/broker_process.ts";
import { type ClusterNode, TestCluster } from "../helpers/cluster.ts";
import { metric, scrape } from "../helpers/ops.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";
import { redisCommand } from "../helpers/redis_resp.ts";
import { RedisStore } from "../../src/store/redis.ts";
import type { StoreOp } from "../../src/store/types.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

const MIB = 1024 * 1024;
const STORED = 1500;
const PAYLOAD = 100 * 1024;

const topicOf = (i: number) => `big/${String(i).padStart(4, "0")}`;

/** Writes STORED retained messages of PAYLOAD bytes into the cluster's Redis, newest topic first. */
async function fill(port: number): Promise<void> {
  const store = new RedisStore(new Redis(port, "127.0.0.1", { lazyConnect: true }), {
    keyPrefix: "mcloudtt",
    nodeId: "filler",
    ownsClient: true,
  });
  await store.open();
  try {
    const payload = new Uint8Array(PAYLOAD).fill(0x2e);
    for (let end = STORED; end > 0; end -= 100) {
      const ops: StoreOp[] = [];
      for (let i = end - 1; i >= Math.max(0, end - 100); i--) {
        const msg = {
          topic: topicOf(i),
          payload,
          qos: 1 as const,
          retain: true,
          props: null,
          expiresAt: 0,
          origin: "filler",
        };
        ops.push({ type: "retain", msg });
      }
      await store.write(ops);
    }
  } finally {
    await store.close();
  }
}

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
    const p = await s.next(1000).catch(() => null) as { cmd: string; topic?: string } | null;
    if (p === null) return topics.sort();
    if (p.cmd === "publish") topics.push(p.topic!);
  }
}

Deno.test({
  name:
    "cluster: a node with max_retained_messages = 10 does not load the payloads of the 1,500 retained messages it does not keep",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: [] });
    await fill(cluster.redis.port);
    const node = await cluster.add("low", undefined, ["--limits.max_retained_messages=10"]);
    // The retained messages are restored before the node listens: its start's peak is in VmHWM.
    const peak = peakRssOf(node.proc.child.pid);
    console.log(`peak RSS of the node: ${mib(peak)} (Redis holds ${mib(STORED * PAYLOAD)})`);
    await node.proc.waitFor(
      /1490 of 1500 stored retained messages not restored.*they stay in the shared store/,
    );
    assert.deepEqual(
      await retainedTopics(node, "big/#"),
      Array.from({ length: 10 }, (_, i) => topicOf(i)),
    );
    const m = await scrape(await node.httpUrl());
    assert.equal(
      metric(m, 'mcloudtt_retained_dropped_at_start_total{reason="max_retained_messages"}'),
      STORED - 10,
    );
    // Nothing was deleted from Redis.
    assert.equal(
      await redisCommand(cluster.redis.port, "SCARD", "mcloudtt:{ret}:index"),
      String(STORED),
    );
    // Loading every payload held them all at once (146 MiB of them); 10 of 100 KiB are 1 MiB.
    assert.ok(peak < 150 * MIB, `peak RSS ${mib(peak)}`);
  },
});
