/**
 * kill -9 of the node of a persistent QoS 1 subscriber while a publisher on
 * another node sends continuously: the subscriber's connection breaks at
 * once and it reconnects to a survivor right away, before the cluster has
 * noticed the death. Every acknowledged message reaches it, in order.
 */
import assert from "node:assert/strict";
import { delay } from "../helpers/broker.ts";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import {
  checkOrder,
  NumberedPublisher,
  ranges,
  SessionSubscriber,
} from "../helpers/cluster_clients.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";

const ignore = skipWithoutRedis();

Deno.test({
  name: "cluster: a subscriber whose node is killed reconnects at once and loses nothing",
  sanitizeOps: false,
  sanitizeResources: false,
  // A claim of a session whose node died waits until a survivor handled the death: the
  // survivor fills the session with what was left in the dead node's inbox and hands it back.
  // Messages published while the death went unnoticed reach the session twice (the dead node's
  // inbox and the new node's routes): counted, allowed at QoS 1.
  ignore,
  async fn() {
    await using cluster = await TestCluster.start({
      names: ["a", "b", "c"],
      args: ["--limits.max_queued_messages=100000"],
    });
    const [a, b, c] = cluster.nodes;
    const sub = await SessionSubscriber.start("s", () => [a.port, b.port], 0, "k/#");
    const pub = new NumberedPublisher("p", "k/x", () => [c.port], 1);
    let stop = false;
    const publishing = pub.run(() => stop);
    await eventually("traffic flows", () => pub.acked.size > 200);
    await a.kill();
    await delay(4000);
    stop = true;
    await publishing;
    const last = Math.max(...pub.acked);
    await eventually("the last message arrived", () => sub.numbers("p").some((d) => d.n === last))
      .catch(() => {});
    await sub.quiet(300);
    await sub.stop();
    const r = checkOrder(sub.numbers("p"), pub.acked, pub.resent);
    console.log(
      `${pub.acked.size} acknowledged, ${r.received} received, ${r.duplicates} duplicates, ` +
        `lost ${ranges(r.lost)}, disorder ${r.disorder.slice(0, 3)}`,
    );
    assert.deepEqual(r.lost, [], "nothing acknowledged lost");
    assert.deepEqual(r.disorder, [], "in order");
    assert.equal(sub.sessionsLost, 0);
  },
});
