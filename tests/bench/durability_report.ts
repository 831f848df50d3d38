/** The report section of the persistent-session scenarios (see durability.ts). */

import type { BrokerName } from "./brokers.ts";
import { fixed, int, LABEL_HEADERS, table, times } from "./cells.ts";
import {
  BASELINES,
  type DurabilityReport,
  MOSQUITTO_AUTOSAVE,
  type Storage,
} from "./durability.ts";
import { levelName } from "./runner.ts";
import { median } from "./stats.ts";
import type { Transport } from "./tls.ts";
import type { ProtocolLevel } from "./wire.ts";

/**
 * Medians of one scenario on one variant at one protocol level over one transport, with ratios
 * to the baselines.
 */
export interface DurabilityRow {
  readonly scenario: string;
  readonly variant: string;
  readonly broker: BrokerName;
  readonly storage: Storage;
  readonly level: ProtocolLevel;
  readonly transport: Transport;
  readonly runs: number;
  readonly failures: readonly string[];
  readonly errors: readonly string[];
  readonly metrics: Record<string, number>;
  /** Per rate metric: this row's value / mcloudtt in memory's, and / Mosquitto persistence's. */
  readonly vsMemory: Record<string, number>;
  readonly vsMosquitto: Record<string, number>;
}

/** The rate metrics compared with the baselines (higher is better). */
export const RATE_METRICS = ["delivered_per_s", "enqueue_per_s", "drain_per_s"] as const;

/**
 * Groups runs by scenario, variant, level and transport: medians of every metric, ratios of the
 * rates to the baselines' at the same level and transport.
 */
export function summarizeDurability(report: DurabilityReport): DurabilityRow[] {
  const groups = new Map<string, DurabilityReport["results"][number][]>();
  for (const r of report.results) {
    const key = `${r.scenario}|${r.variant}|${r.level}|${r.transport}`;
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  const rows = [...groups.values()].map((runs) => {
    const ok = runs.filter((r) => !r.failed);
    const metrics: Record<string, number> = {};
    for (const name of new Set(ok.flatMap((r) => Object.keys(r.metrics)))) {
      metrics[name] = median(ok.map((r) => r.metrics[name] ?? NaN));
    }
    return {
      scenario: runs[0].scenario,
      variant: runs[0].variant,
      broker: runs[0].broker,
      storage: runs[0].storage,
      level: runs[0].level,
      transport: runs[0].transport,
      runs: ok.length,
      failures: runs.flatMap((r) => r.failed ? [`round ${r.round}: ${r.failed}`] : []),
      errors: [...new Set(runs.flatMap((r) => r.errors))].slice(0, 5),
      metrics,
    };
  });
  return rows.map((row) => {
    const ratios = (variant: string) => {
      const ref = rows.find((r) =>
        r.scenario === row.scenario && r.variant === variant && r.level === row.level &&
        r.transport === row.transport
      );
      const out: Record<string, number> = {};
      for (const name of RATE_METRICS) {
        const value = ref?.metrics[name];
        if (value !== undefined && value > 0 && row.metrics[name] !== undefined) {
          out[name] = row.metrics[name] / value;
        }
      }
      return out;
    };
    return { ...row, vsMemory: ratios(BASELINES.memory), vsMosquitto: ratios(BASELINES.mosquitto) };
  });
}

/** The label columns: the report's (`LABEL_HEADERS`), then the storage setting. */
const HEADERS = [...LABEL_HEADERS, "storage"];

function label(row: DurabilityRow): string[] {
  const failed = row.failures.length > 0 ? ` (${row.failures.length} failed)` : "";
  return [
    row.scenario,
    row.transport,
    levelName(row.level),
    `${row.broker}${failed}`,
    row.storage,
  ];
}

function onlineTable(rows: DurabilityRow[]): string {
  return table(
    [
      ...HEADERS,
      "delivered msg/s",
      "vs mcloudtt memory",
      "vs mosquitto persistence",
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
        times(r.vsMemory.delivered_per_s),
        times(r.vsMosquitto.delivered_per_s),
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

function offlineTable(rows: DurabilityRow[]): string {
  return table(
    [
      ...HEADERS,
      "into offline sessions msg/s",
      "vs mcloudtt memory",
      "vs mosquitto persistence",
      "broker CPU µs/msg",
      "RSS holding them MiB",
      "drain msg/s",
      "vs mcloudtt memory",
      "vs mosquitto persistence",
      "drain s",
      "broker CPU µs/msg",
      "undelivered %",
      "dups",
    ],
    rows.map((r) => {
      const m = r.metrics;
      return [
        ...label(r),
        int(m.enqueue_per_s),
        times(r.vsMemory.enqueue_per_s),
        times(r.vsMosquitto.enqueue_per_s),
        fixed(m.enqueue_cpu_us_per_msg, 2),
        fixed(m.broker_rss_queued_mb),
        int(m.drain_per_s),
        times(r.vsMemory.drain_per_s),
        times(r.vsMosquitto.drain_per_s),
        fixed(m.drain_s, 2),
        fixed(m.broker_cpu_us_per_msg, 2),
        fixed(m.undelivered_pct, 2),
        int(m.duplicates),
      ];
    }),
  );
}

/** The Markdown section: one table per kind of persistent scenario, notes, failures. */
export function durabilitySection(report: DurabilityReport): string {
  const rows = summarizeDurability(report);
  const offline = rows.filter((r) => r.scenario.includes("offline"));
  const online = rows.filter((r) => !r.scenario.includes("offline"));
  const parts = ["## Persistent sessions (QoS 1, durability)", ""];
  if (online.length > 0) parts.push(onlineTable(online), "");
  if (offline.length > 0) parts.push(offlineTable(offline), "");
  parts.push(
    "- mcloudtt `ack-after-write`: PUBACK only after the SQLite transaction holding the " +
      "message is committed and fsynced (group commit per event-loop turn); `async`: PUBACK at " +
      "once, the write log fsynced at checkpoints; `memory`: `--storage.enabled=false`.",
    `- Mosquitto \`persistence true\` keeps everything in memory and writes its database only ` +
      `periodically (${MOSQUITTO_AUTOSAVE.join(", ")}: every 30 min) and at shutdown, not per ` +
      "message: a crash loses everything since the last save, so it is not comparable to " +
      "`ack-after-write` in what it promises, only in cost.",
    `- Storage: ${report.storageNote}. The fsync cost depends on the disk.`,
    "- Plain TCP only, whatever `--transport` says: the question here is what storage costs, " +
      "and TLS would add the same per-byte cost to every variant; mcloudtt runs without the " +
      "GC trace.",
  );
  const problems = rows.filter((r) => r.failures.length > 0 || r.errors.length > 0);
  if (problems.length > 0) {
    parts.push("", "Failures and client errors:", "");
    for (const r of problems) {
      for (const f of r.failures) {
        parts.push(`- ${label(r).join(" / ")}: failed ${f.split("\n")[0]}`);
      }
      for (const e of r.errors) parts.push(`- ${label(r).join(" / ")}: ${e}`);
    }
  }
  return parts.join("\n");
}
