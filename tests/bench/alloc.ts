/**
 * Allocation per delivered message and GC pauses of mcloudtt under a paced
 * load (issue 14): bytes, not time, so it can be trusted on a busy machine.
 *
 *   deno run -A tests/bench/alloc.ts                       # QoS 0/1 x MQTT 5/3.1.1, in memory
 *   deno run -A tests/bench/alloc.ts --storage both        # ... and with [storage] enabled
 *   deno run -A tests/bench/alloc.ts --profile --qos 1 --versions 5   # top allocation sites
 *   deno run -A tests/bench/alloc.ts --v8 --max-semi-space-size=8     # a V8 flag under test
 *
 * Each scenario starts a fresh broker (`main.ts`) with `--v8-flags=--trace-gc-nvp`, drives
 * 16 publisher/subscriber pairs at 2 000 msg/s in total (paced.ts), warms up, then takes
 * the collections of the measurement window: bytes allocated on the V8 heap between its
 * first and last collection, divided by the messages delivered between the same two
 * moments, and the pause of every collection by kind. Pause durations are times: on a
 * loaded machine read their counts and sizes, and their durations only as an upper bound.
 * With `--profile` the broker also runs with `--inspect` and V8's sampling heap profiler
 * lists where the window's bytes were allocated (including objects already collected).
 * With `--cpu` V8's sampling CPU profiler lists where the window's time went, by function
 * (self time, as shares of the samples: proportions that hold on a busy machine).
 */
import { parseArgs } from "node:util";
import { BENCH_LIMITS, freePort, mcloudttFlags } from "./brokers.ts";
import { type GcSummary, summarize } from "./gc_trace.ts";
import { CpuSampler, type CpuSite } from "./cpu_profile.ts";
import { type AllocationSite, HeapSampler } from "./heap_profile.ts";
import { PacedLoad } from "./paced.ts";
import { rssBytes } from "./procstat.ts";
import { median } from "./stats.ts";
import { HOST, startTraced } from "./traced.ts";
import type { ProtocolLevel } from "./wire.ts";

const REPO_ROOT = new URL("../../", import.meta.url).pathname;

/** One measured scenario. */
export interface AllocResult {
  qos: 0 | 1;
  version: ProtocolLevel;
  storage: boolean;
  v8: string;
  delivered: number;
  gc: GcSummary | null;
  rssBytes: number;
  errors: string[];
  profile?: { total: number; perMessage: number; sites: AllocationSite[] };
  cpu?: { total: number; sites: CpuSite[] };
}

interface Options {
  qos: (0 | 1)[];
  versions: ProtocolLevel[];
  storage: boolean[];
  rate: number;
  pairs: number;
  payload: number;
  warmup: number;
  duration: number;
  v8: string[];
  profile: boolean;
  cpu: boolean;
  top: number;
  rounds: number;
  json?: string;
}

function options(): Options {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      qos: { type: "string", default: "0,1" },
      versions: { type: "string", default: "5,4" },
      storage: { type: "string", default: "off" },
      rate: { type: "string", default: "2000" },
      pairs: { type: "string", default: "16" },
      payload: { type: "string", default: "64" },
      warmup: { type: "string", default: "5" },
      duration: { type: "string", default: "20" },
      v8: { type: "string", multiple: true, default: [] },
      profile: { type: "boolean", default: false },
      cpu: { type: "boolean", default: false },
      top: { type: "string", default: "25" },
      rounds: { type: "string", default: "1" },
      json: { type: "string" },
      quick: { type: "boolean", default: false },
    },
  });
  const list = (s: string) => s.split(",").map((x) => Number(x.trim()));
  // "3.1.1" is protocol level 4 (what the bench's --levels takes); anything else is refused.
  const versions = values.versions.split(",").map((x) => x.trim() === "3.1.1" ? 4 : Number(x));
  const bad = versions.find((v) => v !== 4 && v !== 5);
  if (bad !== undefined) throw new Error(`--versions takes 5, 4 or 3.1.1, not ${bad}`);
  return {
    qos: list(values.qos) as (0 | 1)[],
    versions: versions as ProtocolLevel[],
    storage: values.storage === "both" ? [false, true] : [values.storage === "on"],
    rate: Number(values.rate),
    pairs: Number(values.pairs),
    payload: Number(values.payload),
    // --quick checks the script, not the broker: too short a window for many collections.
    warmup: values.quick ? 1 : Number(values.warmup),
    duration: values.quick ? 4 : Number(values.duration),
    v8: values.v8,
    profile: values.profile,
    cpu: values.cpu,
    top: Number(values.top),
    rounds: Number(values.rounds),
    json: values.json,
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** main.ts's flags for a broker like the bench's (tests/bench/brokers.ts), on `port`. */
export function brokerArgs(port: number, dataDir: string | null): string[] {
  const storage = dataDir === null ? [] : ["--storage.enabled=true", `--storage.dir=${dataDir}`];
  return mcloudttFlags(port, BENCH_LIMITS, storage);
}

/** Runs one scenario on a fresh broker. */
export async function measure(
  o: Options,
  qos: 0 | 1,
  version: ProtocolLevel,
  storage: boolean,
): Promise<AllocResult> {
  const port = freePort();
  const inspectPort = o.profile || o.cpu ? freePort() : 0;
  const dataDir = storage ? await Deno.makeTempDir({ prefix: "mcloudtt-alloc-" }) : "";
  let load: PacedLoad | null = null;
  const delivered = () => load?.counts().received ?? 0;
  const broker = await startTraced(brokerArgs(port, storage ? dataDir : null), {
    cwd: REPO_ROOT,
    port,
    v8: o.v8,
    denoFlags: inspectPort !== 0 ? [`--inspect=${HOST}:${inspectPort}`] : [],
    mark: delivered,
  });
  const gc = broker.gc;
  try {
    load = await PacedLoad.open({
      host: HOST,
      port,
      version,
      qos,
      pairs: o.pairs,
      rate: o.rate,
      payloadBytes: o.payload,
      persistent: storage,
      idPrefix: "alloc",
    });
    load.go();
    await sleep(o.warmup * 1000);
    const from = gc.events.length;
    const sampler = o.profile ? await HeapSampler.start(HOST, inspectPort) : null;
    const cpuSampler = o.cpu ? await CpuSampler.start(HOST, inspectPort) : null;
    const before = delivered();
    await sleep(o.duration * 1000);
    const after = delivered();
    const profile = sampler === null ? undefined : await sampler.stop(`file://${REPO_ROOT}`);
    const cpu = cpuSampler === null ? undefined : await cpuSampler.stop(`file://${REPO_ROOT}`);
    const window = gc.since(from);
    const rss = await rssBytes(broker.child.pid);
    const counts = load.counts();
    return {
      qos,
      version,
      storage,
      v8: o.v8.join(" "),
      delivered: after - before,
      gc: summarize(window),
      rssBytes: rss,
      errors: [...counts.errors, ...(counts.sent > 0 ? [] : ["nothing was sent"])],
      profile: profile === undefined ? undefined : {
        total: profile.total,
        perMessage: profile.total / Math.max(1, after - before),
        sites: profile.sites.slice(0, o.top),
      },
      cpu: cpu === undefined ? undefined : { total: cpu.total, sites: cpu.sites.slice(0, o.top) },
    };
  } catch (e) {
    throw new Error(`${e instanceof Error ? e.message : e}\n${broker.tail()}`);
  } finally {
    await load?.close().catch(() => {});
    await broker.stop();
    if (dataDir !== "") await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
}

const f1 = (n: number) => (Number.isFinite(n) ? n.toFixed(1) : "n/a");
const kb = (n: number) => (Number.isFinite(n) ? (n / 1024).toFixed(0) : "n/a");
const f2 = (n: number) => (Number.isFinite(n) ? n.toFixed(2) : "n/a");

/** The result as a Markdown table row (see `HEADER`). */
export function row(r: AllocResult): string {
  const g = r.gc;
  const s = g?.byKind["s"];
  const other = g === null
    ? ""
    : Object.entries(g.byKind).filter(([k]) => k !== "s").map(([k, p]) =>
      `${k}: ${p.count} (max ${f2(p.max)} ms)`
    ).join(", ");
  const per10k = (n: number) => (g === null || g.messages === 0 ? NaN : (n * 10_000) / g.messages);
  return `| QoS ${r.qos} | ${r.version === 5 ? "5" : "3.1.1"} | ${r.storage ? "on" : "off"} | ${
    r.v8 || "-"
  } | ${r.delivered} | ${g === null ? "n/a" : Math.round(g.bytesPerMessage)} | ${
    s === undefined ? 0 : s.count
  } | ${f1(per10k(s?.count ?? 0))} | ${s === undefined ? "-" : `${f2(s.p50)} / ${f2(s.max)}`} | ${
    other || "-"
  } | ${g === null ? "-" : kb(g.copiedPerScavenge)} | ${
    g === null ? "-" : kb(g.promotedPer10k)
  } | ${g === null ? "-" : (g.semiSpace / 1048576).toFixed(0)} | ${
    (r.rssBytes / 1048576).toFixed(1)
  } |`;
}

export const HEADER = "| load | MQTT | storage | V8 flags | delivered | B/msg | scavenges | " +
  "per 10k msg | scavenge p50 / max ms | other GCs | KiB copied per scavenge | " +
  "KiB promoted per 10k msg | semi-space MiB | RSS MiB |\n" +
  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

if (import.meta.main) {
  const o = options();
  console.log(
    `paced ${o.rate} msg/s over ${o.pairs} pairs, ${o.payload} B payload, ` +
      `${o.warmup} s warm-up, ${o.duration} s window`,
  );
  console.log(HEADER);
  const results: AllocResult[] = [];
  // Rounds interleave the scenarios, so a change in the machine's load touches them alike.
  for (let round = 0; round < o.rounds; round++) {
    for (const storage of o.storage) {
      for (const qos of o.qos) {
        for (const version of o.versions) {
          const r = await measure(o, qos, version, storage);
          results.push(r);
          console.log(row(r));
          if (r.gc !== null) {
            console.log(
              `  collections: ${
                Object.entries(r.gc.reasons).map(([k, n]) => `${n} x ${k}`).join(", ")
              }`,
            );
          }
          if (r.errors.length > 0) console.log(`  errors: ${r.errors.slice(0, 3).join("; ")}`);
          if (r.profile !== undefined) {
            console.log(
              `\n  sampled ${(r.profile.total / 1e6).toFixed(1)} MB = ` +
                `${Math.round(r.profile.perMessage)} B/msg; top sites:`,
            );
            for (const s of r.profile.sites) {
              console.log(
                `  ${
                  (r.profile.total === 0 ? 0 : (100 * s.bytes) / r.profile.total).toFixed(1)
                    .padStart(5)
                }%  ${
                  Math.round(s.bytes / Math.max(1, r.delivered)).toString()
                    .padStart(5)
                } B/msg  ${s.frame}  <-  ${s.callers.join("  <-  ")}`,
              );
            }
            console.log();
          }
          if (r.cpu !== undefined) {
            console.log(`\n  ${r.cpu.total} CPU samples; top functions by self time:`);
            for (const s of r.cpu.sites) {
              console.log(
                `  ${
                  (r.cpu.total === 0 ? 0 : (100 * s.samples) / r.cpu.total).toFixed(1).padStart(5)
                }%  ${s.frame}  <-  ${s.caller}`,
              );
            }
            console.log();
          }
        }
      }
    }
  }
  if (o.rounds > 1) {
    console.log("\nmedian bytes per message over the rounds:");
    const groups = new Map<string, number[]>();
    for (const r of results) {
      const key = `QoS ${r.qos}, MQTT ${r.version === 5 ? "5" : "3.1.1"}, storage ${
        r.storage ? "on" : "off"
      }`;
      const list = groups.get(key) ?? [];
      if (r.gc !== null) list.push(r.gc.bytesPerMessage);
      groups.set(key, list);
    }
    for (const [key, list] of groups) {
      console.log(
        `  ${key}: ${Math.round(median(list))} B/msg (${list.map(Math.round).join(", ")})`,
      );
    }
  }
  if (o.json !== undefined) await Deno.writeTextFile(o.json, JSON.stringify(results, null, 2));
}
