// Percentiles, medians, duplicate counting and command-line parsing.

import assert from "node:assert/strict";
import { parseOptions, UsageError } from "./options.ts";
import { DuplicateTracker, LatencyRecorder, median, percentile } from "./stats.ts";

Deno.test("nearest-rank percentiles of 1..1000", () => {
  const sorted = Array.from({ length: 1000 }, (_, i) => i + 1);
  assert.equal(percentile(sorted, 50), 500);
  assert.equal(percentile(sorted, 99), 990);
  assert.equal(percentile(sorted, 99.9), 999);
  assert.equal(percentile(sorted, 100), 1000);
  assert.ok(Number.isNaN(percentile([], 50)));
});

Deno.test("median ignores NaN and averages the middle pair", () => {
  assert.equal(median([3, NaN, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.ok(Number.isNaN(median([NaN])));
});

Deno.test("latency recorder summarizes and then forgets its samples", () => {
  const recorder = new LatencyRecorder();
  for (let i = 20_000; i >= 1; i--) recorder.add(i);
  const summary = recorder.takeSummary();
  assert.deepEqual(summary, { count: 20_000, p50: 10_000, p99: 19_800, p999: 19_980, max: 20_000 });
  assert.equal(recorder.takeSummary().count, 0);
});

Deno.test("duplicates are counted per publisher, also for sequences far apart", () => {
  const tracker = new DuplicateTracker();
  for (const [publisher, seq] of [[0, 1], [1, 1], [0, 2], [0, 1], [0, 5_000_000], [0, 5_000_000]]) {
    tracker.record(publisher, seq);
  }
  assert.equal(tracker.duplicates, 2);
});

Deno.test("options: defaults, --quick and explicit flags", () => {
  const defaults = parseOptions([]);
  assert.equal(defaults?.rounds, 3);
  assert.equal(defaults?.durationS, 5);
  assert.deepEqual(defaults?.brokers, ["mcloudtt", "mosquitto", "aedes", "floor"]);
  const quick = parseOptions(["--quick", "--brokers", "mosquitto", "--only=fan-in,latency"]);
  assert.equal(quick?.rounds, 1);
  assert.equal(quick?.durationS, 1);
  assert.deepEqual(quick?.brokers, ["mosquitto"]);
  assert.deepEqual(quick?.only, ["fan-in", "latency"]);
  assert.equal(parseOptions(["--quick", "--duration", "3"])?.durationS, 3);
  assert.equal(defaults?.pacedWarmupS, 15);
  assert.equal(quick?.pacedWarmupS, 0.5);
  assert.equal(parseOptions(["--paced-warmup=4"])?.pacedWarmupS, 4);
  assert.equal(parseOptions(["--help"]), null);
});

Deno.test("options: transports, MQTT levels and the GC trace", () => {
  const defaults = parseOptions([])!;
  assert.deepEqual(defaults.transports, ["tcp", "tls"]);
  assert.deepEqual(defaults.levels, [5, 4]);
  assert.equal(defaults.gcTrace, true);
  assert.deepEqual(parseOptions(["--quick"])?.levels, [5]);
  const chosen = parseOptions(["--transport", "tls", "--levels=3.1.1", "--no-gc-trace"])!;
  assert.deepEqual(chosen.transports, ["tls"]);
  assert.deepEqual(chosen.levels, [4]);
  assert.equal(chosen.gcTrace, false);
  assert.throws(() => parseOptions(["--transport", "quic"]), UsageError);
  assert.throws(() => parseOptions(["--levels", "3"]), UsageError);
});

Deno.test("options: unknown flags, brokers and bad numbers are usage errors", () => {
  assert.throws(() => parseOptions(["--durration", "3"]), UsageError);
  assert.throws(() => parseOptions(["--brokers", "emqx"]), UsageError);
  assert.throws(() => parseOptions(["--rounds", "1.5"]), UsageError);
  assert.throws(() => parseOptions(["--payload", "8"]), UsageError);
});
