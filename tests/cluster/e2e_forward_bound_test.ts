/**
 * What a node holds for another node while Redis takes its forwards slower than a client
 * publishes (a QoS 0 flood, a frozen Redis): bounded by `[cluster] max_forward_bytes` per
 * destination, QoS 0 copies past it dropped and counted, as for a slow subscriber. Before, it
 * was bounded only by `max_inbox_backlog` entries (of up to 1 MiB each): one client's flood
 * from 4 connections held 1.8 GB on its node, whose lease renewal, queued behind it on the same
 * Redis connection, came too late: the cluster declared the node dead and it dropped every client.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { connectClient, subscriber } from "../helpers/broker.ts";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import { scrape } from "../helpers/ops.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

Deno.test({
  name: "cluster: QoS 0 copies a node cannot hand to Redis are held up to " +
    "max_forward_bytes per destination, then dropped and counted",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b"] });
    const [a, b] = cluster.nodes;
    const url = await a.httpUrl();
    const received = async () =>
      (await scrape(url)).get('mcloudtt_messages_received_total{qos="0"}');
    await using sub = await subscriber(b.port, "flood/#", 0, { clientId: "flood-sub" });
    await using pub = await connectClient(a.port, { clientId: "flood-pub" });
    // Redis frozen (shorter than the command timeout): nothing a forwards for b settles.
    const n = 600;
    const payload = Buffer.alloc(256 * 1024);
    cluster.redis.signal("SIGSTOP");
    let metrics: Map<string, number>;
    try {
      for (let i = 0; i < n; i++) await pub.publishAsync("flood/x", payload, { qos: 0 });
      await eventually(`a read the ${n} publishes`, async () => (await received()) === n, 20_000);
      metrics = await scrape(url);
    } finally {
      cluster.redis.signal("SIGCONT");
    }
    const dropped = metrics.get("mcloudtt_cluster_forwards_dropped_total") ?? 0;
    const mib = (k: string) => ((metrics.get(k) ?? 0) / 2 ** 20).toFixed(0);
    console.log(
      `${n} x 256 KiB while Redis was frozen: ${dropped} copies for b dropped; a's RSS ` +
        `${mib("process_resident_memory_bytes")} MiB, external ${
          mib("mcloudtt_external_memory_bytes")
        } MiB; b's subscriber got ${sub.inbox.messages.length} so far`,
    );
    // 150 MiB for b against the default bound of 64 MiB: about 344 dropped. Before, none (600
    // entries are under max_inbox_backlog), all 150 MiB held by a.
    assert.ok(dropped >= n - (64 * 2 ** 20) / payload.length - 8, `only ${dropped} dropped`);
  },
});
