/**
 * Redis Cluster: one master restarts empty (no replica, no persistence) while two nodes carry
 * QoS 1 traffic from a publisher on a to a subscriber on b. Whatever a acknowledges once that
 * master serves again reaches b, whichever keys it held:
 *  - b's inbox: a wrote with XADD NOMKSTREAM to the missing stream, which writes nothing, and
 *    counted it written (up to 304 of 1,000 acknowledged messages lost);
 *  - the leases (`{nodes}`): until b renewed, a read b as departed, withdrew its routes and sent
 *    retained messages only to itself (296-308 lost; 125-137 of 700 retained messages missing in
 *    b's memory for good);
 *  - the route table (`{rt}`): a reloaded the table before b announced its routes again and
 *    dropped them (291-305 lost).
 * b is paused (SIGSTOP) 1.5 s once the master serves again, shorter than its lease (a GC or VM
 * pause), so that each window is open every time; without the pause the same losses happened in
 * some runs (the race with b's own resync). With the same pause and no restart nothing is lost.
 */
import assert from "node:assert/strict";
import { collect, connectClient, delay, subscriber } from "../helpers/broker.ts";
import { type ClusterNode, FAST_LEASES, publishNumbered, TestCluster } from "../helpers/cluster.ts";
import { type RedisServer, skipWithoutRedis } from "../helpers/redis.ts";
import { RedisClusterGroup } from "../helpers/redis_groups.ts";

const opts = { ignore: skipWithoutRedis(), sanitizeOps: false, sanitizeResources: false };
const SHARED_KEYS = ["mcloudtt:{rt}:marker", "mcloudtt:{nodes}", "mcloudtt:{ret}:index"];

/**
 * Nodes a and b on `masters` masters, and the master to restart: the one serving `key`, or with
 * `key` null b's inbox (then holding none of the shared keys nor a's inbox).
 */
async function setUp(cluster: TestCluster<RedisClusterGroup>, key: string | null) {
  const group = cluster.redis;
  const shared = new Set(await Promise.all(SHARED_KEYS.map((k) => group.masterOf(k))));
  const fixed = key === null ? null : await group.masterOf(key);
  const nodes: ClusterNode[] = [];
  for (let i = 0; nodes.length < 2; i++) {
    const n = await cluster.add(`n${i}`);
    const at = await group.masterOf(n.inbox);
    // Each inbox on a master other than the one restarted, except b's when that is the point:
    // then b's is on a master holding none of the shared keys, and a's on one that holds some
    // (a's on the one free master as well left no master for b: the loop never ended).
    const ok = fixed !== null ? at !== fixed : shared.has(at) === (nodes.length === 0);
    if (ok) nodes.push(n);
    else await n.kill();
  }
  // The nodes killed above are handled before the traffic starts.
  await delay(FAST_LEASES.ttlMs + 1500);
  const [a, b] = nodes;
  return { a, b, victim: fixed ?? await group.masterOf(b.inbox) };
}

/** Restarts `victim` empty after a second, then pauses b 1.5 s from when the master serves. */
async function restartEmpty(victim: RedisServer, b: ClusterNode): Promise<number> {
  await delay(1000);
  await victim.restart();
  while (!(await victim.command("CLUSTER", "INFO")).includes("cluster_state:ok")) await delay(10);
  const serving = performance.now();
  b.signal("SIGSTOP");
  await delay(1500);
  b.signal("SIGCONT");
  return serving;
}

async function run(masters: number, key: string | null, retained: boolean): Promise<void> {
  await using cluster = await TestCluster.start({
    names: [],
    redis: () => RedisClusterGroup.start({ masters }),
  });
  const { a, b, victim } = await setUp(cluster, key);
  await using sub = await subscriber(b.port, "x", 1, { clientId: "sub" });
  await using pub = await connectClient(a.port, { clientId: "pub" });
  await using rpub = await connectClient(a.port, { clientId: "rpub" });
  const fault = restartEmpty(victim, b);
  const retainedAcked: number[] = [];
  const retainer = (async () => {
    if (!retained) return;
    for (let i = 0; i < 700; i++) {
      await rpub.publishAsync(`r/${i}`, `${i}`, { qos: 1, retain: true }).then(
        () => retainedAcked.push(i),
        () => {},
      );
      await delay(10);
    }
  })();
  const ackedAt = new Map<number, number>();
  const res = await publishNumbered(pub, "x", 1200, {
    rate: 200,
    window: 4,
    onAck: (i) => ackedAt.set(i, performance.now()),
  });
  const [serving] = await Promise.all([fault, retainer]);
  await delay(2000);

  const got = new Set(sub.inbox.messages.map((m) => Number(m.payload)));
  const lost = res.acked.filter((i) => !got.has(i));
  const late = lost.filter((i) => ackedAt.get(i)! >= serving);
  let missing: number[] = [];
  if (retained) {
    const reader = await connectClient(b.port, { clientId: "late" });
    const seen = collect(reader);
    await reader.subscribeAsync("r/#", { qos: 1 });
    await delay(1500);
    await reader.endAsync();
    const have = new Set(seen.messages.map((m) => Number(m.payload)));
    missing = retainedAcked.filter((i) => !have.has(i));
  }
  console.log(
    `[figures] master of ${key ?? "b's inbox"} restarted empty: a->b acked ${res.acked.length}, ` +
      `refused ${res.refused}, acked and never delivered ${lost.length} (${late.length} acked ` +
      `after the master served again)` +
      (retained ? `; retained acked ${retainedAcked.length}, missing on b ${missing.length}` : ""),
  );
  // A message still in b's inbox when its master restarted is lost with Redis's data (Redis
  // without persistence; see Durability): only those acknowledged afterwards must all arrive.
  assert.deepEqual(
    key === null ? late : lost,
    [],
    "QoS 1 messages acknowledged to a's publisher never reached b",
  );
  assert.deepEqual(missing, [], "retained messages acknowledged on a are missing on b");
}

Deno.test({
  ...opts,
  name: "redis cluster, b's inbox master restarted empty: a writes again until b's inbox is " +
    "back, nothing acknowledged is lost",
  // Four masters: b's inbox can be on one that holds none of the shared keys.
  fn: () => run(4, null, false),
});

Deno.test({
  ...opts,
  name: "redis cluster, the leases' master restarted empty: b stays live for a, its routes and " +
    "the retained messages reach it",
  fn: () => run(3, "mcloudtt:{nodes}", true),
});

Deno.test({
  ...opts,
  name: "redis cluster, the route table's master restarted empty: a keeps b's routes until b " +
    "announced them again",
  fn: () => run(3, "mcloudtt:{rt}:marker", false),
});
