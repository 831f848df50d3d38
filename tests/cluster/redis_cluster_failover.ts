/**
 * The Redis Cluster master failover scenario of the failover tests: two broker
 * processes on a 3-master Redis Cluster (1 s cluster-node-timeout), QoS 1
 * traffic from a publisher on node a to a subscriber on node b with `[redis]
 * wait_replicas = 1`, and the master holding b's inbox killed (-9) or frozen
 * (SIGSTOP, as a host that vanished without closing its connections) in the
 * middle of it. Reports what a user sees: how long publishes went
 * unacknowledged, how many were refused, the longest wait for one PUBACK,
 * what `/readyz` said meanwhile, and which acknowledged messages never came.
 */
import assert from "node:assert/strict";
import { connectClient, delay, subscriber } from "../helpers/broker.ts";
import { type ClusterNode, eventually, publishNumbered, TestCluster } from "../helpers/cluster.ts";
import type { RedisServer } from "../helpers/redis.ts";
import { RedisClusterGroup } from "../helpers/redis_groups.ts";

/** `[redis] command_timeout_ms` in these tests (the default is 5000). */
export const COMMAND_TIMEOUT_MS = 2000;

/**
 * The longest a PUBACK may take: the forwarded copy's write and then its WAIT
 * may each wait a command timeout on a silent master, plus the WAIT's own
 * timeout and slack for a busy machine.
 */
export const ANSWER_BOUND_MS = 2 * COMMAND_TIMEOUT_MS + 500 + 3000;

export interface FailoverOptions {
  /** Replicas per master: with 1, the promoted master has none left. */
  replicas: number;
  /** kill -9, or SIGSTOP (the server stays frozen until the test ends). */
  how: "kill" | "freeze";
  /**
   * Once the replica is promoted and publishes were refused for this long,
   * the killed server is started again on its directory: it rejoins as the
   * new master's replica, as a restarted pod would.
   */
  restartAfterMs?: number;
}

export interface FailoverOutcome {
  /** Publishes, all acknowledged in the end. */
  n: number;
  acked: number;
  refused: number;
  /** Acknowledged numbers the subscriber never received. */
  lost: number[];
  /** Kill to the promoted replica reporting itself master, ms. */
  promotedMs: number;
  /** The longest time without an acknowledgement around the kill, ms. */
  outageMs: number;
  /** Kill to the acknowledgement that ended that time, ms. */
  resumedMs: number;
  /** The longest wait for one PUBACK (success or refusal), ms. */
  slowestMs: number;
  /** Problems node a's `/readyz` reported after the kill (distinct). */
  problems: string[];
}

/** Polls `node`'s readiness until `stop()`, collecting the problems it names. */
async function watchReadiness(node: ClusterNode, seen: Set<string>, stop: () => boolean) {
  while (!stop()) {
    try {
      for (const p of (await node.readiness()).problems) seen.add(p);
    } catch {
      // the HTTP endpoint is busy: next round
    }
    await delay(100);
  }
}

export async function clusterFailover(opts: FailoverOptions): Promise<FailoverOutcome> {
  await using cluster = await TestCluster.start({
    names: ["a", "b"],
    redis: () =>
      RedisClusterGroup.start({ masters: 3, replicas: opts.replicas, nodeTimeoutMs: 1000 }),
    args: [
      "--redis.wait_replicas=1",
      "--redis.wait_timeout_ms=500",
      `--redis.command_timeout_ms=${COMMAND_TIMEOUT_MS}`,
    ],
  });
  const [a, b] = cluster.nodes;
  await using sub = await subscriber(b.port, "fo/#", 1, { clientId: "fo-sub" });
  await using pub = await connectClient(a.port, { clientId: "fo-pub", reconnectPeriod: 0 });

  const N = 400;
  let acked = 0;
  const publishing = publishNumbered(pub, "fo/x", N, {
    window: 4,
    rate: 200,
    retryMs: 100,
    giveUpMs: 30_000,
    onAck: () => acked++,
  });
  publishing.catch(() => {});
  await eventually("traffic flows", () => acked >= 100, 20_000);
  // The master of b's inbox: every message for b is written there first.
  const master = await cluster.redis.masterOf(b.inbox);
  const replicas = await cluster.redis.replicasOf(master);
  assert.equal(replicas.length, opts.replicas, "the master has its replicas");

  // What the nodes logged is what explains a failure.
  const dump = () => {
    for (const n of [a, b]) console.log(`--- node ${n.name} ---\n${n.output()}`);
  };
  const problems = new Set<string>();
  let watching = true;
  const watcher = watchReadiness(a, problems, () => !watching);
  const killedAt = performance.now();
  if (opts.how === "kill") await master.kill();
  else master.signal("SIGSTOP");
  try {
    await eventually("a replica is promoted", async () => {
      const roles = await Promise.all(replicas.map((r: RedisServer) => r.command("ROLE")));
      return roles.some((r) => /\bmaster\b/.test(r));
    }, 30_000);
    const promotedMs = performance.now() - killedAt;
    if (opts.restartAfterMs !== undefined) {
      await delay(opts.restartAfterMs);
      await master.restart();
    }
    const result = await publishing;
    await eventually(
      "both nodes are ready again",
      async () => (await a.readiness()).status === 200 && (await b.readiness()).status === 200,
      30_000,
    );
    watching = false;
    await watcher;
    const seen = () => new Set(sub.inbox.messages.map((m) => Number(m.payload)));
    await eventually(
      "every acknowledged message arrived",
      () => result.acked.every((i) => seen().has(i)),
      15_000,
    ).catch(() => {});
    // Publishes in flight at the kill may be acknowledged right after it: the outage is the
    // longest gap between two acknowledgements from the last one before the kill on.
    const lost = result.acked.filter((i) => !seen().has(i));
    if (lost.length > 0) dump();
    const times = [...result.ackedAt.values()].sort((x, y) => x - y);
    let from = times.findLastIndex((t) => t <= killedAt);
    if (from < 0) from = 0;
    let outageMs = 0;
    let resumedMs = 0;
    for (let i = from + 1; i < times.length; i++) {
      if (times[i] - times[i - 1] > outageMs) {
        outageMs = times[i] - times[i - 1];
        resumedMs = times[i] - killedAt;
      }
    }
    // Both nodes lost Redis alike: neither may take the other for dead.
    for (const n of [a, b]) {
      if (/is dead|declared dead/.test(n.output())) {
        dump();
        assert.fail(`node ${n.name} saw a node die`);
      }
    }
    return {
      n: N,
      acked: result.acked.length,
      refused: result.refused,
      lost,
      promotedMs,
      outageMs,
      resumedMs,
      slowestMs: result.slowestMs,
      problems: [...problems],
    };
  } catch (e) {
    dump();
    throw e;
  } finally {
    watching = false;
    // Killed rather than woken: a frozen master that wakes up is a stale master for a moment.
    if (opts.how === "freeze") await master.kill();
  }
}

export function report(label: string, o: FailoverOutcome): void {
  console.log(
    `${label}: replica promoted ${Math.round(o.promotedMs)} ms after the kill; no publish ` +
      `acknowledged for ${Math.round(o.outageMs)} ms, until ${Math.round(o.resumedMs)} ms after ` +
      `the kill; longest wait for a PUBACK ` +
      `${Math.round(o.slowestMs)} ms; ${o.acked}/${o.n} acknowledged, ${o.refused} refused and ` +
      `sent again, ${o.lost.length} lost; /readyz of the publisher's node said: ` +
      (o.problems.length === 0 ? "ready" : o.problems.join(" | ")),
  );
}
