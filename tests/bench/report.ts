/** Medians across rounds, ratios between brokers, and the Markdown / JSON report. */

import type { BenchLimits, BrokerName } from "./brokers.ts";
import type { DurabilityReport } from "./durability.ts";
import { durabilitySection } from "./durability_report.ts";
import type { MachineInfo } from "./machine.ts";
import type { BenchOptions } from "./options.ts";
import { levelName, type RunResult } from "./runner.ts";
import type { ScenarioKind } from "./scenarios.ts";
import { median } from "./stats.ts";
import type { ProtocolLevel } from "./wire.ts";

/** Medians of one scenario on one broker at one protocol level. */
export interface SummaryRow {
  readonly scenario: string;
  readonly kind: ScenarioKind;
  readonly broker: BrokerName;
  readonly level: ProtocolLevel;
  readonly runs: number;
  readonly failures: readonly string[];
  readonly metrics: Record<string, number>;
  /** Headline metric divided by Mosquitto's at the same level (and Aedes' at 3.1.1). */
  readonly vsMosquitto?: number;
  readonly vsAedes?: number;
  readonly errors: readonly string[];
}

/** The metric each kind is compared on; latency is lower-is-better, the rest higher. */
export const HEADLINE: Readonly<Record<ScenarioKind, string>> = {
  throughput: "delivered_per_s",
  latency: "p99_us",
  connections: "connack_per_s",
  "slow-consumer": "with_slow_per_s",
};

/** Groups runs by scenario, broker and level and takes the median of every metric. */
export function summarize(results: readonly RunResult[]): SummaryRow[] {
  const groups = new Map<string, RunResult[]>();
  for (const r of results) {
    const key = `${r.scenario}|${r.broker}|${r.level}`;
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  const rows: SummaryRow[] = [];
  for (const runs of groups.values()) {
    const ok = runs.filter((r) => !r.failed);
    const names = new Set(ok.flatMap((r) => Object.keys(r.metrics)));
    const metrics: Record<string, number> = {};
    for (const name of names) metrics[name] = median(ok.map((r) => r.metrics[name] ?? NaN));
    const first = runs[0];
    rows.push({
      scenario: first.scenario,
      kind: first.kind,
      broker: first.broker,
      level: first.level,
      runs: ok.length,
      failures: runs.flatMap((r) => r.failed ? [`round ${r.round}: ${r.failed}`] : []),
      metrics,
      errors: [...new Set(runs.flatMap((r) => r.errors))].slice(0, 5),
    });
  }
  return rows.map((row) => {
    const headline = HEADLINE[row.kind];
    const ratio = (broker: BrokerName, level: ProtocolLevel) => {
      const ref = rows.find((r) =>
        r.scenario === row.scenario && r.broker === broker && r.level === level
      );
      const value = ref?.metrics[headline];
      return value !== undefined && value > 0 ? row.metrics[headline] / value : undefined;
    };
    // Aedes only speaks 3.1.1, so only 3.1.1 rows are compared with it.
    const vsAedes = row.level === 4 ? ratio("aedes", 4) : undefined;
    return { ...row, vsMosquitto: ratio("mosquitto", row.level), vsAedes };
  });
}

const int = (n: number | undefined) =>
  n === undefined || !Number.isFinite(n) ? "–" : Math.round(n).toLocaleString("en-US");
const fixed = (n: number | undefined, digits = 1) =>
  n === undefined || !Number.isFinite(n) ? "–" : n.toFixed(digits);
const times = (n: number | undefined) =>
  n === undefined || !Number.isFinite(n) ? "–" : `${n.toFixed(2)}×`;

function table(headers: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [line(headers), line(headers.map(() => "---")), ...rows.map(line)].join("\n");
}

function label(row: SummaryRow): string[] {
  const failed = row.failures.length > 0 ? ` (${row.failures.length} failed)` : "";
  return [row.scenario, levelName(row.level), `${row.broker}${failed}`];
}

const ratios = (row: SummaryRow) => [times(row.vsMosquitto), times(row.vsAedes)];

function throughputTable(rows: SummaryRow[]): string {
  return table(
    [
      "scenario",
      "MQTT",
      "broker",
      "delivered msg/s",
      "vs mosquitto",
      "vs aedes",
      "published msg/s",
      "broker CPU %",
      "broker CPU µs/msg",
      "broker RSS MiB",
      "generator CPU % (busiest worker)",
      "undelivered %",
      "dups",
    ],
    rows.map((r) => {
      const m = r.metrics;
      return [
        ...label(r),
        int(m.delivered_per_s),
        ...ratios(r),
        int(m.published_per_s),
        fixed(m.broker_cpu_pct, 0),
        fixed(m.broker_cpu_us_per_msg, 2),
        fixed(m.broker_rss_mb),
        `${fixed(m.gen_cpu_pct, 0)} (${fixed(m.gen_max_worker_cpu_pct, 0)})`,
        fixed(m.undelivered_pct, 2),
        int(m.duplicates),
      ];
    }),
  );
}

function latencyTable(rows: SummaryRow[]): string {
  return table(
    [
      "scenario",
      "MQTT",
      "broker",
      "p50 µs",
      "p99 µs",
      "p99.9 µs",
      "max µs",
      "p99 vs mosquitto",
      "p99 vs aedes",
      "delivered msg/s",
      "broker CPU %",
      "samples",
    ],
    rows.map((r) => {
      const m = r.metrics;
      return [
        ...label(r),
        int(m.p50_us),
        int(m.p99_us),
        int(m.p999_us),
        int(m.max_us),
        ...ratios(r),
        int(m.delivered_per_s),
        fixed(m.broker_cpu_pct, 0),
        int(m.samples),
      ];
    }),
  );
}

function connectionsTable(rows: SummaryRow[]): string {
  return table(
    [
      "scenario",
      "MQTT",
      "broker",
      "connected",
      "failed",
      "CONNACK/s",
      "vs mosquitto",
      "vs aedes",
      "KiB per connection",
      "broker CPU µs/conn",
      "broker RSS MiB",
    ],
    rows.map((r) => {
      const m = r.metrics;
      return [
        ...label(r),
        int(m.connected),
        int(m.failed),
        int(m.connack_per_s),
        ...ratios(r),
        fixed(m.kb_per_conn),
        int(m.broker_cpu_us_per_conn),
        fixed(m.broker_rss_mb),
      ];
    }),
  );
}

function slowTable(rows: SummaryRow[]): string {
  return table(
    [
      "scenario",
      "MQTT",
      "broker",
      "pairs msg/s alone",
      "with slow consumer",
      "kept",
      "vs mosquitto",
      "vs aedes",
      "RSS at attach MiB",
      "RSS max MiB",
      "RSS end MiB",
      "RSS growth, 2nd half MiB",
      "slow consumer got",
    ],
    rows.map((r) => {
      const m = r.metrics;
      return [
        ...label(r),
        int(m.baseline_per_s),
        int(m.with_slow_per_s),
        m.slow_ratio === undefined ? "–" : `${fixed(m.slow_ratio * 100, 0)} %`,
        ...ratios(r),
        fixed(m.rss_at_attach_mb),
        fixed(m.rss_max_mb),
        fixed(m.rss_end_mb),
        fixed(m.rss_growth_2nd_half_mb),
        int(m.slow_received),
      ];
    }),
  );
}

/** Everything the report states. */
export interface ReportInput {
  readonly startedAt: Date;
  readonly machine: MachineInfo;
  readonly options: BenchOptions;
  readonly limits: BenchLimits;
  readonly skipped: Readonly<Record<string, string>>;
  readonly descriptions: Readonly<Record<string, string>>;
  readonly results: readonly RunResult[];
  /** The persistent-session scenarios' runs (durability.ts), when any ran. */
  readonly durability?: DurabilityReport;
}

/** The Markdown report. */
export function markdown(input: ReportInput): string {
  const { machine: m, options: o } = input;
  const summary = summarize(input.results);
  const sections: string[] = [
    `# mcloudtt benchmark, ${input.startedAt.toISOString()}`,
    "",
    `Machine: ${m.cpuModel}, ${m.cores} cores, ${m.memoryGiB} GiB, Linux ${m.kernel}. ` +
    `Deno ${m.deno} (V8 ${m.v8}), Node ${m.node}; mcloudtt ${m.mcloudtt}, Mosquitto ${m.mosquitto}, ` +
    `Aedes ${m.aedes}.`,
    "",
    `Runs: ${o.rounds} interleaved round(s), ${o.warmupS} s warm-up + ${o.durationS} s measured, payload ` +
    `${o.payloadBytes} B, ${o.batch} PUBLISH per write, ${o.workersPerSide} worker process(es) per side. ` +
    `Every value is the median over rounds; ratios compare medians (higher is better, except latency).`,
    "",
    `Limits given to every broker that has them: ${
      Object.entries(input.limits).map(([k, v]) => `${k}=${v}`).join(", ")
    }.`,
  ];
  for (const [broker, reason] of Object.entries(input.skipped)) {
    sections.push("", `**Skipped ${broker}:** ${reason}`);
  }
  const byKind = (kind: ScenarioKind) => summary.filter((r) => r.kind === kind);
  const parts: [ScenarioKind, string, (rows: SummaryRow[]) => string][] = [
    [
      "throughput",
      "Throughput (messages delivered per second at the subscribers)",
      throughputTable,
    ],
    ["latency", "Latency, publish to deliver", latencyTable],
    ["connections", "Idle connections", connectionsTable],
    ["slow-consumer", "Slow consumer", slowTable],
  ];
  for (const [kind, title, render] of parts) {
    const rows = byKind(kind);
    if (rows.length === 0) continue;
    sections.push("", `## ${title}`, "", render(rows));
  }
  if (input.durability && input.durability.results.length > 0) {
    sections.push("", durabilitySection(input.durability));
  }
  const scenarios = [
    ...new Set([...summary, ...input.durability?.results ?? []].map((r) => r.scenario)),
  ];
  sections.push(
    "",
    "## Scenarios",
    "",
    ...scenarios.map((s) => `- \`${s}\`: ${input.descriptions[s] ?? ""}`),
  );
  const problems = summary.filter((r) => r.failures.length > 0 || r.errors.length > 0);
  if (problems.length > 0) {
    sections.push("", "## Failures and client errors", "");
    for (const r of problems) {
      for (const f of r.failures) {
        sections.push(`- ${label(r).join(" / ")}: failed ${f.split("\n")[0]}`);
      }
      for (const e of r.errors) sections.push(`- ${label(r).join(" / ")}: ${e}`);
    }
  }
  return sections.join("\n") + "\n";
}

/** Writes `bench-results/<timestamp>.md` and `.json` under `dir`; returns their paths. */
export async function writeReport(
  dir: string,
  input: ReportInput,
  text: string,
): Promise<string[]> {
  await Deno.mkdir(dir, { recursive: true });
  const stamp = input.startedAt.toISOString().replace(/[:.]/g, "-");
  const md = `${dir}/${stamp}.md`;
  const json = `${dir}/${stamp}.json`;
  await Deno.writeTextFile(md, text);
  await Deno.writeTextFile(
    json,
    JSON.stringify(
      { ...input, startedAt: input.startedAt.toISOString(), summary: summarize(input.results) },
      null,
      2,
    ),
  );
  return [md, json];
}
