/**
 * Issue 14's targets, judged cell by cell from a run's summary rows, so that every report says
 * plainly which are met and which are not (the issue: "the bench report shows the three targets
 * met, or, for any that cannot be met in Deno, the measured floor of the runtime ... and how close
 * we are to it").
 *
 * A cell is one scenario at one transport and MQTT level. Its verdict, from the medians:
 *
 * - `met`: mcloudtt is at least as good as Mosquitto.
 * - `floor`: not met, but the runtime's floor (floor.ts's bare forwarder, or the bare CONNACK
 *   server in the connections runs) misses the target too, and mcloudtt is within FLOOR_SLACK of
 *   the floor: what is left is the runtime's.
 * - `open`: not met, and mcloudtt is further than that from the floor (or the floor meets the
 *   target): what is left is ours.
 * - `unknown`: Mosquitto (or, for the floor verdict, the floor) has no row to compare with.
 *
 * The per-round ranges go beside the medians: on a shared machine a verdict whose ranges straddle
 * the line is as much the machine's as the broker's.
 */
import type { BrokerName } from "./brokers.ts";
import { fixed, int, ratioCell, table } from "./cells.ts";
import type { Ratio, SummaryRow } from "./report.ts";
import { levelName } from "./runner.ts";

/**
 * How far above (or, for rates, below) the floor still counts as at it: 10 %, about the
 * run-to-run spread of a median on the machine the bench was built on.
 */
export const FLOOR_SLACK = 1.1;

/** The idle memory target over plain TCP, KiB per connection. */
export const TCP_KIB_TARGET = 8;

export type Verdict = "met" | "floor" | "open" | "unknown";

/** One target in one cell. */
export interface TargetCell {
  readonly target: string;
  readonly scenario: string;
  readonly transport: string;
  readonly level: SummaryRow["level"];
  /** The medians; absent where that target had no row. */
  readonly mcloudtt: number;
  readonly mosquitto?: number;
  readonly floor?: number;
  readonly vsMosquitto?: Ratio;
  readonly floorVsMosquitto?: Ratio;
  readonly vsFloor?: Ratio;
  readonly verdict: Verdict;
}

/** A target on one metric: lower or higher is better, or a fixed bound. */
interface Target {
  readonly label: string;
  readonly kind: SummaryRow["kind"];
  readonly metric: string;
  readonly better: "lower" | "higher";
  /** Only rows over this transport. */
  readonly transport?: string;
  /** A bound of its own instead of Mosquitto's figure (idle KiB over TCP). */
  readonly bound?: number;
  /** How the values print. */
  readonly format: (n: number | undefined) => string;
}

const TARGETS: readonly Target[] = [
  { label: "p99 ≤ Mosquitto", kind: "latency", metric: "p99_us", better: "lower", format: int },
  {
    label: "p99.9 ≤ Mosquitto",
    kind: "latency",
    metric: "p999_us",
    better: "lower",
    format: int,
  },
  {
    label: "CPU/msg ≤ Mosquitto",
    kind: "latency",
    metric: "broker_cpu_us_per_msg",
    better: "lower",
    format: (n) => fixed(n, 1),
  },
  {
    label: `KiB/conn ≤ ${TCP_KIB_TARGET}`,
    kind: "connections",
    metric: "kb_per_conn",
    better: "lower",
    transport: "tcp",
    bound: TCP_KIB_TARGET,
    format: (n) => fixed(n, 1),
  },
  {
    label: "KiB/conn ≤ Mosquitto",
    kind: "connections",
    metric: "kb_per_conn",
    better: "lower",
    transport: "tls",
    format: (n) => fixed(n, 1),
  },
  {
    label: "CONNACK/s ≥ Mosquitto (cold)",
    kind: "connections",
    metric: "connack_per_s",
    better: "higher",
    format: int,
  },
  {
    label: "CONNACK/s ≥ Mosquitto (reconnect)",
    kind: "connections",
    metric: "reconnect_connack_per_s",
    better: "higher",
    format: int,
  },
];

/** `ratio` (a ÷ b) is as good as 1 or better, for a metric where `better` is better. */
function atLeastAsGood(ratio: number, better: Target["better"]): boolean {
  return better === "lower" ? ratio <= 1 : ratio >= 1;
}

/** `ratio` (mcloudtt ÷ floor) is within FLOOR_SLACK of the floor. */
function nearFloor(ratio: number, better: Target["better"]): boolean {
  return better === "lower" ? ratio <= FLOOR_SLACK : ratio >= 1 / FLOOR_SLACK;
}

function verdictOf(
  t: Target,
  value: number,
  floorValue: number | undefined,
  vsMosquitto: number | undefined,
  floorVsMosquitto: number | undefined,
  vsFloor: number | undefined,
): Verdict {
  if (t.bound !== undefined) {
    if (value <= t.bound) return "met";
    if (floorValue === undefined || vsFloor === undefined) return "unknown";
    return floorValue > t.bound && nearFloor(vsFloor, t.better) ? "floor" : "open";
  }
  if (vsMosquitto === undefined || !Number.isFinite(vsMosquitto)) return "unknown";
  if (atLeastAsGood(vsMosquitto, t.better)) return "met";
  if (floorVsMosquitto === undefined || vsFloor === undefined) return "unknown";
  return !atLeastAsGood(floorVsMosquitto, t.better) && nearFloor(vsFloor, t.better)
    ? "floor"
    : "open";
}

/** Every target in every cell where mcloudtt has a row, in the order of `rows`. */
export function judgeTargets(rows: readonly SummaryRow[]): TargetCell[] {
  const find = (r: SummaryRow, broker: BrokerName) =>
    rows.find((o) =>
      o.broker === broker && o.scenario === r.scenario && o.level === r.level &&
      o.transport === r.transport && o.runs > 0
    );
  const cells: TargetCell[] = [];
  for (const t of TARGETS) {
    for (const r of rows) {
      if (r.broker !== "mcloudtt" || r.kind !== t.kind || r.runs === 0) continue;
      if (t.transport !== undefined && r.transport !== t.transport) continue;
      const value = r.metrics[t.metric];
      if (value === undefined || !Number.isFinite(value)) continue;
      const mosquitto = find(r, "mosquitto");
      const floor = find(r, "floor");
      const vsMosquitto = mosquitto ? r.compare[t.metric]?.mosquitto : undefined;
      const vsFloor = floor ? r.compare[t.metric]?.floor : undefined;
      const floorVsMosquitto = floor && mosquitto ? floor.compare[t.metric]?.mosquitto : undefined;
      cells.push({
        target: t.label,
        scenario: r.scenario,
        transport: r.transport,
        level: r.level,
        mcloudtt: value,
        mosquitto: mosquitto?.metrics[t.metric],
        floor: floor?.metrics[t.metric],
        vsMosquitto,
        floorVsMosquitto,
        vsFloor,
        verdict: verdictOf(
          t,
          value,
          floor?.metrics[t.metric],
          vsMosquitto?.value,
          floorVsMosquitto?.value,
          vsFloor?.value,
        ),
      });
    }
  }
  return cells;
}

const VERDICT_TEXT: Readonly<Record<Verdict, string>> = {
  met: "met",
  floor: "at the runtime's floor",
  open: "not met",
  unknown: "–",
};

/** The report's section: the rule, a count per verdict, and one line per target and cell. */
export function targetsSection(rows: readonly SummaryRow[]): string[] {
  const cells = judgeTargets(rows);
  if (cells.length === 0) return [];
  const count = (v: Verdict) => cells.filter((c) => c.verdict === v).length;
  const format = (label: string) => TARGETS.find((t) => t.label === label)!.format;
  return [
    "## Issue 14's targets",
    "",
    "Each target in each cell, from the medians above: **met** (mcloudtt at least as good as " +
    `Mosquitto; idle memory over TCP at most ${TCP_KIB_TARGET} KiB per connection), **at the ` +
    "runtime's floor** (not met, but the floor misses it too and mcloudtt is within " +
    `${Math.round((FLOOR_SLACK - 1) * 100)} % of the floor), **not met** (the rest: the gap is ` +
    "mcloudtt's). Per-round ratios in brackets; a verdict whose range straddles the line is the " +
    "machine's as much as the broker's.",
    "",
    `Cells: ${cells.length}; met ${count("met")}, at the runtime's floor ${
      count("floor")
    }, not met ` +
    `${count("open")}${count("unknown") > 0 ? `, not judged ${count("unknown")}` : ""}.`,
    "",
    table(
      [
        "target",
        "scenario",
        "transport",
        "MQTT",
        "mcloudtt / floor / Mosquitto",
        "mcloudtt ÷ Mosquitto",
        "floor ÷ Mosquitto",
        "mcloudtt ÷ floor",
        "verdict",
      ],
      cells.map((c) => {
        const f = format(c.target);
        return [
          c.target,
          c.scenario,
          c.transport,
          levelName(c.level),
          `${f(c.mcloudtt)} / ${f(c.floor)} / ${f(c.mosquitto)}`,
          ratioCell(c.vsMosquitto),
          ratioCell(c.floorVsMosquitto),
          ratioCell(c.vsFloor),
          VERDICT_TEXT[c.verdict],
        ];
      }),
    ),
  ];
}
