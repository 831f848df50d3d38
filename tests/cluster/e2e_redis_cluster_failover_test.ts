/**
 * A Redis Cluster master failover in the middle of QoS 1 traffic between two
 * broker processes (`[redis] mode = "cluster"`, `wait_replicas = 1`): the
 * master that holds the subscriber node's inbox is killed (-9), Redis Cluster
 * promotes a replica, the nodes follow the new slot map and traffic resumes.
 * A publish is acknowledged only once a replica has the forwarded copy, so
 * every acknowledged message reaches the subscriber; every publish is
 * answered (acknowledged or refused) within a bounded time; `/readyz` says
 * what is wrong while it is.
 *
 * With one replica per master the promoted one has no replica left: nothing
 * can be acknowledged with `wait_replicas = 1` until one is back (the killed
 * server, restarted, rejoins as its replica), and `/readyz` says so.
 */
import assert from "node:assert/strict";
import { skipWithoutRedis } from "../helpers/redis.ts";
import { ANSWER_BOUND_MS, clusterFailover, report } from "./redis_cluster_failover.ts";

const opts = { ignore: skipWithoutRedis(), sanitizeOps: false, sanitizeResources: false };

Deno.test({
  name:
    "redis cluster: a master killed under QoS 1 traffic is failed over, nothing acknowledged lost",
  ...opts,
  async fn() {
    const o = await clusterFailover({ replicas: 2, how: "kill" });
    report("kill -9, two replicas per master", o);
    assert.equal(o.acked, o.n);
    assert.deepEqual(o.lost, [], "nothing acknowledged is lost");
    assert.ok(o.slowestMs < ANSWER_BOUND_MS, `every publish answered in time (${o.slowestMs} ms)`);
  },
});

Deno.test({
  name: "redis cluster: with no replica left publishes are refused and /readyz says why, " +
    "until the old master is back as a replica",
  ...opts,
  async fn() {
    const o = await clusterFailover({ replicas: 1, how: "kill", restartAfterMs: 2000 });
    report("kill -9, one replica per master, restarted 2 s after the promotion", o);
    assert.equal(o.acked, o.n);
    assert.deepEqual(o.lost, [], "nothing acknowledged is lost");
    assert.ok(o.refused > 0, "publishes were refused while no replica could confirm them");
    assert.ok(
      o.problems.some((p) => /refused: only 0 of 1 Redis replicas/.test(p)),
      `/readyz named the missing replica: ${o.problems.join(" | ")}`,
    );
    assert.ok(o.slowestMs < ANSWER_BOUND_MS, `every publish answered in time (${o.slowestMs} ms)`);
  },
});
