/**
 * The queue_total_full warning: at most one line every 10 s, each saying how many messages were
 * left out of queues since the line before, not only in the sweep interval that wrote it.
 */
import assert from "node:assert/strict";
import { Metrics } from "../../src/ops/metrics.ts";
import { TotalDropLog } from "../../src/session/queue.ts";

Deno.test("the queue_total_full warning counts every drop since the line before", () => {
  const lines: string[] = [];
  const log = new TotalDropLog((m) => lines.push(m));
  const metrics = new Metrics();
  // 100 drops between sweeps (500 ms apart) for 20 s.
  for (let t = 0; t <= 20_000; t += 500) {
    metrics.droppedQueueTotal += 100;
    log.check(metrics, t);
  }
  // Before: "100", "100 ... (19 more since the last report)" twice: 300 of 4100 drops told.
  assert.deepEqual(lines.map((l) => Number(l.split(" ")[0])), [100, 2000, 2000]);
  log.check(metrics, 20_500);
  log.check(metrics, 40_000);
  assert.equal(lines.length, 3, "nothing dropped since the last line: nothing said");
});
