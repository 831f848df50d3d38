/**
 * A Redis Cluster master that goes silent without closing its connections
 * (SIGSTOP: a frozen process, a host gone from the network) under QoS 1
 * traffic between two broker processes. Nothing tells the nodes it is gone:
 * without `[redis] command_timeout_ms` the commands in flight to it (the
 * forwarded copies, the lease renewal, the subscriber node's blocking inbox
 * read) would wait forever, publishes would go unanswered and the subscriber
 * node would never read its inbox on the promoted replica. With it, the
 * silent connections are closed, the nodes follow the promoted replica, and
 * nothing acknowledged is lost.
 */
import assert from "node:assert/strict";
import { skipWithoutRedis } from "../helpers/redis.ts";
import { ANSWER_BOUND_MS, clusterFailover, report } from "./redis_cluster_failover.ts";

Deno.test({
  name: "redis cluster: a frozen master is failed over, the nodes notice it and lose nothing",
  ignore: skipWithoutRedis(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const o = await clusterFailover({ replicas: 2, how: "freeze" });
    report("SIGSTOP, two replicas per master", o);
    assert.equal(o.acked, o.n);
    assert.deepEqual(o.lost, [], "nothing acknowledged is lost");
    assert.ok(
      o.slowestMs < ANSWER_BOUND_MS,
      `every publish answered in time (${o.slowestMs} ms)`,
    );
  },
});
