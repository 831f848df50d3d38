/**
 * Table cells and Markdown tables shared by every report section (report.ts,
 * durability_report.ts), so their tables start with the same columns and format alike.
 */

import { levelName } from "./runner.ts";
import type { ProtocolLevel } from "./wire.ts";

/** The columns every table starts with: scenario, transport, MQTT level, broker. */
export const LABEL_HEADERS: readonly string[] = ["scenario", "transport", "MQTT", "broker"];

/** A whole number with thousands separators; "–" when missing. */
export const int = (n: number | undefined): string =>
  n === undefined || !Number.isFinite(n) ? "–" : Math.round(n).toLocaleString("en-US");

/** `digits` decimals; "–" when missing. */
export const fixed = (n: number | undefined, digits = 1): string =>
  n === undefined || !Number.isFinite(n) ? "–" : n.toFixed(digits);

/** A ratio, "1.23×"; "–" when missing. */
export const times = (n: number | undefined): string =>
  n === undefined || !Number.isFinite(n) ? "–" : `${n.toFixed(2)}×`;

/** "1.12× (1.05–1.20)": ratio of the medians, and the smallest and largest per-round ratio. */
export function ratioCell(
  ratio: { readonly value?: number; readonly range?: { min: number; max: number } } | undefined,
): string {
  const value = times(ratio?.value);
  const r = ratio?.range;
  if (value === "–" || r === undefined) return value;
  const [min, max] = [r.min.toFixed(2), r.max.toFixed(2)];
  return min === max ? value : `${value} (${min}–${max})`;
}

/** A Markdown table. */
export function table(headers: readonly string[], rows: readonly string[][]): string {
  const line = (cells: readonly string[]) => `| ${cells.join(" | ")} |`;
  return [line(headers), line(headers.map(() => "---")), ...rows.map(line)].join("\n");
}

/** What a row needs for its label cells and its failure lines. */
export interface LabelledRow {
  readonly scenario: string;
  readonly transport: string;
  readonly level: ProtocolLevel;
  readonly broker: string;
  /** Failed rounds, "round n: why". */
  readonly failures: readonly string[];
  readonly errors: readonly string[];
}

/** The `LABEL_HEADERS` cells of a row; the broker cell counts the failed rounds. */
export function labelCells(row: LabelledRow): string[] {
  const failed = row.failures.length > 0 ? ` (${row.failures.length} failed)` : "";
  return [row.scenario, row.transport, levelName(row.level), `${row.broker}${failed}`];
}

/** "generator CPU % (busiest worker)": the whole generator's CPU, and its busiest worker's. */
export const generatorCpu = (m: Record<string, number>): string =>
  `${fixed(m.gen_cpu_pct, 0)} (${fixed(m.gen_max_worker_cpu_pct, 0)})`;

/** A list item per failed round and per client error of `rows`, led by the row's label. */
export function problemLines<R extends LabelledRow>(
  rows: readonly R[],
  label: (row: R) => string[],
): string[] {
  const lines: string[] = [];
  for (const r of rows) {
    for (const f of r.failures) lines.push(`- ${label(r).join(" / ")}: failed ${f.split("\n")[0]}`);
    for (const e of r.errors) lines.push(`- ${label(r).join(" / ")}: ${e}`);
  }
  return lines;
}
