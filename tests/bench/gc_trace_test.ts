// The --trace-gc-nvp reader of alloc.ts and floor.ts, against a real V8 trace.

import assert from "node:assert/strict";
import { GcCollector, parseGcLine, summarize } from "./gc_trace.ts";

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
  const gc = new GcCollector(child.stdout, () => ++n);
  await child.status;
  await gc.done;
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
