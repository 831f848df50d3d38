/**
 * Bounds of the BigQuery sink against the local fake BigQuery, through the real client library:
 * sockets of requests that get no answer, start-up against an endpoint that never answers,
 * request size, quota answers, queue bytes and malformed answers.
 */
import assert from "node:assert/strict";
import { startFakeBigQuery, startHangingFront } from "../helpers/bigquery_server.ts";
import { bqSink, offerMany, until } from "./bq_helpers.ts";
import { info, testMessage } from "./contract.ts";

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

Deno.test("an answer trickled a byte at a time is cut at request_timeout_ms too: open requests stay bounded", async () => {
  await using fake = startFakeBigQuery();
  let open = 0;
  let maxOpen = 0;
  // insertAll answers with headers at once, then a byte every 100 ms, for ever: never idle.
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (req) => {
      const url = new URL(req.url);
      const body = req.method === "GET" ? undefined : new Uint8Array(await req.arrayBuffer());
      if (!url.pathname.endsWith("/insertAll")) {
        const r = await fetch(fake.url + url.pathname + url.search, {
          method: req.method,
          headers: req.headers,
          body,
        });
        return new Response(await r.arrayBuffer(), { status: r.status, headers: r.headers });
      }
      open++;
      maxOpen = Math.max(maxOpen, open);
      let timer: ReturnType<typeof setInterval> | undefined;
      let done = false;
      const end = () => {
        if (done) return;
        done = true;
        open--;
        clearInterval(timer);
      };
      req.signal.addEventListener("abort", end);
      return new Response(
        new ReadableStream<Uint8Array>({
          start(ctl) {
            ctl.enqueue(new TextEncoder().encode(" "));
            timer = setInterval(() => {
              try {
                ctl.enqueue(new TextEncoder().encode(" "));
              } catch {
                end();
              }
            }, 100);
          },
          cancel: end,
        }),
        { status: 200, headers: { "content-type": "application/json" } },
      );
    },
  );
  try {
    const sink = bqSink(`http://127.0.0.1:${server.addr.port}`, {
      request_timeout_ms: 400,
      retry_initial_ms: 50,
      retry_max_ms: 100,
    });
    await sink.start();
    offerMany(sink, 1);
    await until(() => sink.stats.failedRequests >= 6, "six timed-out inserts", 10_000);
    // Before, each one went on reading its trickle on its own socket: 6 and more open.
    assert.ok(maxOpen <= 2, `${maxOpen} insertAll requests open at once`);
    await sink.stop(50);
    await until(() => open === 0, "the last request to be cut", 2000);
  } finally {
    await server.shutdown();
  }
});

Deno.test("start waits at most request_timeout_ms for a slow BigQuery; the table is set up later and rows go in", async () => {
  await using fake = startFakeBigQuery();
  fake.delayAll(400);
  // Four set-up requests (dataset get and create, table get and create) of 400 ms each.
  const sink = bqSink(fake, { request_timeout_ms: 600 });
  const t0 = performance.now();
  await sink.start();
  const took = performance.now() - t0;
  assert.ok(took < 1200, `start took ${took.toFixed(0)} ms`);
  offerMany(sink, 5);
  await fake.waitForRows(5, 10_000);
  assert.ok(fake.tables.has("ds.log"));
  await sink.stop(2000);
  assert.equal(sink.stats.sent, 5);
});

Deno.test("403 (quota, rate limit, access denied), 401 and backendError are retried with backoff; a 400 is not", async () => {
  await using fake = startFakeBigQuery();
  const sink = bqSink(fake, { batch_size: 10, max_concurrent_requests: 1 });
  await sink.start();
  fake.script(
    { status: 403, reason: "quotaExceeded" },
    { status: 403, reason: "rateLimitExceeded" },
    { status: 400, reason: "backendError" },
  );
  offerMany(sink, 10);
  await fake.waitForRows(10);
  assert.equal(sink.stats.rejected, 0);
  assert.equal(sink.stats.retried, 30);
  // An IAM grant still on its way, then credentials refused: the rows wait and go in.
  fake.script({ status: 403, reason: "accessDenied" }, { status: 401, reason: "unauthorized" });
  offerMany(sink, 10, "u");
  await fake.waitForRows(20);
  assert.equal(sink.stats.rejected, 0);
  assert.equal(sink.stats.retried, 50);
  fake.script({ status: 400, reason: "invalid" });
  offerMany(sink, 10, "v");
  await sink.stop(2000);
  assert.equal(sink.stats.rejected, 10);
  assert.equal(sink.stats.sent, 20);
});

Deno.test("a 200 whose body is not insertAll's JSON (an HTML page, a cut-off answer) is retried, not counted as sent", async () => {
  await using fake = startFakeBigQuery();
  const sink = bqSink(fake, { batch_size: 10, max_concurrent_requests: 1 });
  await sink.start();
  fake.script(
    { body: "<html>proxy says hi</html>", type: "text/html" },
    { body: '{"kind":"bigquery#tableDataInsertAllResponse","insertErr' },
  );
  offerMany(sink, 10);
  await fake.waitForRows(10);
  await sink.stop(2000);
  assert.equal(fake.calls.length, 3);
  assert.equal(sink.stats.failedRequests, 2);
  assert.equal(sink.stats.sent, 10);
  assert.equal(sink.stats.rejected, 0);
});

Deno.test("requests stay within batch_max_bytes; a row alone over it is rejected, the others go in", async () => {
  await using fake = startFakeBigQuery();
  fake.requestLimit = 200_000;
  const sink = bqSink(fake, { batch_size: 500, batch_max_bytes: 150_000 });
  await sink.start();
  offerMany(sink, 50, "a", "x".repeat(5000));
  sink.offer(testMessage("huge", "y".repeat(300_000)), info());
  offerMany(sink, 50, "b", "x".repeat(5000));
  await fake.waitForRows(100);
  await sink.stop(2000);
  assert.equal(sink.stats.sent, 100);
  assert.equal(sink.stats.rejected, 1);
  assert.ok(fake.requestSizes.every((n) => n <= 150_000), `sizes ${fake.requestSizes}`);
  assert.ok(fake.calls.every((c) => c.status === 200));
  assert.ok(fake.calls.length >= 4, `${fake.calls.length} requests for ~500 KB`);
});

Deno.test("a request BigQuery refuses as too large (400 payload size) is split and sent again", async () => {
  await using fake = startFakeBigQuery();
  fake.requestLimit = 100_000;
  const sink = bqSink(fake, { batch_size: 500, max_concurrent_requests: 1 });
  await sink.start();
  offerMany(sink, 20, "a", "x".repeat(5000));
  sink.offer(testMessage("big", "y".repeat(150_000)), info());
  offerMany(sink, 20, "b", "x".repeat(5000));
  await fake.waitForRows(40);
  await sink.stop(2000);
  assert.equal(sink.stats.sent, 40);
  assert.equal(sink.stats.rejected, 1, "only the row that alone is too large");
  assert.equal(new Set(fake.inserted.map((r) => r.insertId)).size, 40);
  assert.ok(fake.requestSizes.some((n) => n > 100_000), "a request was too large");
});

Deno.test("max_queue_bytes bounds the queue like max_queue: the oldest rows are dropped and counted", async () => {
  await using fake = startFakeBigQuery();
  const sink = bqSink(fake, { max_queue_bytes: 1024 * 1024, batch_size: 10 });
  await sink.start();
  fake.failAll(503);
  offerMany(sink, 40, "t", "x".repeat(100_000));
  assert.ok(sink.stats.queueBytes <= 1024 * 1024, `${sink.stats.queueBytes} bytes queued`);
  assert.ok(sink.stats.dropped >= 29, `${sink.stats.dropped} dropped`);
  fake.failAll(0);
  await sink.stop(2000);
  assert.deepEqual(
    fake.inserted.map((r) => r.json.topic),
    Array.from({ length: 40 - sink.stats.dropped }, (_, i) => `t/${sink.stats.dropped + i}`),
  );
});
