/**
 * Redis restarts without its data while the nodes run: what they hold goes back to it without
 * anyone touching it. Before, a node wrote a session again only when something changed it, and
 * retained messages never: a node started afterwards had none of the retained messages every
 * running node still served, and an offline session nobody published to was gone once its node
 * stopped.
 */
import assert from "node:assert/strict";
import { connectClient, endClient } from "../helpers/broker.ts";
import { retainedOnNewNode, sessionAfterRestart } from "./redis_loss_checks.ts";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";

const ignore = skipWithoutRedis();
const N = 300;

Deno.test({
  name: "redis restarted without its data: the nodes write their sessions and retained " +
    "messages again; a node started later has the retained ones, an untouched offline " +
    "session survives its node's restart",
  ignore,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // Pages of 64: the rewrite takes several, each written before the next.
    await using cluster = await TestCluster.start({
      names: ["a", "b"],
      args: ["--storage.retained_page_messages=64"],
    });
    const [a, b] = cluster.nodes;
    const persistent = { clean: false, properties: { sessionExpiryInterval: 3600 } };
    const keeper = await connectClient(b.port, { clientId: "keeper", ...persistent });
    await keeper.subscribeAsync("k/#", { qos: 1 });
    await endClient(keeper);
    const pub = await connectClient(a.port, { clientId: "pub" });
    for (let i = 0; i < N; i++) {
      await pub.publishAsync(`r/${i}`, `v${i}`, { qos: 1, retain: true });
    }
    // Replaced on one topic: the newest version is the one written back.
    await pub.publishAsync("r/0", "newest", { qos: 1, retain: true });
    await endClient(pub);
    const redis = cluster.redis;
    await eventually(
      "keeper and the retained messages stored",
      async () =>
        Number(await redis.command("SCARD", "mcloudtt:{ret}:index")) === N &&
        (await redis.command("HGET", "mcloudtt:{s:keeper}:meta", "ea")) > "0",
    );

    await redis.restart(true);
    assert.equal(Number(await redis.command("SCARD", "mcloudtt:{ret}:index")), 0);
    await eventually(
      "both nodes noticed",
      () => [a, b].every((n) => /redis lost the cluster state/.test(n.output())),
      15_000,
    );
    // Nothing published or connected since: what comes back is what the nodes wrote by
    // themselves.
    await eventually(
      "the retained messages and the offline session written again",
      async () =>
        Number(await redis.command("SCARD", "mcloudtt:{ret}:index")) === N &&
        (await redis.command("HGET", "mcloudtt:{s:keeper}:meta", "ea")) > "0",
      20_000,
    );
    const rewrote = /wrote (\d+) sessions and (\d+) retained messages held here again/;
    await eventually(
      "both nodes logged their rewrite",
      () => [a, b].every((n) => rewrote.test(n.output())),
    );
    const [ra, rb] = [a, b].map((n) => rewrote.exec(n.output())!.slice(1).map(Number));
    console.log(
      `[figures] ${N} retained topics in redis after the rewrite; a wrote ${ra[0]} sessions and ` +
        `${ra[1]} retained messages, b ${rb[0]} and ${rb[1]}`,
    );
    // Each node writes the sessions it holds, and every retained message.
    assert.deepEqual([ra, rb], [[0, N], [1, N]]);

    // A node that starts now loads the retained messages from Redis.
    const { received, byTopic } = await retainedOnNewNode(cluster, "c", N);
    assert.equal(received, N);
    assert.equal(byTopic.size, N);
    assert.equal(byTopic.get("r/0"), "newest");
    assert.equal(byTopic.get(`r/${N - 1}`), `v${N - 1}`);

    // The offline session, untouched since the loss, outlives its node.
    assert.ok(
      await sessionAfterRestart(cluster, b, "keeper", persistent),
      "keeper's session is gone",
    );
  },
});
