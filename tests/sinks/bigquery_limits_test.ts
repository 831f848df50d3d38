/**
 * Bounds of the BigQuery sink against the local fake BigQuery, through the real client library:
 * sockets of requests that get no answer, start-up against an endpoint that never answers,
 * request size, quota answers, queue bytes and malformed answers.
 */
import assert from "node:assert/strict";
import { startFakeBigQuery, startHangingFront } from "../helpers/bigquery_server.ts";
import { bqSink, offerMany, until } from "./bq_helpers.ts";

Deno.test("requests BigQuery never answers are closed at request_timeout_ms: open sockets stay bounded", async () => {
  await using fake = startFakeBigQuery();
  await using front = startHangingFront(fake.port);
  const sink = bqSink(front.url, {
    batch_size: 10,
    max_concurrent_requests: 4,
    request_timeout_ms: 300,
    retry_initial_ms: 50,
    retry_max_ms: 100,
  });
  await sink.start();
  front.hang(true);
  offerMany(sink, 100);
  await until(() => sink.stats.failedRequests >= 24, "six rounds of timed-out inserts", 10_000);
  // Without closing, every timed-out request keeps its connection (24 and more by now).
  assert.ok(
    front.maxOpen <= 8,
    `at most ${front.maxOpen} connections open at once, ${front.accepted} made`,
  );
  await sink.stop(50);
  await until(() => front.open === 0, "the last connections to close", 2000);
  front.hang(false);
});
