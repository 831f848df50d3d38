/**
 * The topic log's counters on the broker's real /metrics endpoint: rows by outcome, requests,
 * queue and spill gauges and the request duration histogram, per destination.
 */
import assert from "node:assert/strict";
import { startFakeBigQuery } from "../helpers/bigquery_server.ts";
import { connectClient, startBroker } from "../helpers/broker.ts";
import { metric, scrape, startOps } from "../helpers/ops.ts";

/** A broker whose topic log goes to the fake BigQuery at `endpoint`. */
function topicLogBroker(endpoint: string, more: Record<string, number> = {}) {
  return startBroker({
    bigquery: {
      enabled: true,
      project_id: "proj",
      dataset_id: "ds",
      endpoint,
      credentials_path: "",
      flush_interval_ms: 20,
      retry_initial_ms: 10,
      retry_max_ms: 40,
      ...more,
    },
  });
}

Deno.test("/metrics shows the topic log: rows by outcome, requests, queue and spill gauges, latency", async () => {
  await using fake = startFakeBigQuery();
  await using b = await topicLogBroker(fake.url);
  await using o = await startOps(b.broker);
  fake.rejectWhen((row) => row.json.topic === "m/bad" ? "no" : null);
  fake.script({ status: 503 });
  await using pub = await connectClient(b.port, { clientId: "pub" });
  for (const t of ["m/1", "m/2", "m/bad"]) await pub.publishAsync(t, "x", { qos: 1 });
  await fake.waitForRows(2);
  const d = 'destination="bigquery"';
  let m = await scrape(o.url);
  for (
    let i = 0;
    i < 50 && metric(m, `mcloudtt_topic_log_rows_total{${d},outcome="rejected"}`) < 1;
    i++
  ) {
    await new Promise((r) => setTimeout(r, 20));
    m = await scrape(o.url);
  }
  assert.equal(metric(m, `mcloudtt_topic_log_rows_queued_total{${d}}`), 3);
  assert.equal(metric(m, `mcloudtt_topic_log_rows_total{${d},outcome="sent"}`), 2);
  assert.equal(metric(m, `mcloudtt_topic_log_rows_total{${d},outcome="rejected"}`), 1);
  assert.ok(metric(m, `mcloudtt_topic_log_rows_total{${d},outcome="retried"}`) >= 1);
  assert.equal(metric(m, `mcloudtt_topic_log_rows_total{${d},outcome="dropped"}`), 0);
  assert.equal(metric(m, `mcloudtt_topic_log_requests_total{${d},result="failed"}`), 1);
  assert.ok(metric(m, `mcloudtt_topic_log_requests_total{${d},result="ok"}`) >= 1);
  assert.equal(metric(m, `mcloudtt_topic_log_queue_rows{${d}}`), 0);
  assert.equal(metric(m, `mcloudtt_topic_log_queue_bytes{${d}}`), 0);
  assert.equal(metric(m, `mcloudtt_topic_log_in_flight_rows{${d}}`), 0);
  assert.equal(metric(m, `mcloudtt_topic_log_spill_bytes{${d}}`), 0);
  assert.equal(
    metric(m, `mcloudtt_topic_log_request_duration_seconds_bucket{${d},le="+Inf"}`),
    metric(m, `mcloudtt_topic_log_request_duration_seconds_count{${d}}`),
  );
});

Deno.test("requests in flight are in neither result of mcloudtt_topic_log_requests_total: it never goes down", async () => {
  await using fake = startFakeBigQuery();
  await using b = await topicLogBroker(fake.url, { request_timeout_ms: 600 });
  await using o = await startOps(b.broker);
  await using pub = await connectClient(b.port, { clientId: "pub" });
  await pub.publishAsync("m/1", "x", { qos: 1 });
  await fake.waitForRows(1);
  const d = 'destination="bigquery"';
  const results = async () => {
    const m = await scrape(o.url);
    return [
      metric(m, `mcloudtt_topic_log_requests_total{${d},result="ok"}`),
      metric(m, `mcloudtt_topic_log_requests_total{${d},result="failed"}`),
    ];
  };
  const before = await results();
  // The next insert hangs past the request timeout: in flight, then failed.
  fake.delayAll(1500);
  await pub.publishAsync("m/2", "x", { qos: 1 });
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(await results(), before, "counted while in flight");
  await new Promise((r) => setTimeout(r, 800));
  const after = await results();
  assert.equal(after[0], before[0], "ok went down or up for a request that failed");
  assert.ok(after[1] >= before[1] + 1, `failed ${after[1]}`);
  fake.delayAll(0);
});
