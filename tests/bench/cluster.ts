/**
 * `deno task bench --cluster`: mcloudtt on two nodes vs one node on the same
 * machine (both with the same in-memory Redis), reported as a ratio, plus the
 * Redis commands each forwarded message costs.
 *
 * - cross-pairs: 16 QoS 1 pairs, every publisher on node 1 and every
 *   subscriber on node 2 (one node: all on it); each message is forwarded.
 * - fan-out: 1 publisher on node 1, 16 subscribers split over both nodes (one
 *   node: all on it); each message is forwarded once, to node 2.
 *
 * - persistent-qos1: the cross pairs with persistent-session subscribers (their
 *   sessions, queues and inflight live in Redis), a fixed count end to end, once
 *   with `[redis] durability = "sync"` (PUBACK after Redis took the writes) and
 *   once with "async".
 *
 * With two nodes on two cores the generator, both nodes and Redis share the
 * machine: the ratio shows what forwarding costs, not how a cluster scales.
 */

import { BENCH_LIMITS, startMcloudttCluster } from "./brokers.ts";
import type { ClusterRun, Durability } from "./cluster_report.ts";
import { measureFixedCount, PERSISTENT_PAIRS, persistentPairs } from "./durability.ts";
import { fanOut, type Layout, onNodes, pairs } from "./layouts.ts";
import { type Measured, measureLoad, type RunContext } from "./measure.ts";
import type { BenchOptions } from "./options.ts";
import { commandStats } from "../helpers/redis_resp.ts";

export { clusterReport } from "./cluster_report.ts";

/** One cluster scenario: the same load on one node and spread over two. */
interface ClusterScenario {
  readonly name: string;
  readonly description: string;
  readonly oneNode: Layout;
  readonly twoNodes: Layout;
  /** How a run is measured (default: flat out for a window, `measureLoad`). */
  readonly measure?: (ctx: RunContext, layout: Layout) => Promise<Measured>;
  /** Run once per `[redis] durability` value given (absent: the default only). */
  readonly durabilities?: readonly Durability[];
}

export function clusterScenarios(options: BenchOptions): ClusterScenario[] {
  const w = options.workersPerSide;
  // Below max_queued_messages per session, so nothing is dropped for the queue limit.
  const perPublisher = options.quick ? 300 : 2_000;
  const persistent = {
    ...persistentPairs(PERSISTENT_PAIRS, w),
    messagesPerPublisher: perPublisher,
  };
  return [
    {
      name: "cluster-cross-pairs-16-qos1",
      description: "16 QoS 1 pairs: publishers on node 1, subscribers on node 2",
      oneNode: pairs(16, 1, w),
      twoNodes: onNodes(pairs(16, 1, w), 0, [1]),
    },
    {
      name: "cluster-fan-out-16",
      description: "1 publisher on node 1 -> 16 subscribers split over nodes 1 and 2, QoS 0",
      oneNode: fanOut(16, w),
      twoNodes: onNodes(fanOut(16, w), 0, [0, 1]),
    },
    {
      name: "cluster-persistent-qos1",
      description: `${PERSISTENT_PAIRS} QoS 1 pairs, subscribers with persistent sessions ` +
        `(kept in Redis), ${perPublisher} messages per publisher end to end: publishers on ` +
        "node 1, subscribers on node 2; redis.durability sync, async",
      // Node 1 acknowledges once Redis has the forwarded copies (sync) or at once (async),
      // before node 2 delivered, so a fixed count end to end (not a window flat out, which
      // would grow node 2's queues past their limit); delivery may pause up to ~2 s on a loaded
      // machine, hence the 5 s allowed before a stalled delivery counts as lost.
      oneNode: { ...persistent, drainIdleMs: 5_000 },
      twoNodes: { ...onNodes(persistent, 0, [1]), drainIdleMs: 5_000 },
      measure: measureFixedCount,
      durabilities: ["sync", "async"],
    },
  ];
}

function total(stats: Map<string, number>): number {
  let n = 0;
  for (const v of stats.values()) n += v;
  return n;
}

async function runOnce(
  scenario: ClusterScenario,
  nodes: 1 | 2,
  round: number,
  options: BenchOptions,
  durability?: Durability,
): Promise<ClusterRun> {
  const base = { scenario: scenario.name, nodes, round, durability };
  const workDir = await Deno.makeTempDir({ prefix: "bench-cluster-" });
  try {
    const flags = durability ? [`--redis.durability=${durability}`] : [];
    const cluster = await startMcloudttCluster(nodes, BENCH_LIMITS, workDir, flags);
    try {
      await commandStats(cluster.redisPort); // the first INFO is not in the delta
      const before = await commandStats(cluster.redisPort);
      const measured = await (scenario.measure ?? measureLoad)(
        { broker: cluster, level: 5, options },
        nodes === 1 ? scenario.oneNode : scenario.twoNodes,
      );
      const after = await commandStats(cluster.redisPort);
      const commands = total(after) - total(before) - 1; // minus the INFO itself
      const xadds = (after.get("xadd") ?? 0) - (before.get("xadd") ?? 0);
      const sent = measured.metrics.sent;
      const metrics: Record<string, number> = {
        ...measured.metrics,
        redis_commands: commands,
        redis_cmds_per_msg: sent > 0 ? commands / sent : NaN,
      };
      if (nodes === 2 && sent > 0) {
        // Every message published on node 1 has a subscriber on node 2: one forward each.
        metrics.redis_cmds_per_forwarded_msg = commands / sent;
        metrics.msgs_per_xadd = xadds > 0 ? sent / xadds : NaN;
      }
      return { ...base, metrics };
    } catch (e) {
      return { ...base, metrics: {}, failed: `${e}\n${await cluster.logTail()}` };
    } finally {
      await cluster.stop();
    }
  } catch (e) {
    return { ...base, metrics: {}, failed: String(e) };
  } finally {
    await Deno.remove(workDir, { recursive: true }).catch(() => {});
  }
}

/** Runs every cluster scenario (filtered by --only) on one node and on two, interleaved. */
export async function runClusterBench(options: BenchOptions): Promise<ClusterRun[]> {
  const scenarios = clusterScenarios(options).filter((s) =>
    options.only.length === 0 || options.only.some((o) => s.name.includes(o))
  );
  const runs: ClusterRun[] = [];
  for (const s of scenarios) {
    for (let round = 1; round <= options.rounds; round++) {
      for (const durability of s.durabilities ?? [undefined]) {
        for (const nodes of [1, 2] as const) {
          const r = await runOnce(s, nodes, round, options, durability);
          runs.push(r);
          const m = r.metrics;
          const extra = nodes === 2
            ? `, ${m.redis_cmds_per_forwarded_msg?.toFixed(3)} Redis commands per forwarded ` +
              `message (${m.msgs_per_xadd?.toFixed(1)} messages per XADD)`
            : "";
          const head = `[${s.name} round ${round}] ${nodes} node(s)${
            durability ? `, durability ${durability}` : ""
          }:`;
          console.log(
            r.failed
              ? `${head} FAILED ${r.failed.split("\n")[0]}`
              : `${head} ${m.delivered_per_s.toFixed(0)} msg/s delivered, undelivered ${
                m.undelivered_pct.toFixed(2)
              } %${extra}`,
          );
        }
      }
    }
  }
  return runs;
}
