/**
 * A session taken over by a new connection on another node while its old
 * connection still receives and acknowledges, several times while messages
 * flow (moving_sessions.ts): what the old connection completed in the
 * overlap is remembered with the session (`[cluster] dedupe_window`), so the
 * new connection does not get it again: no second copy without DUP at QoS 1,
 * exactly once at QoS 2. (With dedupe_window = 0 the QoS 1 case saw about
 * a hundred second copies without DUP.) The overlap can outlast the window:
 * the old connection completing more messages meanwhile than it holds
 * (1 run in 4 to 8 here, 14-115 second copies without DUP, before the new
 * node also went by the order of each publishing node's ids, handover.ts).
 */
import assert from "node:assert/strict";
import { ClusterKeys } from "../../src/cluster/redis_scripts.ts";
import { subscriber } from "../helpers/broker.ts";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import {
  checkOrder,
  NumberedPublisher,
  ranges,
  SessionSubscriber,
} from "../helpers/cluster_clients.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";
import { redisQuery } from "../helpers/redis_resp.ts";
import { secondCopies, takenOverWhileConnected } from "./moving_sessions.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

Deno.test({
  name: "cluster: QoS 1 to a session taken over while its old connection still acknowledges " +
    "comes again only as DUP resends",
  ...opts,
  fn: () => takenOverWhileConnected(1),
});

Deno.test({
  name: "cluster: QoS 2 to a session taken over while its old connection still acknowledges " +
    "arrives exactly once",
  ...opts,
  fn: () => takenOverWhileConnected(2),
});

/**
 * A takeover whose overlap is made long on purpose: a third node is frozen (SIGSTOP, well within
 * its lease), so the new node b's holder routes wait for the route fence (`route_fence_ms`)
 * before the old node a is asked to let go. Meanwhile publishers on b send 32 messages each,
 * which the old connection receives and acknowledges: four times what the dedupe window holds
 * (`dedupe_window = 8`). Returns the subscriber's second copies without DUP; asserts that nothing
 * acknowledged was lost and that the overlap was what it should be.
 */
async function takeoverOutlastingTheWindow(
  filters: string[],
  topics: string[],
): Promise<number[]> {
  await using cluster = await TestCluster.start({
    names: ["a", "b", "c"],
    args: ["--cluster.dedupe_window=8", "--cluster.route_fence_ms=1500"],
  });
  const [a, b, c] = cluster.nodes;
  // Another subscriber to everything on a: every message crosses the bus, with an id.
  await using _watcher = await subscriber(a.port, "#", 1, { clientId: "watcher" });
  const sub = await SessionSubscriber.start("slow-fence", () => [a.port, b.port], 0, filters, 1);
  const pubs = topics.map((t, i) => new NumberedPublisher(`p${i}`, t, () => [b.port], 1, 1));
  const routes = new ClusterKeys("mcloudtt").nodeRoutes(b.nodeId);
  const holderRouted = async () => {
    for (const f of filters) {
      if (await redisQuery(cluster.redis.port, "SISMEMBER", routes, f) !== 1) return false;
    }
    return true;
  };
  assert.equal(await holderRouted(), false, "b has no route for the session yet");
  c.signal("SIGSTOP");
  let moved = false;
  let moving: Promise<void>;
  try {
    moving = sub.takeOver(1).finally(() => moved = true);
    // b holds the session's messages (its routes are written) and waits for c to apply them.
    await eventually("the holder on b is routed", holderRouted, 5000);
    await Promise.all(pubs.map((p) => p.run(() => p.sent >= 32)));
    assert.equal(moved, false, "published within the overlap");
  } finally {
    c.signal("SIGCONT");
  }
  await moving;
  await sub.quiet(500);
  await sub.stop();
  const withoutDup: number[] = [];
  for (const p of pubs) {
    const r = checkOrder(sub.numbers(p.id), p.acked, p.resent);
    assert.deepEqual(r.lost, [], `nothing acknowledged by ${p.id} lost`);
    withoutDup.push(...secondCopies(sub.numbers(p.id), p.resent).withoutDup);
  }
  assert.equal(sub.sessionsLost, 0);
  return withoutDup;
}

Deno.test({
  name: "cluster: a takeover whose overlap outlasts the dedupe window sends nothing twice",
  ...opts,
  async fn() {
    const withoutDup = await takeoverOutlastingTheWindow(["sf/#"], ["sf/x"]);
    assert.equal(ranges(withoutDup), "", "no second copy without DUP");
  },
});

/**
 * The same with a shared subscription too: while b holds the session, b serves the group itself
 * (`shared_policy = "local"`), so the old connection gets none of the group's messages, only the
 * others, from the same publishing node (and the group's messages cross the bus, with ids, to
 * the watcher on a). Going by that node's order would drop the held group messages: a session
 * with a shared subscription goes by the ids alone (second copies without DUP remain possible
 * for it), and loses nothing.
 */
Deno.test({
  name: "cluster: a takeover of a session with a shared subscription loses none of its messages",
  ...opts,
  async fn() {
    const withoutDup = await takeoverOutlastingTheWindow(
      ["sf/#", "$share/g/sg/#"],
      ["sf/x", "sg/x"],
    );
    console.log(`second copies without DUP: ${withoutDup.length}`);
  },
});
