// The harness end to end against a real Mosquitto: worker processes, flow control, counting,
// latency and idle connections. Short windows only; this checks the harness, not the broker.

import assert from "node:assert/strict";
import { BENCH_LIMITS, BROKERS, mosquittoConfig, type RunningBroker } from "./brokers.ts";
import { fanOut, latencyPairs, pairs, slowConsumer } from "./layouts.ts";
import {
  measureConnections,
  measureLoad,
  measureSlowConsumer,
  type RunContext,
} from "./measure.ts";
import { type BenchOptions, parseOptions } from "./options.ts";
import { markdown } from "./report.ts";
import { clusterReport } from "./cluster_report.ts";
import {
  BASELINES,
  durabilityVariants,
  mcloudttStorageFlags,
  measureFixedCount,
  measureOfflineDrain,
  MOSQUITTO_AUTOSAVE,
  mosquittoPersistentConfig,
  persistentPairs,
  type Storage,
} from "./durability.ts";
import { durabilitySection } from "./durability_report.ts";
import { levelName, runAll, type RunResult } from "./runner.ts";
import type { ProtocolLevel } from "./wire.ts";
import { sharedBenchPki, TEST_MACHINE, withMosquitto as withBenchMosquitto } from "./fixtures.ts";

const missing = await BROKERS.mosquitto.unavailable();
if (missing !== null) {
  if (Deno.env.get("CI")) throw new Error(`CI is set but Mosquitto is missing: ${missing}`);
  console.warn(`\n!!! SKIPPING the bench harness tests: ${missing} !!!\n`);
}

const options: BenchOptions = {
  ...parseOptions(["--quick", "--workers", "1"])!,
  durationS: 0.5,
  warmupS: 0.2,
  pacedWarmupS: 0.2,
  drainS: 3,
};

const tls = sharedBenchPki;

/** The fixture with the TLS switch last, as these tests write it. */
const withMosquitto = (fn: (broker: RunningBroker) => Promise<void>, overTls = false) =>
  withBenchMosquitto(overTls, fn);

const ctx = (broker: RunningBroker, level: ProtocolLevel): RunContext => ({
  broker,
  level,
  options,
});

function test(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: missing !== null, fn });
}

for (const level of [5, 4] as const) {
  for (const qos of [1, 2] as const) {
    test(`MQTT ${levelName(level)}: QoS ${qos} pairs deliver every message exactly once`, () =>
      withMosquitto(async (broker) => {
        const { metrics, errors } = await measureLoad(ctx(broker, level), pairs(4, qos, 1));
        assert.deepEqual(errors, []);
        assert.ok(metrics.sent > 100, `sent ${metrics.sent}`);
        assert.equal(metrics.received, metrics.sent);
        assert.equal(metrics.duplicates, 0);
        assert.equal(metrics.undelivered_pct, 0);
        assert.ok(metrics.delivered_per_s > 0);
        assert.ok(metrics.broker_cpu_pct > 0, "broker CPU is read from /proc");
        assert.ok(metrics.broker_rss_mb > 0);
        assert.ok(metrics.gen_cpu_pct > 0, "workers report their CPU");
      }));
  }
}

test("fan-out multiplies deliveries by the number of subscribers", () =>
  withMosquitto(async (broker) => {
    const { metrics } = await measureLoad(ctx(broker, 5), fanOut(4, 1));
    assert.ok(metrics.sent > 0);
    assert.ok(
      metrics.received > metrics.sent,
      `${metrics.received} deliveries of ${metrics.sent} messages`,
    );
    assert.ok(metrics.received <= metrics.sent * 4);
  }));

test("latency run paces the publishers and reports ordered percentiles", () =>
  withMosquitto(async (broker) => {
    const { metrics } = await measureLoad(ctx(broker, 5), latencyPairs(4, 2_000));
    // 2000 msg/s over a 0.5 s window: about 1000 samples.
    assert.ok(metrics.samples > 500 && metrics.samples < 1_500, `samples ${metrics.samples}`);
    assert.ok(metrics.published_per_s > 1_000 && metrics.published_per_s < 3_000);
    assert.ok(metrics.p50_us > 0);
    assert.ok(metrics.p50_us <= metrics.p99_us && metrics.p99_us <= metrics.p999_us);
    assert.ok(metrics.p999_us <= metrics.max_us);
  }));

test("over TLS, QoS 1 pairs deliver every message exactly once", () =>
  withMosquitto(async (broker) => {
    assert.ok(broker.tls?.ca.includes("BEGIN CERTIFICATE"), "clients get the CA to trust");
    const { metrics, errors } = await measureLoad(ctx(broker, 5), pairs(2, 1, 1));
    assert.deepEqual(errors, []);
    assert.ok(metrics.sent > 100, `sent ${metrics.sent}`);
    assert.equal(metrics.received, metrics.sent);
    assert.equal(metrics.duplicates, 0);
  }, true));

test("a QoS 1 latency run over TLS paces, acknowledges and reports broker CPU per message", () =>
  withMosquitto(async (broker) => {
    const { metrics, errors } = await measureLoad(ctx(broker, 4), latencyPairs(4, 2_000, 1));
    assert.deepEqual(errors, []);
    assert.ok(metrics.samples > 500 && metrics.samples < 1_500, `samples ${metrics.samples}`);
    assert.equal(metrics.duplicates, 0);
    assert.equal(metrics.undelivered_pct, 0);
    assert.ok(metrics.p50_us <= metrics.p99_us && metrics.p99_us <= metrics.p999_us);
    assert.ok(Number.isFinite(metrics.broker_cpu_us_per_msg));
  }, true));

test("idle TLS connections from several source addresses are all held open", () =>
  withMosquitto(async (broker) => {
    const { metrics, errors } = await measureConnections(ctx(broker, 5), 100);
    assert.deepEqual(errors, []);
    assert.equal(metrics.connected, 100);
    assert.equal(metrics.still_open, 100);
    // A TLS connection costs the broker a session; the RSS difference must see it.
    assert.ok(metrics.kb_per_conn > 0, `KiB per connection ${metrics.kb_per_conn}`);
    assert.ok(metrics.gen_cpu_pct > 0, "the generator's CPU while connecting is reported");
  }, true));

test("idle connections from several source addresses are all held open", () =>
  withMosquitto(async (broker) => {
    const { metrics, errors } = await measureConnections(ctx(broker, 4), 300);
    assert.deepEqual(errors, []);
    assert.equal(metrics.connected, 300);
    assert.equal(metrics.failed, 0);
    assert.equal(metrics.still_open, 300);
    assert.ok(metrics.connack_per_s > 0);
    assert.ok(Number.isFinite(metrics.kb_per_conn));
    // The second wave: every client reconnects to the same broker.
    assert.equal(metrics.reconnected, 300);
    assert.equal(metrics.reconnect_failed, 0);
    assert.ok(metrics.reconnect_connack_per_s > 0);
    assert.ok(Number.isFinite(metrics.reconnect_broker_cpu_us_per_conn));
  }));

test("the slow consumer gets some messages while the pairs keep running", () =>
  withMosquitto(async (broker) => {
    const { metrics, rssSeries } = await measureSlowConsumer(
      ctx(broker, 5),
      pairs(2, 1, 1),
      slowConsumer(1),
    );
    assert.ok(metrics.baseline_per_s > 0 && metrics.with_slow_per_s > 0);
    assert.ok(metrics.slow_received > 0, "the slow consumer reads");
    // ~20 KiB/s of ~90-byte packets for about a second: far fewer than the pairs deliver.
    assert.ok(metrics.slow_received < 2_000, `slow consumer got ${metrics.slow_received}`);
    assert.ok((rssSeries?.length ?? 0) >= 4, "broker RSS is sampled over time");
    assert.ok(metrics.rss_max_mb >= metrics.rss_at_attach_mb);
  }));

test("a run of one scenario ends in a report row with a ratio", async () => {
  const scenario = {
    name: "pairs-2-qos0",
    kind: "throughput" as const,
    description: "test",
    run: (c: RunContext) => measureLoad(c, pairs(2, 0, 1)),
  };
  const results = await runAll(
    [scenario],
    [{ broker: BROKERS.mosquitto, level: 4, transport: "tcp" }],
    options,
    BENCH_LIMITS,
    () => {},
  );
  assert.equal(results.length, 1);
  assert.equal(results[0].failed, undefined);
  const text = markdown({
    startedAt: new Date(),
    machine: TEST_MACHINE,
    options,
    limits: BENCH_LIMITS,
    skipped: { aedes: "not installed" },
    descriptions: { "pairs-2-qos0": "two pairs" },
    results,
  });
  assert.match(text, /\| pairs-2-qos0 \| tcp \| 3\.1\.1 \| mosquitto \| [\d,]+ \| 1\.00× \|/);
  assert.match(text, /\*\*Skipped aedes:\*\* not installed/);
});

const mcloudttMissing = await BROKERS.mcloudtt.unavailable();
if (mcloudttMissing !== null) {
  if (Deno.env.get("CI")) throw new Error(`CI is set but mcloudtt cannot run: ${mcloudttMissing}`);
  console.warn(`\n!!! SKIPPING the mcloudtt bench test: ${mcloudttMissing} !!!\n`);
}

Deno.test({
  name: "mcloudtt over TLS runs under the GC trace, which reports its collections",
  ignore: mcloudttMissing !== null,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "bench-test-" });
    const broker = await BROKERS.mcloudtt.start(BENCH_LIMITS, dir, {
      tls: await tls(),
      gcTrace: true,
    });
    try {
      const { metrics, errors } = await measureLoad(ctx(broker, 5), latencyPairs(2, 1_000, 1));
      assert.deepEqual(errors, []);
      assert.ok(metrics.received > 0 && metrics.received === metrics.sent);
      assert.ok(broker.gc !== undefined, "stdbuf is there, so the trace is on");
      // Loading the broker's modules alone takes a few scavenges.
      assert.ok(broker.gc.count() > 0, "collections are read from the broker's stdout");
      assert.ok(metrics.gc_events >= 0 && Number.isFinite(metrics.gc_ms_per_s));
    } finally {
      await broker.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

function result(broker: "mcloudtt" | "mosquitto", round: number, p99: number): RunResult {
  return {
    scenario: "latency-2k-qos1",
    kind: "latency",
    broker,
    level: 5,
    transport: "tls",
    round,
    metrics: { p99_us: p99, p999_us: p99 * 2, broker_cpu_us_per_msg: 10 },
    errors: [],
  };
}

Deno.test("the report gives each median its spread and each ratio its per-round range", () => {
  const results = [
    result("mcloudtt", 1, 90),
    result("mosquitto", 1, 100),
    result("mcloudtt", 2, 110),
    result("mosquitto", 2, 100),
    result("mcloudtt", 3, 100),
    result("mosquitto", 3, 100),
  ];
  const text = markdown({
    startedAt: new Date(),
    machine: TEST_MACHINE,
    options: { ...options, rounds: 3 },
    limits: BENCH_LIMITS,
    skipped: {},
    descriptions: {},
    results,
  });
  // Median p99 100 µs over 90..110: ±10 %; per-round ratios 0.9, 1.1, 1.0.
  const row = text.split("\n").find((l) => l.startsWith("| latency-2k-qos1 | tls | 5 | mcloudtt"));
  assert.ok(row, text);
  assert.match(row, /\| 100 ±10 % \|/);
  assert.match(row, /\| 1\.00× \(0\.90–1\.10\) \|/);
});

Deno.test("the Mosquitto config has a TLS listener with the bench certificate when asked", () => {
  const pkiFiles = { dir: "/p", caFile: "/p/ca.crt", certFile: "/p/b.crt", keyFile: "/p/b.key" };
  const lines = mosquittoConfig(1234, BENCH_LIMITS, pkiFiles).split("\n");
  for (
    const line of ["cafile /p/ca.crt", "certfile /p/b.crt", "keyfile /p/b.key"]
  ) assert.ok(lines.includes(line), line);
  // The TLS keys belong to the listener, so they follow it.
  assert.ok(lines.indexOf("listener 1234 127.0.0.1") < lines.indexOf("cafile /p/ca.crt"));
  assert.ok(!mosquittoConfig(1234, BENCH_LIMITS).includes("certfile"));
});

Deno.test("the Mosquitto config carries the aligned limits", () => {
  const conf = mosquittoConfig(1234, BENCH_LIMITS);
  for (
    const line of [
      "listener 1234 127.0.0.1",
      "allow_anonymous true",
      "persistence false",
      "max_connections -1",
      `max_inflight_messages ${BENCH_LIMITS.max_inflight_messages}`,
      `max_queued_messages ${BENCH_LIMITS.max_queued_messages}`,
    ]
  ) assert.ok(conf.split("\n").includes(line), line);
});

// Persistent-session scenarios (durability.ts): storage variants, offline sessions, report.

async function withVariant(
  label: string,
  fn: (broker: RunningBroker, dir: string) => Promise<void>,
): Promise<string> {
  const variant = durabilityVariants().find((v) => v.label === label);
  assert.ok(variant, label);
  const dir = await Deno.makeTempDir({ prefix: "bench-test-" });
  try {
    const broker = await variant.kind.start(BENCH_LIMITS, dir);
    try {
      await fn(broker, dir);
    } finally {
      await broker.stop();
    }
    // What the broker left in its directory after a clean stop.
    const files: string[] = [];
    for await (const e of Deno.readDir(dir)) {
      if (!e.isDirectory) files.push(e.name);
      else {for await (const f of Deno.readDir(`${dir}/${e.name}`)) {
          files.push(`${e.name}/${f.name}`);
        }}
    }
    return files.sort().join(",");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

test("persistent pairs on Mosquitto with persistence deliver every message once", async () => {
  const files = await withVariant("mosquitto persistence", async (broker) => {
    const { metrics, errors } = await measureLoad(ctx(broker, 5), persistentPairs(2, 1));
    assert.deepEqual(errors, []);
    assert.ok(metrics.sent > 100, `sent ${metrics.sent}`);
    assert.equal(metrics.received, metrics.sent);
    assert.equal(metrics.duplicates, 0);
  });
  // Persistence on, into the run's directory: Mosquitto saves its database there at shutdown.
  assert.match(files, /mosquitto-data\/mosquitto\.db/);
});

for (const level of [5, 4] as const) {
  test(`MQTT ${levelName(level)}: offline persistent sessions keep what was published, drained on reconnect`, () =>
    withVariant("mosquitto memory", async (broker) => {
      const layout = { ...persistentPairs(2, 1), messagesPerPublisher: 300 };
      const { metrics, errors } = await measureOfflineDrain(ctx(broker, level), layout);
      assert.deepEqual(errors, []);
      // Clean sessions would lose everything published while the subscribers were away.
      assert.equal(metrics.sent, 600);
      assert.equal(metrics.received, 600);
      assert.equal(metrics.undelivered_pct, 0);
      assert.ok(metrics.enqueue_per_s > 0 && metrics.drain_per_s > 0);
      assert.ok(metrics.drain_s > 0);
    }).then(() => {}));
}

test("a fixed count end to end is timed to the last PUBACK and to the last delivery", () =>
  withVariant("mosquitto memory", async (broker) => {
    const layout = { ...persistentPairs(2, 1), messagesPerPublisher: 300 };
    const { metrics, errors } = await measureFixedCount(ctx(broker, 5), layout);
    assert.deepEqual(errors, []);
    assert.equal(metrics.sent, 600);
    assert.equal(metrics.received, 600);
    assert.equal(metrics.undelivered_pct, 0);
    // Delivery ends after the last PUBACK, so it is timed over at least as long.
    assert.ok(metrics.published_per_s >= metrics.delivered_per_s, JSON.stringify(metrics));
    assert.ok(metrics.delivered_per_s > 0 && metrics.backlog_s >= 0);
  }).then(() => {}));

Deno.test("storage variants: mcloudtt flags and Mosquitto's persistence lines", () => {
  assert.deepEqual(mcloudttStorageFlags("memory", "/w"), ["--storage.enabled=false"]);
  assert.deepEqual(mcloudttStorageFlags("async", "/w"), [
    "--storage.enabled=true",
    "--storage.dir=/w/data",
    "--storage.sync=async",
  ]);
  const conf = mosquittoPersistentConfig(1234, BENCH_LIMITS, "/w").split("\n");
  for (const line of ["persistence true", "persistence_location /w/", ...MOSQUITTO_AUTOSAVE]) {
    assert.ok(conf.includes(line), line);
  }
  assert.ok(!conf.includes("persistence false"));
  assert.deepEqual(
    durabilityVariants().map((v) => v.label),
    [
      "mcloudtt ack-after-write",
      "mcloudtt async",
      BASELINES.memory,
      BASELINES.mosquitto,
      "mosquitto memory",
    ],
  );
});

Deno.test("the persistent-session section gives ratios to mcloudtt in memory and Mosquitto", () => {
  const run = (variant: string, scenario: string, metrics: Record<string, number>) => ({
    scenario,
    kind: "throughput" as const,
    broker: variant.split(" ")[0] as "mcloudtt" | "mosquitto",
    level: 5 as const,
    round: 1,
    metrics,
    errors: [],
    transport: "tcp" as const,
    variant,
    storage: variant.split(" ")[1] as Storage,
  });
  const text = durabilitySection({
    results: [
      run("mcloudtt ack-after-write", "persistent-qos1", { delivered_per_s: 5_000 }),
      run(BASELINES.memory, "persistent-qos1", { delivered_per_s: 20_000 }),
      run(BASELINES.mosquitto, "persistent-qos1", { delivered_per_s: 10_000 }),
      run("mcloudtt ack-after-write", "persistent-qos1-offline", {
        enqueue_per_s: 1_000,
        drain_per_s: 3_000,
      }),
      run(BASELINES.memory, "persistent-qos1-offline", {
        enqueue_per_s: 4_000,
        drain_per_s: 6_000,
      }),
    ],
    storageNote: "here",
  });
  // The report's label columns, then the storage setting.
  assert.match(
    text,
    /^\| scenario \| transport \| MQTT \| broker \| storage \| delivered msg\/s \|/m,
  );
  assert.match(
    text,
    /\| persistent-qos1 \| tcp \| 5 \| mcloudtt \| ack-after-write \| 5,000 \| 0\.25× \| 0\.50× \|/,
  );
  assert.match(text, /\| persistent-qos1 \| tcp \| 5 \| mosquitto \| persistence \| 10,000 \|/);
  assert.match(
    text,
    /\| persistent-qos1-offline \| tcp \| 5 \| mcloudtt \| ack-after-write \| 1,000 \| 0\.25× \| – \|/,
  );
  assert.match(text, /\| 3,000 \| 0\.50× \| – \|/);
  assert.match(text, /periodically/);
  assert.match(text, /Plain TCP only/);
});

Deno.test("the cluster report compares redis.durability sync with async", () => {
  const run = (nodes: number, durability: "sync" | "async" | undefined, rate: number) => ({
    scenario: durability ? "cluster-persistent-qos1" : "cluster-fan-out-16",
    nodes,
    durability,
    round: 1,
    metrics: { delivered_per_s: rate, redis_cmds_per_forwarded_msg: 0.5, redis_cmds_per_msg: 2 },
  });
  const text = clusterReport([
    run(1, undefined, 100),
    run(2, undefined, 50),
    run(1, "sync", 1_000),
    run(2, "sync", 500),
    run(1, "async", 2_000),
    run(2, "async", 2_000),
  ]);
  assert.match(text, /\| cluster-fan-out-16 \| 100 \| 50 \| 0\.50 \| 0\.500 \|/);
  assert.match(
    text,
    /\| cluster-persistent-qos1 \| sync \| 1000 \| 500 \| 0\.50 \| – \| 0\.50 \| 0\.25 \|/,
  );
  assert.match(
    text,
    /\| cluster-persistent-qos1 \| async \| 2000 \| 2000 \| 1\.00 \| – \| 1\.00 \| 1\.00 \|/,
  );
});

Deno.test("mcloudtt ack-after-write: offline sessions drain, and the store is in the run's directory", async () => {
  const files = await withVariant("mcloudtt ack-after-write", async (broker) => {
    const layout = { ...persistentPairs(2, 1), messagesPerPublisher: 200 };
    const { metrics, errors } = await measureOfflineDrain(ctx(broker, 5), layout);
    assert.deepEqual(errors, []);
    assert.equal(metrics.received, 400);
    assert.equal(metrics.undelivered_pct, 0);
  });
  assert.match(files, /data\/mcloudtt\.db/);
});
