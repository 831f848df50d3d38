/**
 * The spill store through the BigQuery sink and the fake BigQuery: its size bound counts bytes
 * as on disk.
 */
import assert from "node:assert/strict";
import { startFakeBigQuery } from "../helpers/bigquery_server.ts";
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
