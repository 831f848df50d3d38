/** Medians across rounds, ratios between brokers, and the Markdown / JSON report. */

import type { BenchLimits, BrokerName } from "./brokers.ts";
import {
  fixed,
  generatorCpu,
  int,
  LABEL_HEADERS,
  labelCells,
  problemLines,
  ratioCell,
  table,
} from "./cells.ts";
import type { DurabilityReport } from "./durability.ts";
import { durabilitySection } from "./durability_report.ts";
import type { MachineInfo } from "./machine.ts";
import type { Pinning } from "./pin.ts";
import type { BenchOptions } from "./options.ts";
import type { RunResult } from "./runner.ts";
import type { ScenarioKind } from "./scenarios.ts";
import { targetsSection } from "./targets.ts";
import { groupBy, summarizeRounds } from "./stats.ts";
import type { Transport } from "./tls.ts";
import type { ProtocolLevel } from "./wire.ts";

export { LABEL_HEADERS } from "./cells.ts";

/** Medians of one scenario on one broker at one protocol level. */
export interface SummaryRow {
  readonly scenario: string;
  readonly kind: ScenarioKind;
  readonly broker: BrokerName;
  readonly level: ProtocolLevel;
  readonly transport: Transport;
  readonly runs: number;
  readonly failures: readonly string[];
  readonly metrics: Record<string, number>;
  /** Smallest and largest value over the rounds, per metric: the run-to-run spread. */
  readonly spread: Record<string, Range>;
  /** Headline metric divided by Mosquitto's at the same level and transport (and Aedes' at 3.1.1). */
  readonly vsMosquitto?: number;
  readonly vsAedes?: number;
  /** The same divided by the runtime's floor (when the floor ran this scenario). */
  readonly vsFloor?: number;
  /**
   * Ratios to other brokers' rows at the same level and transport, per compared metric
   * (`COMPARED`), then per broker: of the medians, and round by round (smallest, largest).
   * "floor" is there when the floor has a row at the same level and transport.
   */
  readonly compare: Record<string, Partial<Record<BrokerName, Ratio>>>;
  readonly errors: readonly string[];
}

/** This row's median divided by another's, and the spread of the per-round ratios. */
export interface Ratio {
  readonly value?: number;
  readonly range?: Range;
}

/** Smallest and largest of a set of values. */
export interface Range {
  readonly min: number;
  readonly max: number;
}

function range(values: readonly number[]): Range | undefined {
  const finite = values.filter(Number.isFinite);
  return finite.length === 0 ? undefined : { min: Math.min(...finite), max: Math.max(...finite) };
}

/** The metric each kind is compared on; latency is lower-is-better, the rest higher. */
export const HEADLINE: Readonly<Record<ScenarioKind, string>> = {
  throughput: "delivered_per_s",
  latency: "p99_us",
  connections: "connack_per_s",
  "slow-consumer": "with_slow_per_s",
};

/** Metrics compared with the other brokers, per kind; the headline first. */
export const COMPARED: Readonly<Partial<Record<ScenarioKind, readonly string[]>>> = {
  throughput: ["delivered_per_s", "broker_cpu_us_per_msg"],
  latency: ["p99_us", "p999_us", "broker_cpu_us_per_msg"],
  connections: [
    "connack_per_s",
    "kb_per_conn",
    "broker_cpu_us_per_conn",
    "reconnect_connack_per_s",
    "reconnect_broker_cpu_us_per_conn",
  ],
  "slow-consumer": ["with_slow_per_s"],
};

/** Groups runs by scenario, broker, level and transport and takes the median of every metric. */
export function summarize(results: readonly RunResult[]): SummaryRow[] {
  // Results written before the transport dimension existed were all plain TCP.
  const transportOf = (r: RunResult): Transport => r.transport ?? "tcp";
  const keyOf = (scenario: string, broker: string, level: number, transport: Transport) =>
    `${scenario}|${broker}|${level}|${transport}`;
  const groups = groupBy(results, (r) => keyOf(r.scenario, r.broker, r.level, transportOf(r)));
  const rows: SummaryRow[] = [];
  for (const runs of groups.values()) {
    const { ok, metrics, failures, errors } = summarizeRounds(runs);
    const spread: Record<string, Range> = {};
    for (const name of Object.keys(metrics)) {
      const r = range(ok.map((r) => r.metrics[name] ?? NaN));
      if (r) spread[name] = r;
    }
    const first = runs[0];
    rows.push({
      scenario: first.scenario,
      kind: first.kind,
      broker: first.broker,
      level: first.level,
      transport: transportOf(first),
      runs: ok.length,
      failures,
      metrics,
      spread,
      compare: {},
      errors,
    });
  }
  return rows.map((row) => {
    const mine = groups.get(keyOf(row.scenario, row.broker, row.level, row.transport)) ?? [];
    const ratio = (metric: string, broker: BrokerName, level: ProtocolLevel): Ratio => {
      const ref = rows.find((r) =>
        r.scenario === row.scenario && r.broker === broker && r.level === level &&
        r.transport === row.transport
      );
      const value = ref?.metrics[metric];
      const theirs = groups.get(keyOf(row.scenario, broker, level, row.transport)) ?? [];
      const perRound = mine.flatMap((a) => {
        const b = theirs.find((t) => t.round === a.round && !t.failed);
        const denominator = b?.metrics[metric];
        return a.failed || denominator === undefined || !(denominator > 0)
          ? []
          : [(a.metrics[metric] ?? NaN) / denominator];
      });
      return {
        value: value !== undefined && value > 0 ? row.metrics[metric] / value : undefined,
        range: range(perRound),
      };
    };
    const floorRan = groups.has(keyOf(row.scenario, "floor", row.level, row.transport));
    const compare: Record<string, Partial<Record<BrokerName, Ratio>>> = {};
    for (const metric of COMPARED[row.kind] ?? [HEADLINE[row.kind]]) {
      compare[metric] = {
        mosquitto: ratio(metric, "mosquitto", row.level),
        // Aedes only speaks 3.1.1, so only 3.1.1 rows are compared with it.
        ...(row.level === 4 ? { aedes: ratio(metric, "aedes", 4) } : {}),
        // The floor forwards either level's bytes: compared at the row's own level.
        ...(floorRan ? { floor: ratio(metric, "floor", row.level) } : {}),
      };
    }
    const headline = compare[HEADLINE[row.kind]] ?? {};
    return {
      ...row,
      compare,
      vsMosquitto: headline.mosquitto?.value,
      vsAedes: headline.aedes?.value,
      ...(floorRan ? { vsFloor: headline.floor?.value } : {}),
    };
  });
}

/**
 * The run-to-run spread of a median: "±x %" is half the min–max range over the rounds,
 * relative to the median; empty with a single round or no spread to show.
 */
export function spreadNote(row: SummaryRow, metric: string): string {
  const r = row.spread[metric];
  const mid = row.metrics[metric];
  if (row.runs < 2 || r === undefined || !Number.isFinite(mid) || mid === 0) return "";
  const pct = ((r.max - r.min) / 2 / Math.abs(mid)) * 100;
  return ` ±${pct < 10 ? pct.toFixed(1) : pct.toFixed(0)} %`;
}

/** A median with its spread, formatted by `format`. */
function spread(row: SummaryRow, metric: string, format: (n: number) => string): string {
  return `${format(row.metrics[metric])}${spreadNote(row, metric)}`;
}

const vs = (row: SummaryRow, metric: string, broker: BrokerName) =>
  ratioCell(row.compare[metric]?.[broker]);
const ratios = (row: SummaryRow) => {
  const headline = HEADLINE[row.kind];
  return [vs(row, headline, "mosquitto"), vs(row, headline, "aedes")];
};
/**
 * A "<what> vs floor" column of `metric`, present only when the floor has rows among `rows`:
 * its header and each row's cell, none or one, to spread into a table's columns.
 */
function vsFloorColumn(rows: readonly SummaryRow[], header: string, metric: string) {
  const on = rows.some((r) => r.broker === "floor");
  return {
    header: on ? [header] : [],
    cell: (r: SummaryRow) => on ? [vs(r, metric, "floor")] : [],
  };
}
const int0 = (n: number) => int(n);
const fixedBy = (digits: number) => (n: number) => fixed(n, digits);

function throughputTable(rows: SummaryRow[]): string {
  return table(
    [
      ...LABEL_HEADERS,
      "delivered msg/s",
      "vs mosquitto",
      "vs aedes",
      "published msg/s",
      "broker CPU %",
      "broker CPU µs/msg",
      "CPU/msg vs mosquitto",
      "broker RSS MiB",
      "generator CPU % (busiest worker)",
      "undelivered %",
      "dups",
    ],
    rows.map((r) => {
      const m = r.metrics;
      return [
        ...labelCells(r),
        spread(r, "delivered_per_s", int0),
        ...ratios(r),
        int(m.published_per_s),
        fixed(m.broker_cpu_pct, 0),
        spread(r, "broker_cpu_us_per_msg", fixedBy(2)),
        vs(r, "broker_cpu_us_per_msg", "mosquitto"),
        fixed(m.broker_rss_mb),
        generatorCpu(m),
        fixed(m.undelivered_pct, 2),
        int(m.duplicates),
      ];
    }),
  );
}

function latencyTable(rows: SummaryRow[]): string {
  const p99Floor = vsFloorColumn(rows, "p99 vs floor", "p99_us");
  const cpuFloor = vsFloorColumn(rows, "CPU/msg vs floor", "broker_cpu_us_per_msg");
  return table(
    [
      ...LABEL_HEADERS,
      "p50 µs",
      "p99 µs",
      "p99.9 µs",
      "max µs",
      "p99 vs mosquitto",
      "p99 vs aedes",
      "p99.9 vs mosquitto",
      ...p99Floor.header,
      "delivered msg/s",
      "broker CPU %",
      "broker CPU µs/msg",
      "CPU/msg vs mosquitto",
      ...cpuFloor.header,
      "samples",
      "generator CPU %",
    ],
    rows.map((r) => {
      const m = r.metrics;
      return [
        ...labelCells(r),
        spread(r, "p50_us", int0),
        spread(r, "p99_us", int0),
        spread(r, "p999_us", int0),
        int(m.max_us),
        ...ratios(r),
        vs(r, "p999_us", "mosquitto"),
        ...p99Floor.cell(r),
        int(m.delivered_per_s),
        fixed(m.broker_cpu_pct, 0),
        spread(r, "broker_cpu_us_per_msg", fixedBy(2)),
        vs(r, "broker_cpu_us_per_msg", "mosquitto"),
        ...cpuFloor.cell(r),
        int(m.samples),
        fixed(m.gen_cpu_pct, 0),
      ];
    }),
  );
}

function connectionsTable(rows: SummaryRow[]): string {
  const rateFloor = vsFloorColumn(rows, "CONNACK/s vs floor", "connack_per_s");
  const kibFloor = vsFloorColumn(rows, "KiB/conn vs floor", "kb_per_conn");
  return table(
    [
      ...LABEL_HEADERS,
      "connected",
      "failed",
      "CONNACK/s",
      "vs mosquitto",
      "vs aedes",
      ...rateFloor.header,
      "KiB per connection",
      "KiB/conn vs mosquitto",
      ...kibFloor.header,
      "broker CPU µs/conn",
      "broker CPU %",
      "generator CPU % (busiest worker)",
      "broker RSS MiB",
      "reconnect CONNACK/s",
      "vs mosquitto",
      "reconnect broker CPU µs/conn",
      "vs mosquitto",
      "reconnect generator CPU % (busiest)",
    ],
    rows.map((r) => {
      const m = r.metrics;
      return [
        ...labelCells(r),
        int(m.connected),
        int(m.failed),
        spread(r, "connack_per_s", int0),
        ...ratios(r),
        ...rateFloor.cell(r),
        spread(r, "kb_per_conn", fixedBy(1)),
        vs(r, "kb_per_conn", "mosquitto"),
        ...kibFloor.cell(r),
        int(m.broker_cpu_us_per_conn),
        fixed(m.broker_cpu_pct, 0),
        generatorCpu(m),
        fixed(m.broker_rss_mb),
        spread(r, "reconnect_connack_per_s", int0),
        vs(r, "reconnect_connack_per_s", "mosquitto"),
        spread(r, "reconnect_broker_cpu_us_per_conn", int0),
        vs(r, "reconnect_broker_cpu_us_per_conn", "mosquitto"),
        fixed(m.reconnect_gen_max_worker_cpu_pct, 0),
      ];
    }),
  );
}

/** mcloudtt's (and the floor's) allocation and GC pauses in the load runs (V8's GC trace). */
function gcTable(rows: SummaryRow[]): string {
  return table(
    [
      ...LABEL_HEADERS,
      "delivered msg/s",
      "allocated B/msg",
      "allocated MiB/s",
      "collections (scavenges)",
      "GC pause p99 ms",
      "GC pause max ms",
      "GC ms per s",
    ],
    rows.map((r) => {
      const m = r.metrics;
      return [
        ...labelCells(r),
        int(m.delivered_per_s),
        spread(r, "gc_alloc_bytes_per_msg", int0),
        fixed(m.gc_alloc_mb_per_s),
        `${int(m.gc_events)} (${int(m.gc_scavenges)})`,
        spread(r, "gc_pause_p99_ms", fixedBy(2)),
        spread(r, "gc_pause_max_ms", fixedBy(2)),
        spread(r, "gc_ms_per_s", fixedBy(1)),
      ];
    }),
  );
}

function slowTable(rows: SummaryRow[]): string {
  return table(
    [
      ...LABEL_HEADERS,
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
        ...labelCells(r),
        int(m.baseline_per_s),
        spread(r, "with_slow_per_s", int0),
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
  /** CPUs of servers and clients with `--pin`; absent or null when unpinned. */
  readonly pinning?: Pinning | null;
  readonly options: BenchOptions;
  readonly limits: BenchLimits;
  readonly skipped: Readonly<Record<string, string>>;
  readonly descriptions: Readonly<Record<string, string>>;
  readonly results: readonly RunResult[];
  /** The persistent-session scenarios' runs (durability.ts), when any ran. */
  readonly durability?: DurabilityReport;
}

/** The header's sentence on who measured the latency runs (none without latency runs). */
export function latencyClientLines(input: ReportInput): string[] {
  if (!input.results.some((r) => r.kind === "latency")) return [];
  const o = input.options;
  // Reports from before --latency-client existed ran the Deno workers.
  const client = o.latencyClient ?? "deno";
  const text = client === "probe"
    ? "Latency client: the C probe (`tests/bench/probe/`: one thread, epoll + " +
      "timerfd pacing, OpenSSL for TLS), send and receive stamped with the same CLOCK_MONOTONIC."
    : "Latency client: the Deno worker clients (one worker process; their own event loop and GC " +
      "put p50 at some 300-600 µs for every broker)" +
      (o.latencyClientNote
        ? `, because the C probe could not be built: ${o.latencyClientNote}.`
        : ".");
  return [text, ""];
}

/** The header's paragraph on the runtime's floor (none when the floor has no rows). */
export function floorLines(input: ReportInput): string[] {
  const floor = input.results.filter((r) => r.broker === "floor");
  if (floor.length === 0) return [];
  const idle = floor.some((r) => r.kind === "connections")
    ? " In the connections runs it answers each CONNECT with a CONNACK and holds the connection."
    : "";
  return [
    "floor: a bare Deno forwarder (`tests/bench/forwarder.ts`: no MQTT, copies bytes, the " +
    "transports mcloudtt uses: its native TCP listener over TCP, node:tls over TLS), driven by the " +
    `C probe's \`--raw\` mode.${idle} No broker on this runtime does less per message; its tail is as noisy as any ` +
    `target's, so a cell can show a broker below it. "vs floor" is how close each broker is ("vs mosquitto" in the floor's own rows: floor ÷ Mosquitto).`,
    "",
  ];
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
    input.pinning
      ? `Pinned (\`--pin\`): brokers (and Redis) on CPU ${input.pinning.servers}, the bench and its ` +
        `load generators on CPU ${input.pinning.clients}.`
      : "Not pinned: brokers and load generators share all CPUs.",
    "",
    `Runs: ${o.rounds} interleaved round(s), ${o.warmupS} s warm-up (paced latency runs: ${
      o.pacedWarmupS ?? o.warmupS
    } s) + ` +
    `${o.durationS} s measured, payload ` +
    `${o.payloadBytes} B, ${o.batch} PUBLISH per write, ${o.workersPerSide} worker process(es) per side, ` +
    `over ${
      (o.transports ?? ["tcp"]).join(" and ")
    } (TLS: server certificate only, for every broker). ` +
    `Every value is the median over rounds; "±x %" is half the min–max range over the rounds. Ratios ` +
    `divide medians (higher is better, except latency, CPU and memory), with the smallest and largest ` +
    `per-round ratio in brackets (rounds interleave the brokers).`,
    "",
    ...latencyClientLines(input),
    ...floorLines(input),
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
  const targets = targetsSection(summary);
  if (targets.length > 0) sections.push("", ...targets);
  const traced = summary.filter((r) => r.metrics.gc_events !== undefined);
  if (traced.length > 0) {
    sections.push(
      "",
      `## mcloudtt${
        traced.some((r) => r.broker === "floor") ? " (and floor)" : ""
      } allocation and GC pauses (V8 \`--trace-gc-nvp\`, measure window)`,
      "",
      "Allocated bytes per delivered message: V8's `allocated` (heap object growth between " +
        "collections) over the mutator time before each collection in the window, divided by the " +
        "delivery rate. Pauses: the main thread's atomic GC pauses; max also counts the longest " +
        "incremental marking step; GC ms per s adds the incremental marking steps.",
      "",
      gcTable(traced),
    );
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
    sections.push("", "## Failures and client errors", "", ...problemLines(problems, labelCells));
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
