/**
 * `deno task bench`: mcloudtt against Mosquitto and Aedes on the same machine, same load.
 * See tests/bench/README.md for what is measured and how.
 */

import { BENCH_LIMITS, type BrokerName, BROKERS } from "./brokers.ts";
import { killAll } from "./children.ts";
import { clusterReport, runClusterBench } from "./cluster.ts";
import { type DurabilityReport, durabilityScenarios, runDurability } from "./durability.ts";
import { machineInfo } from "./machine.ts";
import { type BenchOptions, parseOptions, USAGE, UsageError } from "./options.ts";
import { defaultPinning, pinBench, PinError, pinning } from "./pin.ts";
import { buildProbe } from "./probe.ts";
import { markdown, writeReport } from "./report.ts";
import { levelName, runAll, type RunResult, takesPart, type Target } from "./runner.ts";
import { allScenarios, selectScenarios } from "./scenarios.ts";
import { removeBenchPki, removeBenchPkiSync } from "./tls.ts";

const RESULTS_DIR = new URL("../../bench-results", import.meta.url).pathname;

function progress(r: RunResult): void {
  const m = r.metrics;
  const head = `[${r.scenario} round ${r.round}] ${r.broker} ${r.transport} MQTT ${
    levelName(r.level)
  }:`;
  if (r.failed) return console.log(`${head} FAILED ${r.failed.split("\n")[0]}`);
  // A window without a GC collection has no allocation figure (NaN): "–" as in the report.
  const n = (v: number | undefined, digits = 0) =>
    v === undefined || !Number.isFinite(v) ? "–" : v.toFixed(digits);
  const detail = {
    throughput: () => `${n(m.delivered_per_s)} msg/s, broker CPU ${n(m.broker_cpu_pct)} %`,
    latency: () =>
      `p50 ${n(m.p50_us)} µs, p99 ${n(m.p99_us)} µs, p99.9 ${n(m.p999_us)} µs, broker ${
        n(m.broker_cpu_us_per_msg, 1)
      } µs/msg`,
    connections: () =>
      `${n(m.connected)} connected, ${n(m.connack_per_s)} CONNACK/s, ${
        n(m.kb_per_conn, 1)
      } KiB/conn; reconnect ${n(m.reconnect_connack_per_s)} CONNACK/s, ${
        n(m.reconnect_broker_cpu_us_per_conn)
      } µs CPU/conn`,
    "slow-consumer": () =>
      `pairs ${n(m.baseline_per_s)} -> ${n(m.with_slow_per_s)} msg/s, RSS max ${
        n(m.rss_max_mb, 1)
      } MiB`,
  }[r.kind]();
  const gc = m.gc_events === undefined
    ? ""
    : `; GC: ${n(m.gc_alloc_bytes_per_msg)} B/msg, ${n(m.gc_events)} collections, max pause ${
      n(m.gc_pause_max_ms, 1)
    } ms`;
  const errors = r.errors.length > 0 ? ` (client errors: ${r.errors[0]})` : "";
  console.log(`${head} ${detail}${gc}${errors}`);
}

/**
 * `options` with the latency client settled: the C probe when it builds (or when no latency
 * scenario runs), else the Deno workers, said loudly; null when `--latency-client probe` was
 * asked for and the probe cannot be built.
 */
async function settleLatencyClient(options: BenchOptions): Promise<BenchOptions | null> {
  if (options.latencyClient !== "probe") return options;
  const scenarios = selectScenarios(allScenarios(options), options.only);
  if (!scenarios.some((s) => s.kind === "latency")) return options;
  const build = await buildProbe();
  if (build.ok) {
    console.log(`bench: latency client: the C probe (${build.compiler}, ${build.path})`);
    if (build.warnings) console.log(`!! the probe compiled with warnings:\n${build.warnings}`);
    return options;
  }
  if (options.latencyClientGiven) {
    console.error(`--latency-client probe: ${build.reason}`);
    return null;
  }
  console.log(
    `!! latency client: the Deno worker clients, NOT the C probe, which cannot be built: ${build.reason}`,
  );
  console.log(
    "!! the Deno clients' own event loop and GC put p50 at 300-600 µs for every broker; " +
      "install a C compiler and libssl-dev for the probe",
  );
  return { ...options, latencyClient: "deno", latencyClientNote: build.reason };
}

async function main(): Promise<number> {
  let options;
  try {
    options = parseOptions(Deno.args);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`${e.message}\n\n${USAGE}`);
    return 2;
  }
  if (options === null) {
    console.log(USAGE);
    return 0;
  }
  if (options.pin) {
    try {
      const p = defaultPinning(navigator.hardwareConcurrency);
      await pinBench(p);
      console.log(`bench: servers on CPU ${p.servers}, bench and workers on CPU ${p.clients}`);
    } catch (e) {
      if (!(e instanceof PinError)) throw e;
      console.error(e.message);
      return 2;
    }
  }
  if (options.cluster) {
    const runs = await runClusterBench(options);
    console.log(`\n${clusterReport(runs)}`);
    return runs.some((r) => r.failed) ? 1 : 0;
  }
  // The cluster scenarios have no latency runs; the latency client matters from here on.
  const settled = await settleLatencyClient(options);
  if (settled === null) return 2;
  options = settled;
  const startedAt = new Date();
  const skipped: Record<string, string> = {};
  const targets: Target[] = [];
  for (const name of options.brokers as BrokerName[]) {
    const kind = BROKERS[name];
    const reason = await kind.unavailable();
    if (reason) {
      skipped[name] = reason;
      console.log(`!! skipping ${name}: ${reason}`);
      continue;
    }
    const chosen = kind.levels.filter((level) => options.levels.includes(level));
    // Aedes speaks only 3.1.1: with --levels 5 it still runs, at the level it has.
    const levels = chosen.length > 0 ? chosen : kind.levels.slice(0, 1);
    for (const transport of options.transports) {
      for (const level of levels) targets.push({ broker: kind, level, transport });
    }
  }
  if (targets.length === 0) {
    console.error("no broker can run; nothing to measure");
    return 1;
  }
  const scenarios = selectScenarios(allScenarios(options), options.only);
  // The floor speaks no MQTT: only the C probe (--raw) can drive its latency runs.
  const latency = scenarios.some((s) => s.kind === "latency");
  for (const kind of new Set(targets.map((t) => t.broker))) {
    const servesLatency = kind.kinds === undefined || kind.kinds.includes("latency");
    if (latency && kind.raw === true && servesLatency && !takesPart(kind, "latency", options)) {
      const reason = "the latency client is the Deno worker clients, which speak MQTT; the " +
        `${kind.name} only forwards bytes and needs the C probe's --raw mode`;
      skipped[`${kind.name} latency runs`] = reason;
      console.log(`!! ${kind.name}: no latency runs: ${reason}`);
    }
  }
  // Persistent-session scenarios run on storage variants of each broker (durability.ts).
  const durable = selectScenarios(durabilityScenarios(options), options.only);
  if (scenarios.length === 0 && durable.length === 0) {
    console.error(`no scenario matches --only ${options.only.join(",")}`);
    return 2;
  }
  const machine = await machineInfo();
  const persistent = durable.length > 0
    ? `${durable.length} persistent-session scenario(s) (plain TCP only), `
    : "";
  console.log(
    `bench: ${scenarios.length} scenario(s) x ${targets.length} broker/level/transport(s) x ${options.rounds} round(s), ` +
      `${persistent}${options.durationS} s windows`,
  );
  let results: RunResult[];
  let durability: DurabilityReport | undefined;
  try {
    results = await runAll(scenarios, targets, options, BENCH_LIMITS, progress);
    const available = [...new Set(targets.map((t) => t.broker.name))];
    durability = durable.length > 0
      ? await runDurability(durable, available, options, BENCH_LIMITS)
      : undefined;
  } finally {
    await removeBenchPki();
  }
  const input = {
    startedAt,
    machine,
    pinning: pinning(),
    options,
    limits: BENCH_LIMITS,
    skipped,
    descriptions: Object.fromEntries(
      [...scenarios, ...durable].map((s) => [s.name, s.description]),
    ),
    results,
    durability,
  };
  const text = markdown(input);
  console.log(`\n${text}`);
  const files = await writeReport(RESULTS_DIR, input, text);
  console.log(`written: ${files.join(", ")}`);
  return [...results, ...durability?.results ?? []].some((r) => r.failed) ? 1 : 0;
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, () => {
    console.error(`\n${signal}: stopping brokers and workers`);
    killAll();
    removeBenchPkiSync();
    Deno.exit(130);
  });
}

Deno.exit(await main());
