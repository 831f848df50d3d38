// The runtime's floor as a `deno task bench` target (floor_target.ts): which scenarios it takes
// part in, the report's "vs floor" columns, and short real runs of its latency (C probe, --raw)
// and connections (CONNECT -> CONNACK) scenarios. Short windows: this checks the harness, not
// the runtime.

import assert from "node:assert/strict";
import { BENCH_LIMITS, BROKERS } from "./brokers.ts";
import { measureConnections } from "./measure.ts";
import { type BenchOptions, parseOptions } from "./options.ts";
import { buildProbe } from "./probe.ts";
import { floorLines, markdown, type ReportInput, summarize } from "./report.ts";
import { runAll, type RunResult, takesPart } from "./runner.ts";
import { allScenarios, type ScenarioKind } from "./scenarios.ts";
import { sharedBenchPki, TEST_MACHINE } from "./fixtures.ts";

const options: BenchOptions = {
  ...parseOptions(["--quick", "--workers", "1", "--brokers", "floor,mcloudtt"])!,
  durationS: 1,
  warmupS: 0.2,
  pacedWarmupS: 0.5,
  drainS: 2,
};

Deno.test("options: the floor is a target, and one of the defaults", () => {
  assert.deepEqual(parseOptions([])?.brokers, ["mcloudtt", "mosquitto", "aedes", "floor"]);
  assert.deepEqual(parseOptions(["--brokers", "floor"])?.brokers, ["floor"]);
  assert.deepEqual(options.brokers, ["floor", "mcloudtt"]);
});

Deno.test("the floor takes part in latency (with the C probe) and connections runs only", () => {
  const kinds: ScenarioKind[] = ["throughput", "latency", "connections", "slow-consumer"];
  const probe = { ...options, latencyClient: "probe" as const };
  const deno = { ...options, latencyClient: "deno" as const };
  assert.deepEqual(kinds.filter((k) => takesPart(BROKERS.floor, k, probe)), [
    "latency",
    "connections",
  ]);
  // The Deno worker clients speak MQTT; the floor only forwards the probe's --raw bytes.
  assert.deepEqual(kinds.filter((k) => takesPart(BROKERS.floor, k, deno)), ["connections"]);
  for (const name of ["mcloudtt", "mosquitto", "aedes"] as const) {
    assert.deepEqual(kinds.filter((k) => takesPart(BROKERS[name], k, deno)), kinds, name);
  }
  assert.deepEqual(BROKERS.floor.levels, [5, 4]);
});

function run(
  scenario: string,
  kind: ScenarioKind,
  broker: "mcloudtt" | "mosquitto" | "floor",
  round: number,
  metrics: Record<string, number>,
): RunResult {
  return { scenario, kind, broker, level: 5, transport: "tcp", round, metrics, errors: [] };
}

function input(results: RunResult[], rounds: number): ReportInput {
  return {
    startedAt: new Date(),
    machine: TEST_MACHINE,
    options: { ...options, rounds },
    limits: BENCH_LIMITS,
    skipped: {},
    descriptions: {},
    results,
  };
}

/** The cells of the row of `broker` in the table with column `header`, by header. */
function row(text: string, header: string, broker: string): Record<string, string> {
  const lines = text.split("\n");
  const at = lines.findIndex((l) => l.startsWith("| ") && l.includes(`| ${header} |`));
  assert.ok(at >= 0, `no table with "${header}":\n${text}`);
  const cells = (l: string) => l.slice(2, -2).split(" | ");
  const headers = cells(lines[at]);
  const body = lines.slice(at + 2).filter((l) => l.startsWith("| "));
  const mine = body.map(cells).find((c) => c[headers.indexOf("broker")] === broker);
  assert.ok(mine, `no ${broker} row under "${header}":\n${text}`);
  return Object.fromEntries(headers.map((h, i) => [h, mine[i]]));
}

Deno.test("the report divides latency and connection rows by the floor's, round by round", () => {
  const lat = (broker: "mcloudtt" | "mosquitto" | "floor", round: number, p99: number) =>
    run("latency-2k-qos0", "latency", broker, round, {
      p99_us: p99,
      p999_us: p99 * 2,
      broker_cpu_us_per_msg: p99 / 10,
    });
  const conn = (broker: "mcloudtt" | "mosquitto" | "floor", round: number, rate: number) =>
    run("connections-2000", "connections", broker, round, {
      connack_per_s: rate,
      kb_per_conn: rate / 1000,
    });
  const results = [
    lat("floor", 1, 50),
    lat("mcloudtt", 1, 200),
    lat("mosquitto", 1, 100),
    lat("floor", 2, 50),
    lat("mcloudtt", 2, 150),
    lat("mosquitto", 2, 100),
    conn("floor", 1, 10_000),
    conn("mcloudtt", 1, 5_000),
    conn("floor", 2, 10_000),
    conn("mcloudtt", 2, 4_000),
  ];
  const text = markdown(input(results, 2));
  // mcloudtt's p99: median 175 over the floor's 50; rounds 4.00 and 3.00.
  const mc = row(text, "p99 vs floor", "mcloudtt");
  assert.equal(mc["p99 vs floor"], "3.50× (3.00–4.00)");
  assert.equal(mc["CPU/msg vs floor"], "3.50× (3.00–4.00)");
  assert.equal(row(text, "p99 vs floor", "mosquitto")["p99 vs floor"], "2.00×");
  // The floor's own row: 1.00× to itself, and floor ÷ Mosquitto.
  const fl = row(text, "p99 vs floor", "floor");
  assert.equal(fl["p99 vs floor"], "1.00×");
  assert.equal(fl["p99 vs mosquitto"], "0.50×");
  const idle = row(text, "CONNACK/s vs floor", "mcloudtt");
  assert.equal(idle["CONNACK/s vs floor"], "0.45× (0.40–0.50)");
  assert.equal(idle["KiB/conn vs floor"], "0.45× (0.40–0.50)");
  assert.match(text, /^floor: a bare Deno forwarder \(`tests\/bench\/forwarder\.ts`: no MQTT/m);
  assert.match(text, /answers each CONNECT with a CONNACK/);
  // The JSON carries the same ratios.
  const json = summarize(results).find((r) => r.broker === "mcloudtt" && r.kind === "latency")!;
  assert.equal(json.vsFloor, 3.5);
  assert.deepEqual(json.compare.p99_us.floor, { value: 3.5, range: { min: 3, max: 4 } });
});

Deno.test("without floor rows the report has no floor columns or paragraph", () => {
  const results = [
    run("latency-2k-qos0", "latency", "mcloudtt", 1, { p99_us: 200 }),
    run("latency-2k-qos0", "latency", "mosquitto", 1, { p99_us: 100 }),
  ];
  const text = markdown(input(results, 1));
  assert.doesNotMatch(text, /vs floor|floor:/);
  assert.deepEqual(floorLines(input(results, 1)), []);
  const json = summarize(results)[0];
  assert.equal(json.vsFloor, undefined);
  assert.equal(json.compare.p99_us.floor, undefined);
});

const build = await buildProbe();
const mcloudttMissing = await BROKERS.mcloudtt.unavailable();
const why = !build.ok ? build.reason : mcloudttMissing;
if (why !== null) {
  if (Deno.env.get("CI")) throw new Error(`CI is set but the floor test cannot run: ${why}`);
  console.warn(`\n!!! SKIPPING the floor's latency run: ${why} !!!\n`);
}

Deno.test({
  name: "a latency run of the floor and mcloudtt ends in rows with a vs-floor ratio",
  ignore: why !== null,
  async fn() {
    const scenario = allScenarios(options).find((s) => s.name === "latency-2k-qos0")!;
    const targets = (["floor", "mcloudtt"] as const).map((name) => ({
      broker: BROKERS[name],
      level: 5 as const,
      transport: "tcp" as const,
    }));
    // A throughput scenario too: the floor takes no part in it (no run, no failure).
    const pairs = allScenarios(options).find((s) => s.name === "pairs-16-qos0")!;
    const skipped = { ...pairs, run: () => Promise.reject(new Error("must not run")) };
    const results = await runAll(
      [scenario, skipped],
      targets.slice(0, 1),
      options,
      BENCH_LIMITS,
      () => {},
    );
    assert.equal(results.length, 1, "the floor ran the latency scenario only");
    results.push(...await runAll([scenario], targets.slice(1), options, BENCH_LIMITS, () => {}));
    for (const r of results) assert.equal(r.failed, undefined, `${r.broker}: ${r.failed}`);
    const floor = results[0].metrics;
    assert.ok(floor.samples > 1_000, `floor samples ${floor.samples}`); // 1 s at 2 000 msg/s
    assert.equal(floor.undelivered_pct, 0);
    assert.ok(floor.p99_us > 0 && floor.broker_cpu_us_per_msg > 0, JSON.stringify(floor));
    const text = markdown(input(results, 1));
    const ratio = row(text, "p99 vs floor", "mcloudtt")["p99 vs floor"];
    assert.match(ratio, /^\d+\.\d\d×$/, text);
    assert.equal(row(text, "p99 vs floor", "floor")["p99 vs floor"], "1.00×");
  },
});

for (const transport of ["tcp", "tls"] as const) {
  Deno.test(`the floor holds idle connections over ${transport}, each CONNECT answered`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "bench-test-" });
    const broker = await BROKERS.floor.start(BENCH_LIMITS, dir, {
      tls: transport === "tls" ? await sharedBenchPki() : undefined,
      gcTrace: true,
      scenario: "connections",
    });
    try {
      for (const level of [5, 4] as const) {
        const { metrics, errors } = await measureConnections({ broker, level, options }, 200);
        assert.deepEqual(errors, []);
        assert.equal(metrics.connected, 200);
        assert.equal(metrics.still_open, 200);
        assert.equal(metrics.reconnected, 200);
        assert.ok(metrics.connack_per_s > 0 && Number.isFinite(metrics.kb_per_conn));
      }
      assert.ok(broker.gc !== undefined, "the floor runs under the GC trace when asked");
    } finally {
      await broker.stop();
      await Deno.remove(dir, { recursive: true });
    }
  });
}
