/**
 * Messages left out of queues at `limits.max_queued_bytes_total` are said in the log: one warning
 * line per sweep at most (and at most one every 10 s), with how many and what the queues hold, not
 * a line per message.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { setupLogging } from "../../src/ops/log.ts";
import { connectClient, delay, endClient, startBroker } from "../helpers/broker.ts";

// Each test module runs in its own isolate: configuring logtape here affects this file only.
const lines: { message?: string; level?: string }[] = [];
await setupLogging({ level: "info", format: "json", write: (l) => lines.push(JSON.parse(l)) });

Deno.test("drops at max_queued_bytes_total are logged once, with the count", async () => {
  await using b = await startBroker({
    limits: { max_queued_bytes_total: 64 * 1024, sweep_interval_ms: 50 },
  });
  const away = await connectClient(b.port, {
    clientId: "away",
    clean: false,
    properties: { sessionExpiryInterval: 60 },
  });
  await away.subscribeAsync("t", { qos: 1 });
  await endClient(away);
  const pub = await connectClient(b.port, { clientId: "pub" });
  // 40 x 4 KiB: about 15 fit in 64 KiB, the rest are dropped.
  const payload = Buffer.alloc(4096);
  // Sent as one burst; the 50 ms sweep may still fall inside it on a loaded machine (it did in CI:
  // one drop seen, the rest held back by the 10 s interval), so the line's count is only bounded
  // here. That a line counts every drop since the one before is total_drop_log_test's.
  await Promise.all(Array.from({ length: 40 }, () => pub.publishAsync("t", payload, { qos: 1 })));
  await delay(300);
  const said = lines.filter((l) => l.message?.includes("max_queued_bytes_total"));
  assert.equal(said.length, 1, JSON.stringify(said));
  assert.equal(said[0].level, "warning");
  const n = Number(/^(\d+) QoS 1\/2 messages not queued/.exec(said[0].message!)?.[1]);
  assert.ok(n >= 1 && n <= 30, `${said[0].message}`);
  await endClient(pub);
});
