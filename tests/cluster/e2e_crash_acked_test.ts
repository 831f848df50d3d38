/**
 * A message its subscriber acknowledged while the node's inbox entry of it
 * is not acknowledged (XACK) yet must not reach the subscriber again:
 *
 * - kill -9 of the node: the survivor that adopts the session finds the
 *   message again in the dead node's inbox;
 * - the node's inbox connection breaks: the node reads its pending entries
 *   again after the reconnect.
 *
 * QoS 2 exactly once, QoS 1 no second copy (nothing was in flight, so not
 * even a DUP resend). The window is normally a few milliseconds (the XACK
 * follows the store write of the delivery). It is held open from outside,
 * deterministically: Redis's ACL takes XACK and XDEL away from the brokers'
 * user while the messages flow, so the entries stay pending exactly as if
 * the XACK had not reached Redis yet. Everything else (store writes,
 * forwarding, reads) works as usual.
 */
import assert from "node:assert/strict";
import { skipWithoutRedis } from "../helpers/redis.ts";
import { redisQuery } from "../helpers/redis_resp.ts";
import { type ClusterNode, eventually, TestCluster } from "../helpers/cluster.ts";
import { NumberedPublisher, ranges, SessionSubscriber } from "../helpers/cluster_clients.ts";
import { secondCopies } from "./moving_sessions.ts";

const N = 20;

/**
 * Nodes a and b; a subscriber on a gets N messages published on b and
 * acknowledges them while a cannot XACK; then `fault` (with XACK still
 * refused), XACK allowed again, one more message. Each arrives once, and
 * a's inbox ends empty (acknowledged by a, or drained by b).
 */
async function ackedNotXacked(
  qos: 1 | 2,
  fault: (a: ClusterNode, redis: number) => Promise<void>,
): Promise<SessionSubscriber> {
  await using cluster = await TestCluster.start({ names: ["a", "b"] });
  const [a, b] = cluster.nodes;
  const redis = cluster.redis.port;
  const sub = await SessionSubscriber.start("s", () => [a.port, b.port], 0, "acked/#", qos);

  await redisQuery(redis, "ACL", "SETUSER", "default", "-xack", "-xdel");
  const pub = new NumberedPublisher("p", "acked/x", () => [b.port], 5, qos);
  await pub.run(() => pub.sent >= N);
  await eventually("the subscriber has every message", () => sub.distinct("p") >= N);
  // Acknowledged by the subscriber and written: nothing queued or in flight in the store.
  await eventually(
    "the store holds nothing in flight for the session",
    async () =>
      await redisQuery(redis, "LLEN", "mcloudtt:{s:s}:inflight") === 0 &&
      await redisQuery(redis, "LLEN", "mcloudtt:{s:s}:q") === 0,
  );
  // The window is open: the messages are still in a's inbox, unacknowledged.
  const left = Number(await redisQuery(redis, "XLEN", a.inbox));
  assert.ok(left > 0, `a's inbox still holds the entries (${left})`);
  await fault(a, redis);
  await redisQuery(redis, "ACL", "SETUSER", "default", "+xack", "+xdel");

  // One more message: it arrives after anything the fault made the session deliver again.
  await pub.run(() => pub.sent >= N + 1);
  await eventually("the last message arrived", () => sub.distinct("p") >= N + 1, 20_000);
  await sub.quiet(300);
  await sub.stop();
  const copies = secondCopies(sub.numbers("p"), pub.resent);
  console.log(
    `QoS ${qos}: ${N} acknowledged, ${left} inbox entries not acknowledged; second copies ` +
      `${copies.withDup} with DUP, ${copies.withoutDup.length} without ` +
      `(${ranges(copies.withoutDup)})`,
  );
  assert.equal(sub.sessionsLost, 0, "Session Present after the reconnect");
  assert.equal(ranges(copies.withoutDup), "", "no second copy of an acknowledged message");
  assert.equal(copies.withDup, 0, "nothing was in flight, so nothing is resent");
  assert.equal(sub.numbers("p").length, N + 1, "each message once");
  await eventually(
    "a's inbox is empty",
    async () => await redisQuery(redis, "XLEN", a.inbox) === 0,
    5000,
  );
  return sub;
}

/** kill -9 of a: the subscriber reconnects to b, which adopts the session and drains a's inbox. */
async function killed(qos: 1 | 2): Promise<void> {
  const sub = await ackedNotXacked(qos, (a) => a.kill());
  assert.ok(sub.reconnects >= 1, "the subscriber reconnected to b");
}

/** a's inbox connection is killed: a reads its pending entries again after the reconnect. */
async function blip(qos: 1 | 2): Promise<void> {
  const sub = await ackedNotXacked(qos, async (a, redis) => {
    const list = String(await redisQuery(redis, "CLIENT", "LIST"));
    const line = list.split("\n").find((l) => l.includes(`name=mcloudtt:inbox:${a.nodeId} `));
    assert.ok(line, "a's inbox connection");
    await redisQuery(redis, "CLIENT", "KILL", "ID", /id=(\d+)/.exec(line)![1]);
    // Read again (XREADGROUP of the pending entries counts a second delivery).
    await eventually("a read its pending entries again", async () => {
      const pending = await redisQuery(redis, "XPENDING", a.inbox, "node", "-", "+", "1");
      return Array.isArray(pending) && Array.isArray(pending[0]) && Number(pending[0][3]) >= 2;
    });
  });
  assert.equal(sub.reconnects, 0, "the subscriber stayed connected to a");
}

const opts = { ignore: skipWithoutRedis(), sanitizeOps: false, sanitizeResources: false };

Deno.test({
  name: "cluster: QoS 1 acknowledged just before its node is killed does not come again",
  ...opts,
  fn: () => killed(1),
});

Deno.test({
  name: "cluster: QoS 2 completed just before its node is killed arrives exactly once",
  ...opts,
  fn: () => killed(2),
});

Deno.test({
  name: "cluster: QoS 1 acknowledged before a lost inbox connection does not come again",
  ...opts,
  fn: () => blip(1),
});

Deno.test({
  name: "cluster: QoS 2 completed before a lost inbox connection arrives exactly once",
  ...opts,
  fn: () => blip(2),
});
