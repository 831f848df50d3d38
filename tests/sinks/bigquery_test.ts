/**
 * The BigQuery sink against a local stand-in for the BigQuery REST API, through
 * the real client library: table set-up, batching, retries with stable
 * insertIds, rejected rows, overflow (drop or spill and replay) and shutdown.
 */
import assert from "node:assert/strict";
import type { Config, DeepPartial } from "../../src/config/mod.ts";
import type { QueueSink } from "../../src/sinks/queue.ts";
import { ROW_SCHEMA } from "../../src/sinks/row.ts";
import { type FakeBigQuery, startFakeBigQuery } from "../helpers/bigquery_server.ts";
import { bqSink } from "./bq_helpers.ts";
import { info, testMessage } from "./contract.ts";

const sinkFor = (fake: FakeBigQuery, bq: DeepPartial<Config["bigquery"]> = {}) => bqSink(fake, bq);

/** A started sink for `fake` (start() sets up the dataset and table). */
async function startedSink(
  fake: FakeBigQuery,
  bq: DeepPartial<Config["bigquery"]> = {},
): Promise<QueueSink> {
  const sink = sinkFor(fake, bq);
  await sink.start();
  return sink;
}

function offerMany(sink: QueueSink, n: number, prefix = "t"): void {
  for (let i = 0; i < n; i++) sink.offer(testMessage(`${prefix}/${i}`, `${i}`), info());
}

async function until(check: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const topics = (fake: FakeBigQuery) => fake.inserted.map((r) => r.json.topic as string);
const seq = (n: number, prefix = "t") => Array.from({ length: n }, (_, i) => `${prefix}/${i}`);

Deno.test("create_table makes the dataset and the table with the row schema; no auth is sent", async () => {
  await using fake = startFakeBigQuery();
  const sink = await startedSink(fake);
  assert.deepEqual((fake.tables.get("ds.log")?.schema as { fields: unknown })?.fields, ROW_SCHEMA);
  assert.ok(fake.datasets.has("ds"));
  sink.offer(
    testMessage("a/b", "hello", "c1", { qos: 1, contentType: "text/plain" }),
    { clientId: "c1", username: "u1", receivedAt: Date.UTC(2026, 0, 2, 3, 4, 5, 6), kind: "will" },
  );
  await sink.stop(2000);
  assert.equal(fake.inserted.length, 1);
  const row = fake.inserted[0];
  assert.equal(row.insertId, row.json.id);
  assert.deepEqual({ ...row.json, id: "-" }, {
    id: "-",
    topic: "a/b",
    payload: "hello",
    payload_encoding: "utf8",
    payload_format_indicator: null,
    content_type: "text/plain",
    qos: 1,
    retain: false,
    client_id: "c1",
    username: "u1",
    node_id: "node-a",
    kind: "will",
    publish_time: "2026-01-02T03:04:05.006Z",
    user_properties: [],
  });
  assert.ok(fake.calls.every((c) => c.authorization === null));
  // Every column the row writes is in the schema, and the other way round.
  assert.deepEqual(Object.keys(row.json).sort(), ROW_SCHEMA.map((c) => c.name).sort());
});

Deno.test("an existing table with another schema stops the start with the column named", async () => {
  await using fake = startFakeBigQuery();
  fake.datasets.set("ds", { id: "proj:ds" });
  fake.tables.set("ds.log", {
    schema: {
      fields: ROW_SCHEMA.filter((c) => c.name !== "payload_encoding").map((c) =>
        c.name === "qos" ? { ...c, type: "STRING" } : c
      ),
    },
  });
  const sink = sinkFor(fake);
  await assert.rejects(
    sink.start(),
    /proj\.ds\.log does not have the topic log schema: column payload_encoding \(STRING\) is missing; column qos is STRING, expected INTEGER/,
  );
});

Deno.test("a table with the same columns (INT64/BOOL spellings, extra nullable column) is accepted", async () => {
  await using fake = startFakeBigQuery();
  fake.datasets.set("ds", { id: "proj:ds" });
  const fields = ROW_SCHEMA.map((c) =>
    c.type === "INTEGER"
      ? { ...c, type: "INT64" }
      : c.type === "BOOLEAN"
      ? { ...c, type: "BOOL" }
      : c
  );
  fake.tables.set("ds.log", { schema: { fields: [...fields, { name: "note", type: "STRING" }] } });
  const sink = await startedSink(fake);
  await sink.stop(100);
});

Deno.test("without create_table a missing table stops the start and says how to fix it", async () => {
  await using fake = startFakeBigQuery();
  const sink = sinkFor(fake, { create_table: false });
  await assert.rejects(sink.start(), /dataset ds does not exist; .*create_table = true/);
});

Deno.test("an unreachable BigQuery does not stop the start; rows wait and are retried", async () => {
  await using fake = startFakeBigQuery();
  const port = fake.port;
  await fake.close();
  const sink = sinkFor(fake, { endpoint: `http://127.0.0.1:${port}` });
  await sink.start(); // logs a warning, does not throw
  offerMany(sink, 5);
  await new Promise((r) => setTimeout(r, 100));
  assert.ok(sink.stats.retried > 0, "sends were retried");
  assert.equal(sink.stats.sent, 0);
  await sink.stop(50);
  assert.equal(sink.stats.dropped, 5);
});

Deno.test("rows go in batches of batch_size, and a partial batch after flush_interval_ms", async () => {
  await using fake = startFakeBigQuery();
  const sink = await startedSink(fake, {
    batch_size: 10,
    max_concurrent_requests: 1,
    flush_interval_ms: 200,
  });
  offerMany(sink, 35);
  await fake.waitForRows(30);
  assert.deepEqual(fake.calls.map((c) => c.rows.length), [10, 10, 10]);
  const t0 = Date.now();
  await fake.waitForRows(35);
  assert.ok(Date.now() - t0 < 1000);
  assert.deepEqual(fake.calls.map((c) => c.rows.length), [10, 10, 10, 5]);
  assert.deepEqual(topics(fake), seq(35));
  await sink.stop(1000);
  assert.equal(sink.stats.sent, 35);
  assert.equal(sink.stats.requests, 4);
  assert.equal(sink.stats.insertLatency.count, 4);
});

Deno.test("503, 429, 500 and a timeout are retried with the same insertIds; nothing lost or doubled", async () => {
  await using fake = startFakeBigQuery();
  const sink = await startedSink(fake, {
    batch_size: 20,
    max_concurrent_requests: 1,
    request_timeout_ms: 200,
  });
  fake.script({ status: 503 }, { status: 429 }, { status: 500 }, { delayMs: 600 });
  offerMany(sink, 20);
  await fake.waitForRows(20);
  await sink.stop(2000);
  const ids = fake.calls.map((c) => c.rows.map((r) => r.insertId).join(","));
  assert.ok(fake.calls.length >= 5, `${fake.calls.length} calls`);
  assert.equal(new Set(ids).size, 1, "every attempt carried the same insertIds");
  assert.equal(new Set(fake.calls[0].rows.map((r) => r.insertId)).size, 20, "ids are unique");
  // The slow answer may also have gone in: same insertId, so BigQuery would drop the copy.
  const distinct = new Set(fake.inserted.map((r) => r.insertId));
  assert.equal(distinct.size, 20);
  assert.equal(sink.stats.sent, 20);
  assert.ok(sink.stats.retried >= 80, `retried ${sink.stats.retried}`);
  assert.equal(sink.stats.failedRequests, fake.calls.length - 1);
  assert.equal(sink.stats.dropped, 0);
});

Deno.test("rows BigQuery refuses are counted and not retried; the others go in", async () => {
  await using fake = startFakeBigQuery();
  const sink = await startedSink(fake, { batch_size: 10, max_concurrent_requests: 1 });
  fake.rejectWhen((row) => (row.json.topic as string).endsWith("/3") ? "no such field" : null);
  offerMany(sink, 10);
  await sink.stop(2000);
  assert.equal(fake.calls.length, 1, "refused rows are not sent again");
  assert.equal(sink.stats.rejected, 1);
  assert.equal(sink.stats.sent, 9);
  assert.deepEqual(topics(fake), seq(10).filter((t) => t !== "t/3"));
});

Deno.test("a 400 for the whole request rejects its rows instead of retrying forever", async () => {
  await using fake = startFakeBigQuery();
  const sink = await startedSink(fake, { batch_size: 5, max_concurrent_requests: 1 });
  fake.script({ status: 400 });
  offerMany(sink, 10);
  await sink.stop(2000);
  assert.equal(sink.stats.rejected, 5);
  assert.equal(sink.stats.sent, 5);
  assert.deepEqual(topics(fake), seq(10).slice(5));
});

Deno.test("within max_queue an outage loses nothing", async () => {
  await using fake = startFakeBigQuery();
  const sink = await startedSink(fake, { batch_size: 50, max_queue: 1000 });
  fake.failAll(503);
  offerMany(sink, 1000);
  await until(() => sink.stats.retried > 200, "retries");
  fake.failAll(0);
  await fake.waitForRows(1000);
  await sink.stop(2000);
  assert.equal(new Set(fake.inserted.map((r) => r.insertId)).size, 1000);
  assert.equal(sink.stats.dropped, 0);
  assert.equal(sink.stats.sent, 1000);
});

Deno.test("beyond max_queue the oldest rows are dropped, and every drop is counted", async () => {
  await using fake = startFakeBigQuery();
  const sink = await startedSink(fake, {
    batch_size: 10,
    max_queue: 20,
    max_concurrent_requests: 1,
  });
  fake.failAll(503);
  offerMany(sink, 50);
  await until(() => sink.stats.retried > 0, "a failed send");
  fake.failAll(0);
  await fake.waitForRows(20);
  await sink.stop(2000);
  assert.equal(sink.stats.dropped, 30);
  assert.equal(sink.stats.queued, 50);
  assert.deepEqual(topics(fake), seq(50).slice(30), "the newest rows were kept");
});

Deno.test("overflow = spill writes rows to disk and replays them in order once BigQuery is back", async () => {
  await using fake = startFakeBigQuery();
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-spill-" });
  try {
    const sink = await startedSink(fake, {
      batch_size: 10,
      max_queue: 20,
      max_concurrent_requests: 1,
      overflow: "spill",
      spill_dir: dir,
    });
    fake.failAll(503);
    offerMany(sink, 300);
    await until(() => sink.stats.spilled === 280, "280 rows spilled");
    assert.ok([...Deno.readDirSync(dir)].length > 0, "segments on disk");
    fake.failAll(0);
    await fake.waitForRows(300);
    assert.deepEqual(topics(fake), seq(300), "in the order they were published");
    assert.equal(sink.stats.dropped, 0);
    assert.equal(sink.stats.replayed, 280);
    // New rows go to memory again once the store is drained.
    await until(() => [...Deno.readDirSync(dir)].length === 0, "spill store emptied");
    offerMany(sink, 5, "later");
    await fake.waitForRows(305);
    await sink.stop(2000);
    assert.equal(sink.stats.spilled, 280);
    assert.deepEqual(topics(fake).slice(300), seq(5, "later"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("at stop, unsent rows are spilled within the deadline and the next start sends them", async () => {
  await using fake = startFakeBigQuery();
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-spill-" });
  try {
    const opts = { batch_size: 10, overflow: "spill" as const, spill_dir: dir };
    const first = sinkFor(fake, opts);
    await first.start();
    fake.stall();
    offerMany(first, 25);
    await until(() => fake.calls.length > 0, "a stuck insert");
    const t0 = Date.now();
    await first.stop(200);
    assert.ok(Date.now() - t0 < 1500, "stop kept its deadline");
    assert.equal(first.stats.spilled, 25);
    assert.equal(first.stats.dropped, 0);
    fake.release();

    const second = sinkFor(fake, opts);
    await second.start();
    await until(() => second.stats.sent === 25, "the spilled rows sent");
    await second.stop(2000);
    // The stuck request may have gone in after all; its rows come again with the same ids.
    assert.deepEqual([...new Set(topics(fake))], seq(25));
    assert.equal(new Set(fake.inserted.map((r) => r.insertId)).size, 25);
    assert.equal([...Deno.readDirSync(dir)].length, 0, "replayed segments are deleted");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("at stop without spilling, unsent rows are counted as dropped", async () => {
  await using fake = startFakeBigQuery();
  const sink = await startedSink(fake);
  fake.failAll(503);
  offerMany(sink, 12);
  await sink.stop(100);
  assert.equal(sink.stats.dropped, 12);
  assert.equal(sink.stats.sent, 0);
});

Deno.test("include and exclude choose what is logged; $SYS only when included", async () => {
  await using fake = startFakeBigQuery();
  const sink = await startedSink(fake, { include: ["a/#", "$SYS/#"], exclude: ["a/secret/+"] });
  for (const t of ["a/1", "b/1", "a/secret/x", "a/secret", "$SYS/broker/uptime", "a/2"]) {
    sink.offer(testMessage(t, "x"), info());
  }
  await sink.stop(2000);
  assert.deepEqual(topics(fake), ["a/1", "a/secret", "$SYS/broker/uptime", "a/2"]);
});
