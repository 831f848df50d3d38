/**
 * The `--cluster` report (cluster.ts runs the scenarios). Apart from cluster.ts so the harness
 * test can check it without the Redis helpers cluster.ts needs.
 */

/** `[redis] durability`. */
export type Durability = "sync" | "async";

/** What one run on `nodes` nodes measured. */
export interface ClusterRun {
  readonly scenario: string;
  readonly nodes: number;
  /** Set when the scenario compares `[redis] durability` values. */
  readonly durability?: Durability;
  readonly round: number;
  readonly metrics: Record<string, number>;
  readonly failed?: string;
}

/** Markdown tables: per scenario (and durability), median delivered/s on one and two nodes. */
export function clusterReport(runs: readonly ClusterRun[]): string {
  const median = (xs: number[]) => {
    const s = [...xs].filter((x) => x !== undefined && !Number.isNaN(x)).sort((a, b) => a - b);
    return s.length === 0 ? NaN : s[Math.floor(s.length / 2)];
  };
  const f = (n: number, digits = 0) => Number.isFinite(n) ? n.toFixed(digits) : "–";
  const of = (name: string, durability?: Durability) =>
    runs.filter((r) => r.scenario === name && r.durability === durability && !r.failed);
  const metric = (ok: ClusterRun[], nodes: number, key: string) =>
    median(ok.filter((r) => r.nodes === nodes).map((r) => r.metrics[key]));
  const plain = [
    "| scenario | 1 node msg/s | 2 nodes msg/s | ratio 2/1 | Redis cmds per forwarded msg |",
    "| --- | ---: | ---: | ---: | ---: |",
  ];
  const durable = [
    "| scenario | redis.durability | 1 node msg/s | 2 nodes msg/s | ratio 2/1 | " +
    "2 nodes published msg/s | vs async, 1 node | vs async, 2 nodes | node 1 CPU µs/msg, 1 node | node 1 CPU µs/msg, 2 nodes | " +
    "Redis cmds per msg, 1 node | Redis cmds per forwarded msg | undelivered %, 2 nodes |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const name of [...new Set(runs.map((r) => r.scenario))]) {
    const durabilities = [
      ...new Set(runs.filter((r) => r.scenario === name).map((r) => r.durability)),
    ];
    for (const durability of durabilities) {
      const ok = of(name, durability);
      const rate = (n: number) => metric(ok, n, "delivered_per_s");
      const cmds = metric(ok, 2, "redis_cmds_per_forwarded_msg");
      if (durability === undefined) {
        plain.push(
          `| ${name} | ${f(rate(1))} | ${f(rate(2))} | ${f(rate(2) / rate(1), 2)} | ${
            f(cmds, 3)
          } |`,
        );
        continue;
      }
      const async = of(name, "async");
      const vsAsync = (n: number) => rate(n) / metric(async, n, "delivered_per_s");
      durable.push(
        `| ${name} | ${durability} | ${f(rate(1))} | ${f(rate(2))} | ${f(rate(2) / rate(1), 2)} | ${
          f(metric(ok, 2, "published_per_s"))
        } | ` +
          `${f(vsAsync(1), 2)} | ${f(vsAsync(2), 2)} | ` +
          `${f(metric(ok, 1, "broker_cpu_us_per_msg"), 2)} | ` +
          `${f(metric(ok, 2, "broker_cpu_us_per_msg"), 2)} | ` +
          `${f(metric(ok, 1, "redis_cmds_per_msg"), 3)} | ${f(cmds, 3)} | ` +
          `${f(metric(ok, 2, "undelivered_pct"), 2)} |`,
      );
    }
  }
  const tables = [];
  if (plain.length > 2) tables.push(plain.join("\n"));
  if (durable.length > 2) tables.push(durable.join("\n"));
  return tables.join("\n\n");
}
