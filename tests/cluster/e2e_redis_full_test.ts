/**
 * Redis full: `maxmemory` with `noeviction` (how infra/ deploys it) refuses writes with OOM while
 * reads and deletions go on. Set below what Redis holds, under QoS 1 traffic from a publisher on
 * a to a subscriber on b, while b's clients subscribe and unsubscribe:
 *  - nothing acknowledged is lost;
 *  - a forward Redis refused is written again for up to `redis.command_timeout_ms` (5 s): for a
 *    shorter OOM no publisher is refused and a retained QoS 0 message published meanwhile reaches
 *    b (before: 118 of 1,500 refused with 0x80 and sent again, and b never got the retained
 *    message, whose publisher is not told); for a longer one the rest is refused (0x80) and sent
 *    again by the client;
 *  - a subscription made meanwhile reaches the other nodes once Redis has room: its route write
 *    was refused on a connection that stayed up, and was written again only by the reconcile
 *    timer, 5 minutes later (a's publishers never reached it until then);
 *  - an unsubscription made meanwhile is heard of by the other nodes: its script deletes the
 *    table entry before it appends the log entry, and Redis lets a script that has written go on
 *    writing under OOM (the other order would fail it whole, and the withdrawal would wait).
 */
import assert from "node:assert/strict";
import { collect, connectClient, delay, endClient, subscriber } from "../helpers/broker.ts";
import { eventually, publishNumbered, TestCluster } from "../helpers/cluster.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";
import { redisQuery, type RespValue } from "../helpers/redis_resp.ts";

const opts = { ignore: skipWithoutRedis(), sanitizeOps: false, sanitizeResources: false };

/** Whether the route log holds an entry withdrawing `node`'s route `key`. */
function withdrawn(log: RespValue, node: string, key: string): boolean {
  if (!Array.isArray(log)) return false;
  return log.some((e) => {
    const f = Array.isArray(e) && Array.isArray(e[1]) ? e[1] : [];
    const v = (name: string) => f[f.indexOf(name) + 1];
    return v("k") === key && v("n") === node && v("p") === "0";
  });
}

async function run(fullMs: number): Promise<void> {
  // Shorter than redis.command_timeout_ms (5 s): every refused forward is written again in time.
  const short = fullMs < 5000;
  await using cluster = await TestCluster.start({ names: ["a", "b"] });
  const redis = cluster.redis;
  const [a, b] = cluster.nodes;
  await using sub = await subscriber(b.port, "x", 1, { clientId: "sub" });
  await using pub = await connectClient(a.port, { clientId: "pub" });
  await using late = await connectClient(b.port, { clientId: "late" });
  const lateGot = collect(late);
  await late.subscribeAsync("w", { qos: 1 });
  const fault = (async () => {
    await delay(1000);
    const used = Number(/used_memory:(\d+)/.exec(await redis.command("INFO", "memory"))![1]);
    await redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction");
    await redis.command("CONFIG", "SET", "maxmemory", String(Math.floor(used / 2)));
    // While Redis refuses writes: one filter comes, one goes, and a retained QoS 0 message
    // (no acknowledgement: its publisher would never know its copy for b was lost).
    await late.subscribeAsync("y", { qos: 1 });
    await late.unsubscribeAsync("w");
    await pub.publishAsync("r/0", "kept", { qos: 0, retain: true });
    await delay(fullMs);
    await redis.command("CONFIG", "SET", "maxmemory", "0");
  })();
  const res = await publishNumbered(pub, "x", 1500, { rate: 200, window: 4, giveUpMs: 30_000 });
  await fault;
  await delay(1000);
  const got = new Set(sub.inbox.messages.map((m) => Number(m.payload)));
  const lost = res.acked.filter((i) => !got.has(i));
  console.log(
    `[figures] redis full ${fullMs} ms: acked ${res.acked.length}, refused and sent again ` +
      `${res.refused}, acked and never delivered ${lost.length}`,
  );
  assert.deepEqual(lost, [], "QoS 1 messages acknowledged to a's publisher never reached b");
  if (short) assert.equal(res.refused, 0, "publishes refused though Redis had room in time");
  else assert.ok(res.refused > 0, "nothing refused: was Redis full?");
  // Before: the route stayed unwritten until the reconcile timer (300 s).
  await eventually("a's publishes reach the subscription made while Redis was full", async () => {
    await pub.publishAsync("y", "after", { qos: 1 });
    await delay(200);
    return lateGot.messages.some((m) => m.topic === "y");
  }, 10_000);
  await eventually("the other nodes were told of the unsubscription", async () => {
    const log = await redisQuery(redis.port, "XRANGE", "mcloudtt:{rt}:log", "-", "+");
    return withdrawn(log, b.nodeId, "w");
  }, 10_000);
  assert.equal(
    await redisQuery(redis.port, "HGET", "mcloudtt:{rt}:table", `${b.nodeId}\nw`),
    null,
  );
  // Before: the refused copy was not written again, and b never had it.
  await using r = await subscriber(b.port, "r/#", 0, { clientId: "r" });
  await eventually("b has the retained message", () => r.inbox.messages.length > 0, 5000);
  assert.equal(r.inbox.messages[0].payload, "kept");
  await endClient(late, true);
}

Deno.test({
  ...opts,
  name: "redis full for 3 s (under redis.command_timeout_ms): no publish refused, nothing " +
    "acknowledged lost, a retained QoS 0 message, a subscription and an unsubscription made " +
    "meanwhile reach the other node",
  fn: () => run(3000),
});

Deno.test({
  ...opts,
  name: "redis full for 8 s: what Redis did not take within redis.command_timeout_ms is " +
    "refused and sent again, nothing acknowledged is lost, subscriptions reach the other node",
  fn: () => run(8000),
});
