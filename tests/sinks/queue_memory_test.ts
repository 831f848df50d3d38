/**
 * The topic log's queue is bounded in bytes too: a broker process with BigQuery away keeps at
 * most max_queue_bytes of logged payloads, measured as the process's RSS.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { startFakeBigQuery, startHangingFront } from "../helpers/bigquery_server.ts";
import { connectClient } from "../helpers/broker.ts";
import { mib, startBrokerProcess } from "../helpers/broker_process.ts";

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
