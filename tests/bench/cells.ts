/**
 * Table cells and Markdown tables shared by every report section (report.ts,
 * durability_report.ts), so their tables start with the same columns and format alike.
 */

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

/** A Markdown table. */
export function table(headers: readonly string[], rows: readonly string[][]): string {
  const line = (cells: readonly string[]) => `| ${cells.join(" | ")} |`;
  return [line(headers), line(headers.map(() => "---")), ...rows.map(line)].join("\n");
}
