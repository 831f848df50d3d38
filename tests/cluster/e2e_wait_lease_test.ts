/**
 * `[redis] wait_replicas` with a `wait_timeout_ms` longer than a lease: a WAIT that blocks the
 * forwarding connection while every replica is down must not cost the node its membership.
 * The lease is renewed over a connection of its own, so the rule that once kept
 * `wait_timeout_ms` below `lease_ttl_ms - lease_renew_ms` is gone. Real servers: a Redis primary
 * with one replica (frozen with SIGSTOP), two broker processes.
 */
import assert from "node:assert/strict";
import { ClusterKeys } from "../../src/cluster/redis_scripts.ts";
import { connectClient, subscriber } from "../helpers/broker.ts";
import { eventually, FAST_LEASES, TestCluster } from "../helpers/cluster.ts";
import { RedisServer, skipWithoutRedis } from "../helpers/redis.ts";
import { redisCommand } from "../helpers/redis_resp.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

const NODES = new ClusterKeys("mcloudtt").nodes;
const DEAD_HANDLED = /stopped renewing its lease: taking over its cleanup/;
const EXPELLED = /was declared dead by the cluster/;
/** Longer than FAST_LEASES' ttl - renew (2,200 ms): the old rule refused this configuration. */
const WAIT_MS = 4000;

async function redisNow(port: number): Promise<number> {
  const [sec, usec] = (await redisCommand(port, "TIME")).split("\n").map(Number);
  return sec * 1000 + Math.floor(usec / 1000);
}

Deno.test({
  name: "cluster: a WAIT for a frozen replica longer than a lease refuses the publish " +
    "and the node stays a member",
  ...opts,
  async fn() {
    assert.ok(WAIT_MS > FAST_LEASES.ttlMs - FAST_LEASES.renewMs);
    await using cluster = await TestCluster.start({
      names: ["a", "b"],
      args: [
        "--redis.wait_replicas=1",
        `--redis.wait_timeout_ms=${WAIT_MS}`,
        "--redis.command_timeout_ms=15000",
        // The replica is gone when the nodes stop (disposed first): their goodbye waits for
        // shutdown_timeout (10 s by default) for a WAIT no replica answers.
        "--general.shutdown_timeout=2",
      ],
    });
    const redisPort = cluster.redis.port;
    await using replica = await RedisServer.start({ replicaOf: redisPort });
    const [a, b] = cluster.nodes;
    await using sub = await subscriber(b.port, "w/#", 1, { clientId: "w-sub" });
    await using pub = await connectClient(a.port, { clientId: "w-pub" });
    // The replica's first sync may take a moment: a publish is confirmed once it is done.
    await eventually("a publish is confirmed by the replica", async () => {
      try {
        await pub.publishAsync("w/first", "1", { qos: 1 });
        return true;
      } catch {
        return false;
      }
    }, 20_000);

    replica.signal("SIGSTOP");
    try {
      const t0 = await redisNow(redisPort);
      const started = performance.now();
      // The WAIT of this publish's forwarded copy blocks a's forwarding connection for WAIT_MS.
      await assert.rejects(pub.publishAsync("w/refused", "2", { qos: 1 }), /0x80|128|Unspecified/i);
      const waited = performance.now() - started;
      assert.ok(waited >= WAIT_MS - 200, `refused after the wait (${Math.round(waited)} ms)`);
      // Meanwhile a's lease was renewed past the point a lease taken when the wait began would
      // have ended; b never handled a as dead.
      const deadline = Number(await redisCommand(redisPort, "ZSCORE", NODES, a.nodeId));
      assert.ok(
        deadline > t0 + FAST_LEASES.ttlMs + FAST_LEASES.renewMs,
        `a's lease was renewed during the wait (deadline ${deadline - t0} ms after it began)`,
      );
      assert.doesNotMatch(b.output(), DEAD_HANDLED);
      assert.doesNotMatch(a.output(), EXPELLED);
      assert.ok(pub.connected, "a kept its client");
    } finally {
      replica.signal("SIGCONT");
    }
    await eventually("publishes are confirmed again", async () => {
      try {
        await pub.publishAsync("w/again", "3", { qos: 1 });
        return true;
      } catch {
        return false;
      }
    }, 20_000);
    await eventually(
      "b's subscriber got the message",
      () => sub.inbox.messages.some((m) => m.topic === "w/again"),
      10_000,
    );
  },
});
