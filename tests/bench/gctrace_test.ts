// Reading V8's --trace-gc-nvp lines and turning a window's collections into figures.

import assert from "node:assert/strict";
import { gcMetrics, GcTrace, parseGcLine } from "./gctrace.ts";

// Shapes as Deno 2.9.6 (V8 15) prints them, shortened to the fields that matter plus a few others.
const SCAVENGE = '[123:0x55d0:0]      107 ms: GC: {"pause":2.5,"mutator":400,"gc":"s",' +
  '"reason":"allocation failure","start_object_size":3498936,"allocated":4000000,' +
  '"incremental.steps_count":0}';
const MARK_COMPACT = '[123:0x55d0:0]     2360 ms: GC: {"pause":6,"mutator":100,"gc":"mc",' +
  '"allocated":1000000,"incremental":3.5,"incremental_longest_step":1.25,' +
  '"incremental_steps_count":4}';

Deno.test("a scavenge line and a mark-compact line parse; other lines do not", () => {
  assert.deepEqual(parseGcLine(SCAVENGE), {
    gc: "s",
    pauseMs: 2.5,
    mutatorMs: 400,
    allocatedBytes: 4_000_000,
    incrementalMs: 0,
    longestStepMs: 0,
  });
  assert.equal(parseGcLine(MARK_COMPACT)?.longestStepMs, 1.25);
  assert.equal(parseGcLine(MARK_COMPACT)?.incrementalMs, 3.5);
  assert.equal(parseGcLine("[123:0x55d0:0]  120 ms: Memory pool: Removed pages: 0"), undefined);
  assert.equal(parseGcLine("listening for MQTT over tcp on 127.0.0.1:1883"), undefined);
  assert.equal(parseGcLine('x GC: {"pause": broken'), undefined);
});

Deno.test("the trace collects lines split across chunks and counts them", () => {
  const trace = new GcTrace();
  const text = `hello\n${SCAVENGE}\n${MARK_COMPACT}\npartial`;
  const bytes = new TextEncoder().encode(text);
  for (let i = 0; i < bytes.length; i += 7) trace.push(bytes.subarray(i, i + 7));
  assert.equal(trace.count(), 2);
  assert.deepEqual(trace.events.map((e) => e.gc), ["s", "mc"]);
});

Deno.test("window figures: allocation per message, pause percentiles, GC time per second", () => {
  const events = [parseGcLine(SCAVENGE)!, parseGcLine(MARK_COMPACT)!];
  // 5 MB over 500 ms of mutator time = 10 MB/s; at 2000 msg/s that is 5000 B per message.
  const m = gcMetrics(events, 2, 2000);
  assert.equal(m.gc_events, 2);
  assert.equal(m.gc_scavenges, 1);
  assert.equal(m.gc_alloc_bytes_per_msg, 5000);
  assert.equal(m.gc_pause_p99_ms, 6);
  assert.equal(m.gc_pause_max_ms, 6);
  // (2.5 + 6 + 3.5 incremental) ms over 2 s.
  assert.equal(m.gc_ms_per_s, 6);
});

Deno.test("a window without collections has no allocation figure and no GC time", () => {
  const m = gcMetrics([], 1, 1000);
  assert.equal(m.gc_events, 0);
  assert.ok(Number.isNaN(m.gc_alloc_bytes_per_msg));
  assert.ok(Number.isNaN(m.gc_pause_max_ms));
  assert.equal(m.gc_ms_per_s, 0);
});
