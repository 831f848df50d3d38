/**
 * The spill store through the BigQuery sink and the fake BigQuery: its size bound counts bytes
 * as on disk, and lines that are JSON but not rows are skipped without losing the others.
 */
import assert from "node:assert/strict";
import { toRow } from "../../src/sinks/row.ts";
import { startFakeBigQuery } from "../helpers/bigquery_server.ts";
import { info, testMessage } from "./contract.ts";
import { bqSink, offerMany, until } from "./bq_helpers.ts";

async function dirBytes(dir: string): Promise<number> {
  let n = 0;
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile) n += (await Deno.stat(`${dir}/${e.name}`)).size;
  }
  return n;
}

Deno.test("spill_max_bytes bounds the bytes on disk, also for text that takes several bytes a character", async () => {
  await using fake = startFakeBigQuery();
  const dir = await Deno.makeTempDir();
  try {
    const limit = 1024 * 1024;
    const sink = bqSink(fake, {
      overflow: "spill",
      max_queue: 1,
      spill_max_bytes: limit,
      batch_size: 1,
      max_concurrent_requests: 1,
    }, dir);
    await sink.start();
    fake.failAll(503);
    // 2 KiB of UTF-8 but 1024 UTF-16 units per payload: ~800 rows fill 1 MiB of characters.
    offerMany(sink, 800, "t", "é".repeat(1024));
    await until(() => sink.stats.spilled + sink.stats.dropped >= 790, "rows spilled or dropped");
    await sink.stop(0);
    const onDisk = await dirBytes(`${dir}/topic-log-spill`);
    assert.ok(onDisk <= limit, `${onDisk} bytes on disk, limit ${limit}`);
    assert.ok(sink.stats.dropped > 0, "rows beyond the limit are dropped and counted");
    assert.ok(onDisk > limit * 0.9, `${onDisk} bytes on disk: the limit is used`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a spill line that is JSON but not a row (null, a number, an array) is skipped; the rows around it go in once", async () => {
  await using fake = startFakeBigQuery();
  const dir = await Deno.makeTempDir();
  try {
    const spill = `${dir}/topic-log-spill`;
    await Deno.mkdir(spill);
    const row = (i: number) =>
      JSON.stringify(toRow(testMessage(`s/${i}`, `${i}`), info(), "node-a", `id-${i}`, Date.now()));
    const lines = [row(0), "null", row(1), "42", "[1,2]", '{"id":"x"}', row(2)];
    await Deno.writeTextFile(`${spill}/500000000000.jsonl`, lines.join("\n") + "\n");
    const sink = bqSink(fake, { overflow: "spill" }, dir);
    await sink.start();
    await fake.waitForRows(3);
    await until(() => [...Deno.readDirSync(spill)].length === 0, "the segment to be removed");
    await sink.stop(1000);
    assert.deepEqual(fake.inserted.map((r) => r.json.topic), ["s/0", "s/1", "s/2"]);
    // The next start has nothing to send again.
    const again = bqSink(fake, { overflow: "spill" }, dir);
    await again.start();
    await again.stop(200);
    assert.equal(fake.inserted.length, 3);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("rows left at stop are spilled in segments of at most a quarter of max_queue_bytes, and replayed in order", async () => {
  await using fake = startFakeBigQuery();
  const dir = await Deno.makeTempDir();
  try {
    const opts = { overflow: "spill" as const, max_queue_bytes: 1024 * 1024, batch_size: 20 };
    const first = bqSink(fake, opts, dir);
    await first.start();
    fake.stall();
    // 40 rows of 200 KB: most of them in requests that never end, the rest in memory.
    offerMany(first, 40, "t", "s".repeat(200_000));
    await until(() => fake.calls.length >= 2, "stuck inserts");
    await first.stop(100);
    // The stuck requests go in once released (their rows come again, with the same ids).
    const stuck = fake.calls.reduce((n, c) => n + c.rows.length, 0);
    fake.release();
    await until(() => fake.inserted.length === stuck, "the stuck requests to be answered");
    const spill = `${dir}/topic-log-spill`;
    const sizes = [...Deno.readDirSync(spill)].map((e) => Deno.statSync(`${spill}/${e.name}`).size);
    // One row over the quarter fits (an empty segment takes any row): at most 2 rows each.
    assert.ok(sizes.length >= 10, `${sizes.length} segments`);
    for (const size of sizes) assert.ok(size < 2 * 201_000, `a segment of ${size} bytes`);
    const before = fake.inserted.length;
    // One request at a time: with several in flight, the order they reach the endpoint is the
    // network's (the sink launches them oldest first, BigQuery keeps no order between requests).
    const second = bqSink(fake, { ...opts, max_concurrent_requests: 1 }, dir);
    await second.start();
    await until(() => second.stats.sent === first.stats.spilled, "the spilled rows sent");
    await second.stop(2000);
    const replayed = fake.inserted.slice(before).map((r) => r.json.topic as string);
    assert.deepEqual(
      replayed,
      Array.from({ length: 40 }, (_, i) => `t/${i}`).slice(40 - replayed.length),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
