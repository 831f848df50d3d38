/**
 * The topic log's queue is bounded in bytes too: a broker process with BigQuery away keeps at
 * most max_queue_bytes of logged payloads, measured as the process's RSS, and replaying what it
 * spilled reads the spill store a bounded segment at a time.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { startFakeBigQuery, startHangingFront } from "../helpers/bigquery_server.ts";
import { connectClient } from "../helpers/broker.ts";
import { mib, peakRssOf, resetPeakRss, startBrokerProcess } from "../helpers/broker_process.ts";

Deno.test("with BigQuery away, a broker holds at most max_queue_bytes of logged payloads (RSS)", async () => {
  await using fake = startFakeBigQuery();
  await using front = startHangingFront(fake.port, true);
  await using b = await startBrokerProcess({
    limits: { max_packet_size: 2 * 1024 * 1024 },
    bigquery: {
      enabled: true,
      project_id: "proj",
      dataset_id: "ds",
      endpoint: front.url,
      credentials_path: "",
      request_timeout_ms: 500,
      max_queue_bytes: 8 * 1024 * 1024,
    },
  });
  const before = await b.memory();
  await using pub = await connectClient(b.ports.tcp, { clientId: "pub" });
  const payload = Buffer.alloc(1024 * 1024, 7);
  // 96 MiB logged while BigQuery is away (max_queue 100000 rows would keep all of it).
  for (let i = 0; i < 96; i++) await pub.publishAsync(`big/${i}`, payload, { qos: 1 });
  const after = await b.memory();
  const grew = after.rss - before.rss;
  assert.ok(
    // Measured: +60 MiB (RSS keeps freed pages a while), +107 MiB without the byte bound.
    grew < 85 * 1024 * 1024,
    `RSS ${mib(before.rss)} -> ${mib(after.rss)} (+${mib(grew)}), heap+external ${
      mib(after.heapUsed + after.external)
    }`,
  );
  assert.ok(
    after.external + after.heapUsed < 40 * 1024 * 1024,
    `heap ${mib(after.heapUsed)}, external ${mib(after.external)}`,
  );
  console.log(
    `RSS ${mib(before.rss)} -> ${mib(after.rss)}; heap ${mib(after.heapUsed)}, external ${
      mib(after.external)
    }`,
  );
});

Deno.test("replaying spilled rows reads segments of at most a quarter of max_queue_bytes: the peak RSS stays bounded", async () => {
  await using fake = startFakeBigQuery();
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-spill-" });
  try {
    fake.failAll(503);
    await using b = await startBrokerProcess({
      bigquery: {
        enabled: true,
        project_id: "proj",
        dataset_id: "ds",
        endpoint: fake.url,
        credentials_path: "",
        flush_interval_ms: 20,
        retry_initial_ms: 20,
        retry_max_ms: 100,
        overflow: "spill",
        spill_dir: dir,
        max_queue_bytes: 4 * 1024 * 1024,
        // Little in flight, so the replay's own reading is what shows.
        max_concurrent_requests: 1,
        batch_max_bytes: 2 * 1024 * 1024,
      },
    });
    {
      await using pub = await connectClient(b.ports.tcp, { clientId: "pub" });
      const payload = "z".repeat(1_000_000);
      for (let i = 0; i < 64; i++) await pub.publishAsync(`big/${i}`, payload, { qos: 1 });
    }
    const segments = () => [...Deno.readDirSync(dir)].map((e) => Deno.statSync(`${dir}/${e.name}`));
    const deadline = Date.now() + 10_000;
    while (segments().reduce((n, s) => n + s.size, 0) < 55_000_000 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const before = await b.memory();
    assert.ok(resetPeakRss(b.pid), "peak RSS can be reset");
    fake.failAll(0);
    await fake.waitForRows(64, 20_000);
    const grew = peakRssOf(b.pid) - before.rss;
    // Measured: +20 MiB; +122 MiB when a segment was bounded by rows only (one 64 MB segment).
    console.log(`replay: peak RSS +${mib(grew)} over ${mib(before.rss)}`);
    assert.ok(grew < 48 * 1024 * 1024, `peak RSS +${mib(grew)} over ${mib(before.rss)}`);
    assert.equal(new Set(fake.inserted.map((r) => r.json.topic)).size, 64);
    assert.deepEqual(fake.duplicates(), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
