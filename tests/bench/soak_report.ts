/** The soak's samples (soak.ts): /metrics parsing, least-squares slopes, the printed table. */

/** One 10 s sample of the broker. */
export interface SoakSample {
  /** Seconds since the load started. */
  readonly t: number;
  /** VmRSS from /proc, bytes. */
  readonly rss: number;
  readonly heapUsed: number;
  readonly heapTotal: number;
  readonly external: number;
  readonly sessionsOnline: number;
  readonly sessionsOffline: number;
  readonly connections: number;
  readonly subscriptions: number;
  readonly retained: number;
  readonly queued: number;
  readonly queuedBytes: number;
  readonly unwritten: number;
  readonly lagMs: number;
  readonly expired: number;
  readonly wills: number;
  readonly connects: number;
  readonly dropped: number;
}

/** Prometheus text format to `name{labels}` -> value (labels as printed). */
export function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || line.trim() === "") continue;
    const m = /^([A-Za-z_:][\w:]*(?:\{[^}]*\})?)\s+(\S+)/.exec(line);
    if (m) out.set(m[1], Number(m[2]));
  }
  return out;
}

/** Sum of every sample of family `name` (all label sets). */
export function sumFamily(metrics: Map<string, number>, name: string): number {
  let n = 0;
  for (const [key, value] of metrics) {
    if (key === name || key.startsWith(`${name}{`)) n += value;
  }
  return n;
}

/** A sample from the broker's /metrics and its RSS. */
export function toSample(t: number, rss: number, m: Map<string, number>): SoakSample {
  const get = (key: string) => m.get(key) ?? NaN;
  return {
    t,
    rss,
    heapUsed: get("mcloudtt_heap_used_bytes"),
    heapTotal: get("mcloudtt_heap_total_bytes"),
    external: get("mcloudtt_external_memory_bytes"),
    sessionsOnline: get('mcloudtt_sessions{state="online"}'),
    sessionsOffline: get('mcloudtt_sessions{state="offline"}'),
    connections: sumFamily(m, "mcloudtt_connections"),
    subscriptions: get("mcloudtt_subscriptions"),
    retained: get("mcloudtt_retained_messages"),
    queued: get("mcloudtt_queued_messages"),
    queuedBytes: get("mcloudtt_queued_bytes"),
    unwritten: get("mcloudtt_store_unwritten_operations"),
    lagMs: get("mcloudtt_event_loop_lag_seconds") * 1000,
    expired: get("mcloudtt_sessions_expired_total"),
    wills: get("mcloudtt_wills_published_total"),
    connects: get("mcloudtt_connects_total"),
    dropped: sumFamily(m, "mcloudtt_messages_dropped_total"),
  };
}

/** Least-squares slope of y over x (with 2 points, the line through them); NaN with fewer. */
export function slope(points: readonly (readonly [number, number])[]): number {
  const pts = points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  if (pts.length < 2) return NaN;
  const mx = pts.reduce((s, [x]) => s + x, 0) / pts.length;
  const my = pts.reduce((s, [, y]) => s + y, 0) / pts.length;
  let num = 0, den = 0;
  for (const [x, y] of pts) {
    num += (x - mx) * (y - my);
    den += (x - mx) ** 2;
  }
  return den === 0 ? NaN : num / den;
}

/** MiB per minute of `field` over the samples at or after `fromT` seconds. */
export function mibPerMinute(
  samples: readonly SoakSample[],
  field: (s: SoakSample) => number,
  fromT: number,
): number {
  const pts = samples.filter((s) => s.t >= fromT).map((s) =>
    [s.t / 60, field(s) / 2 ** 20] as const
  );
  return slope(pts);
}

export const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);

/** One line per sample while the run goes. */
export function sampleLine(s: SoakSample, extra: string): string {
  return `t=${String(Math.round(s.t)).padStart(4)}s rss ${mib(s.rss)} MiB heap ${mib(s.heapUsed)}/${
    mib(s.heapTotal)
  } ext ${
    mib(s.external)
  } | sessions ${s.sessionsOnline}+${s.sessionsOffline} conns ${s.connections} subs ${s.subscriptions} retained ${s.retained} queued ${s.queued} (${
    mib(s.queuedBytes)
  } MiB) unwritten ${s.unwritten} lag ${s.lagMs.toFixed(0)} ms | ${extra}`;
}

/** The samples as a Markdown table. */
export function sampleTable(samples: readonly SoakSample[]): string {
  const head = [
    "t (s)",
    "RSS MiB",
    "heap used MiB",
    "heap total MiB",
    "external MiB",
    "sessions on+off",
    "connections",
    "subs",
    "retained",
    "queued (MiB)",
    "expired",
    "wills",
    "connects",
    "dropped",
    "lag ms",
  ];
  const rows = samples.map((s) => [
    String(Math.round(s.t)),
    mib(s.rss),
    mib(s.heapUsed),
    mib(s.heapTotal),
    mib(s.external),
    `${s.sessionsOnline}+${s.sessionsOffline}`,
    String(s.connections),
    String(s.subscriptions),
    String(s.retained),
    `${s.queued} (${mib(s.queuedBytes)})`,
    String(s.expired),
    String(s.wills),
    String(s.connects),
    String(s.dropped),
    s.lagMs.toFixed(0),
  ]);
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [line(head), line(head.map(() => "---")), ...rows.map(line)].join("\n");
}

/**
 * The samples just after each major GC: where heap used fell by more than a third since the
 * previous sample (the lower of that sample and the next). With the shipped
 * `--initial-old-space-size=64` the heap piles up garbage for minutes before its first major GC,
 * so a straight line through every sample measures where the run stopped in that saw-tooth; the
 * troughs are what the broker keeps.
 */
export function troughs(samples: readonly SoakSample[]): SoakSample[] {
  const out: SoakSample[] = [];
  for (let i = 1; i < samples.length; i++) {
    if (samples[i].heapUsed >= samples[i - 1].heapUsed * (2 / 3)) continue;
    const next = samples[i + 1];
    out.push(next !== undefined && next.rss < samples[i].rss ? next : samples[i]);
  }
  return out;
}
