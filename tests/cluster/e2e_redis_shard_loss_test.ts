/**
 * Redis Cluster: one master restarts without its data while the others keep theirs. The cluster
 * state marker lives on another master, so before each master held a witness of it nobody noticed:
 * the retained messages and the sessions stored on that master were gone for good (a node started
 * later had none of the retained messages; an offline session was lost once its node stopped).
 */
import assert from "node:assert/strict";
import { connectClient, endClient } from "../helpers/broker.ts";
import { retainedOnNewNode, sessionAfterRestart } from "./redis_loss_checks.ts";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";
import { RedisClusterGroup } from "../helpers/redis_groups.ts";

const ignore = skipWithoutRedis();
const N = 100;
const INDEX = "mcloudtt:{ret}:index";
const meta = (id: string) => `mcloudtt:{s:${id}}:meta`;

Deno.test({
  name: "redis cluster: a master restarted empty gets the retained messages and the sessions " +
    "it held written again, though the state marker's master kept it",
  ignore,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using cluster = await TestCluster.start({
      names: ["a", "b"],
      redis: () => RedisClusterGroup.start({ masters: 3 }),
    });
    const group = cluster.redis;
    const [a, b] = cluster.nodes;
    const lost = await group.masterOf(INDEX);
    assert.notEqual(lost, await group.masterOf("mcloudtt:{rt}:marker"), "slots as expected");
    // An offline session stored on the master that will lose its data.
    let keeper = "";
    for (let i = 0; keeper === ""; i++) {
      if ((await group.masterOf(meta(`keeper-${i}`))) === lost) keeper = `keeper-${i}`;
    }
    const persistent = { clean: false, properties: { sessionExpiryInterval: 3600 } };
    const sub = await connectClient(b.port, { clientId: keeper, ...persistent });
    await sub.subscribeAsync("k/#", { qos: 1 });
    await endClient(sub);
    const pub = await connectClient(a.port, { clientId: "pub" });
    for (let i = 0; i < N; i++) {
      await pub.publishAsync(`r/${i}`, `v${i}`, { qos: 1, retain: true });
    }
    await endClient(pub);
    const stored = async () =>
      Number(await lost.command("SCARD", INDEX)) === N &&
      (await lost.command("HGET", meta(keeper), "ea")) > "0";
    await eventually("the retained messages and the session stored", stored);

    await lost.restart();
    const back = Date.now();
    assert.equal(await lost.command("DBSIZE"), "0", "the master came back empty");
    await eventually(
      "both nodes noticed",
      () =>
        [a, b].every((n) => /lost the cluster state/.test(n.output())) &&
        [a, b].some((n) => /redis master .* lost the cluster state/.test(n.output())),
      20_000,
    ).catch((e) => {
      console.log(`a's log:\n${a.output().slice(-2500)}\nb's log:\n${b.output().slice(-2500)}`);
      throw e;
    });
    // Nothing published or connected since: what comes back is what the nodes wrote themselves.
    await eventually("the retained messages and the session written again", stored, 20_000);
    const restoredMs = Date.now() - back;
    const rewrote = /wrote (\d+) sessions and (\d+) retained messages held here again/;
    await eventually("both nodes rewrote", () => [a, b].every((n) => rewrote.test(n.output())));
    const [ra, rb] = [a, b].map((n) => rewrote.exec(n.output())!.slice(1).map(Number));
    const times = [a, b].map((n) => (n.output().match(/held here again/g) ?? []).length);
    console.log(
      `[figures] master :${lost.port} restarted empty; a wrote ${ra[0]} sessions and ${ra[1]} ` +
        `retained messages, b ${rb[0]} and ${rb[1]}; rewrites a ${times[0]}, b ${times[1]}; ` +
        `back in redis ${restoredMs} ms after the master answered`,
    );
    assert.deepEqual([ra, rb], [[0, N], [1, N]]);

    // A node started now has the retained messages.
    assert.equal((await retainedOnNewNode(cluster, "c", N)).byTopic.size, N);

    // The offline session outlives its node.
    assert.ok(
      await sessionAfterRestart(cluster, b, keeper, persistent),
      `${keeper}'s session is gone`,
    );
  },
});
