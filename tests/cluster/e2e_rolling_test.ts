/**
 * A rolling restart of a three-node cluster, as Kubernetes does it: each node
 * in turn gets SIGTERM (it drains: MQTT 5 clients get DISCONNECT 0x8B) and a
 * replacement starts on its port, while a QoS 1 publisher sends continuously
 * and two persistent-session QoS 1 subscribers listen; every client that
 * loses its node connects to another one. Nothing acknowledged to the
 * publisher is lost, and each subscriber sees the publisher's messages in
 * order (redeliveries aside).
 */
import assert from "node:assert/strict";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import {
  checkOrder,
  NumberedPublisher,
  ranges,
  SessionSubscriber,
} from "../helpers/cluster_clients.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

Deno.test({
  name: "cluster: a rolling restart under QoS 1 traffic loses nothing acknowledged",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({
      names: ["a", "b", "c"],
      args: ["--limits.max_queued_messages=100000"],
    });
    const fixed = cluster.nodes.map((n) => n.port);
    const subs = [
      await SessionSubscriber.start("s0", () => fixed, 0, "roll/#"),
      await SessionSubscriber.start("s1", () => fixed, 1, "roll/#"),
    ];
    const pub = new NumberedPublisher("p", "roll/x", () => fixed, 10);
    let rolled = false;
    const started = Date.now();
    const publishing = pub.run(() => rolled, 120_000);
    const stopTimes: Record<string, number> = {};
    for (const name of ["a", "b", "c"]) {
      const before = pub.acked.size;
      await eventually("traffic flows", () => pub.acked.size >= before + 300, 30_000);
      const node = cluster.node(name);
      const t0 = Date.now();
      await node.stop(30_000);
      stopTimes[name] = Date.now() - t0;
      await cluster.add(name, node.port);
    }
    const after = pub.acked.size;
    await eventually(
      "traffic flows after the restarts",
      () => pub.acked.size >= after + 300,
      30_000,
    );
    rolled = true;
    await publishing;
    const acked = pub.acked;
    const last = Math.max(...acked);
    for (const s of subs) {
      await eventually(
        `${s.id} has every acknowledged message`,
        () => s.numbers("p").some((d) => d.n === last),
        30_000,
      ).catch(() => {});
    }
    await Promise.all(subs.map((s) => s.stop()));
    const results = subs.map((s) => checkOrder(s.numbers("p"), acked, pub.resent));
    console.log(
      `rolling restart in ${Date.now() - started} ms: ${acked.size} messages acknowledged, ` +
        `${pub.resent.size} resent by the publisher (${pub.reconnects} reconnects); stop took ` +
        `${JSON.stringify(stopTimes)} ms; subscribers: ${
          JSON.stringify(results.map((r, i) => ({
            id: subs[i].id,
            received: r.received,
            duplicates: r.duplicates,
            dupFlagged: r.dupFlagged,
            lost: ranges(r.lost),
            disorder: r.disorder.slice(0, 5),
            reconnects: subs[i].reconnects,
          })))
        }`,
    );
    for (const [i, r] of results.entries()) {
      assert.deepEqual(r.lost, [], `${subs[i].id} lost acknowledged messages`);
      assert.deepEqual(r.disorder, [], `${subs[i].id} saw them in order`);
    }
    for (const s of subs) {
      assert.ok(s.disconnects.every((c) => c === 0x8b), `${s.id} told 0x8B: ${s.disconnects}`);
      assert.equal(s.sessionsLost, 0, `${s.id} kept its session`);
    }
  },
});
