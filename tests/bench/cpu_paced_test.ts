import assert from "node:assert/strict";
import { perThread } from "./cpu_paced.ts";

Deno.test("perThread sums each event over the threads and skips what perf did not count", () => {
  const text = [
    "deno-100,12.5,msec,task-clock,12500000,100.00,0.500,CPUs utilized",
    "V8 DefaultWorke-101,0.25,msec,task-clock,250000,100.00,0.010,CPUs utilized",
    "deno-100,40,,context-switches,12500000,100.00,3.200,K/sec",
    "V8 DefaultWorke-101,<not counted>,,context-switches,0,100.00,,",
    "deno-100,120,,raw_syscalls:sys_enter,12500000,100.00,9.600,K/sec",
    "",
  ].join("\n");
  const sums = perThread(text);
  assert.equal(sums.get("task-clock"), 12.75);
  assert.equal(sums.get("context-switches"), 40);
  assert.equal(sums.get("raw_syscalls:sys_enter"), 120);
});
