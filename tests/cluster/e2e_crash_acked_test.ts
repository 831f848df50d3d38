/**
 * kill -9 of a node right after its subscriber acknowledged messages whose
 * inbox entries the node had not acknowledged (XACK) yet: the survivor that
 * adopts the session finds those messages again in the dead node's inbox,
 * and must not deliver them a second time (QoS 2 exactly once; QoS 1 no
 * copy without DUP).
 *
 * The window is normally a few milliseconds (the XACK follows the store
 * write of the delivery). It is held open from outside, deterministically:
 * Redis's ACL takes XACK and XDEL away from the brokers' user while the
 * messages flow, so the entries stay pending exactly as if the node had died
 * before its XACK reached Redis. Everything else (store writes, forwarding,
 * reads) works as usual. The ACL is restored once the node is dead.
 */
import assert from "node:assert/strict";
import { redisQuery, skipWithoutRedis } from "../helpers/redis.ts";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import { NumberedPublisher, ranges, SessionSubscriber } from "../helpers/cluster_clients.ts";
import { secondCopies } from "./moving_sessions.ts";

const N = 20;

async function ackedBeforeKill(qos: 1 | 2): Promise<void> {
  await using cluster = await TestCluster.start({ names: ["a", "b"] });
  const [a, b] = cluster.nodes;
  const redis = cluster.redis.port;
  const sub = await SessionSubscriber.start("s", () => [a.port, b.port], 0, "acked/#", qos);
  const inflight = "mcloudtt:{s:s}:inflight";
  const queued = "mcloudtt:{s:s}:q";
  const inbox = `mcloudtt:{n:${a.nodeId}}:inbox`;

  await redisQuery(redis, "ACL", "SETUSER", "default", "-xack", "-xdel");
  const pub = new NumberedPublisher("p", "acked/x", () => [b.port], 5, qos);
  await pub.run(() => pub.sent >= N);
  await eventually("the subscriber has every message", () => sub.distinct("p") >= N);
  // Acknowledged by the subscriber and written: nothing queued or in flight in the store.
  await eventually(
    "the store holds nothing in flight for the session",
    async () =>
      await redisQuery(redis, "LLEN", inflight) === 0 &&
      await redisQuery(redis, "LLEN", queued) === 0,
  );
  // The window is open: the messages are still in a's inbox, unacknowledged.
  const left = Number(await redisQuery(redis, "XLEN", inbox));
  assert.ok(left > 0, `a's inbox still holds the entries (${left})`);
  await a.kill();
  await redisQuery(redis, "ACL", "SETUSER", "default", "+xack", "+xdel");

  // The subscriber reconnects to b (its connection broke); b adopts the session and drains a's
  // inbox. A message published after that arrives after anything the drain delivered.
  await eventually("the subscriber reconnected", () => sub.reconnects >= 1, 20_000);
  await pub.run(() => pub.sent >= N + 1);
  await eventually("the last message arrived", () => sub.distinct("p") >= N + 1, 20_000);
  await sub.quiet(300);
  await sub.stop();
  const copies = secondCopies(sub.numbers("p"), pub.resent);
  console.log(
    `QoS ${qos}: ${N} acknowledged before the kill, ${left} inbox entries left; second copies ` +
      `${copies.withDup} with DUP, ${copies.withoutDup.length} without ` +
      `(${ranges(copies.withoutDup)})`,
  );
  assert.equal(sub.sessionsLost, 0, "Session Present on b");
  assert.equal(ranges(copies.withoutDup), "", "no second copy of an acknowledged message");
  assert.equal(copies.withDup, 0, "nothing was in flight, so nothing is resent");
  assert.equal(sub.numbers("p").length, N + 1, "each message once");
}

const opts = { ignore: skipWithoutRedis(), sanitizeOps: false, sanitizeResources: false };

Deno.test({
  name: "cluster: QoS 1 acknowledged just before its node is killed does not come again",
  ...opts,
  fn: () => ackedBeforeKill(1),
});

Deno.test({
  name: "cluster: QoS 2 completed just before its node is killed arrives exactly once",
  ...opts,
  fn: () => ackedBeforeKill(2),
});
