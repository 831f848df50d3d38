// Reading V8's --trace-gc-nvp lines (bench report, alloc.ts, floor.ts), against real and
// recorded traces, and turning a window's collections into figures.

import assert from "node:assert/strict";
import { GcCollector, gcMetrics, parseGcLine, summarize } from "./gc_trace.ts";

Deno.test("a real --trace-gc-nvp trace adds up to what the program allocated", async () => {
  // 200 000 objects of 4 fields each, all garbage: at least 200 000 x 32 bytes allocated.
  const program = `let keep = null;
for (let i = 0; i < 200000; i++) keep = { a: i, b: i, c: i, d: i };
console.log(keep.a);`;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--v8-flags=--trace-gc-nvp,--max-semi-space-size=1", program],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  let n = 0;
  const gc = new GcCollector(() => ++n);
  await Promise.all([child.status, gc.read(child.stdout)]);
  assert.ok(gc.events.length >= 2, `only ${gc.events.length} collections traced`);
  const s = summarize(gc.events)!;
  assert.ok(s.allocatedBytes >= (200_000 * 32) / 2, `allocated ${s.allocatedBytes}`);
  // Each event carries the counter as it was when its line was read.
  const marks = gc.events.map((e) => e.mark);
  assert.deepEqual(marks, [...marks].sort((a, b) => a - b));
  assert.equal(s.messages, marks[marks.length - 1] - marks[0]);
  assert.ok(s.byKind["s"].count >= 1, "scavenges are counted");
  assert.ok(s.byKind["s"].max >= s.byKind["s"].p50);
});

Deno.test("lines that are not GC records are ignored", () => {
  assert.equal(parseGcLine("hello", 0), null);
  assert.equal(parseGcLine("[1:0x1] 5 ms: GC: {not json", 0), null);
  const e = parseGcLine(
    '[1:0x1] 9 ms: GC: {"pause":0.5,"gc":"s","reason":"allocation failure","allocated":1000,' +
      '"new_space_survived":10,"promoted":5,"new_space_capacity":1048576}',
    7,
  )!;
  assert.equal(e.kind, "s");
  assert.equal(e.allocated, 1000);
  assert.equal(e.survived + e.promoted, 15);
  assert.equal(e.mark, 7);
  assert.equal(summarize([e]), null, "one collection cannot bound a window");
});

// Shapes as Deno 2.9.6 (V8 15) prints them, shortened to the fields that matter plus a few others.
const SCAVENGE = '[123:0x55d0:0]      107 ms: GC: {"pause":2.5,"mutator":400,"gc":"s",' +
  '"reason":"allocation failure","start_object_size":3498936,"allocated":4000000,' +
  '"incremental.steps_count":0}';
const MARK_COMPACT = '[123:0x55d0:0]     2360 ms: GC: {"pause":6,"mutator":100,"gc":"mc",' +
  '"allocated":1000000,"incremental":3.5,"incremental_longest_step":1.25,' +
  '"incremental_steps_count":4}';

Deno.test("a scavenge line and a mark-compact line parse; other lines do not", () => {
  const s = parseGcLine(SCAVENGE)!;
  assert.deepEqual(
    [s.kind, s.pause, s.mutatorMs, s.allocated, s.markingMs, s.longestStepMs],
    ["s", 2.5, 400, 4_000_000, 0, 0],
  );
  assert.equal(s.reason, "allocation failure");
  assert.equal(parseGcLine(MARK_COMPACT)?.longestStepMs, 1.25);
  assert.equal(parseGcLine(MARK_COMPACT)?.markingMs, 3.5);
  assert.equal(parseGcLine("[123:0x55d0:0]  120 ms: Memory pool: Removed pages: 0"), null);
  assert.equal(parseGcLine("listening for MQTT over tcp on 127.0.0.1:1883"), null);
  assert.equal(parseGcLine('x GC: {"pause": broken'), null);
});

Deno.test("the collector joins lines split across chunks and counts them", () => {
  const trace = new GcCollector();
  const text = `hello\n${SCAVENGE}\n${MARK_COMPACT}\npartial`;
  const bytes = new TextEncoder().encode(text);
  for (let i = 0; i < bytes.length; i += 7) trace.push(bytes.subarray(i, i + 7));
  assert.equal(trace.count(), 2);
  assert.deepEqual(trace.events.map((e) => e.kind), ["s", "mc"]);
  assert.deepEqual(trace.tail, ["hello"]);
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
