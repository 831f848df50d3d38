/**
 * The topic log through a running broker: MQTT clients publish, the fake
 * BigQuery receives one row per message; a stalled BigQuery does not slow
 * delivery down.
 */
import assert from "node:assert/strict";
import { startFakeBigQuery, startHangingFront } from "../helpers/bigquery_server.ts";
import { collect, connectClient, delay, startBroker } from "../helpers/broker.ts";
import { startMain } from "../helpers/main_process.ts";

const repoRoot = new URL("../../", import.meta.url).pathname;

function bigquery(url: string) {
  return {
    enabled: true,
    project_id: "proj",
    dataset_id: "ds",
    endpoint: url,
    credentials_path: "",
    flush_interval_ms: 20,
    retry_initial_ms: 20,
    retry_max_ms: 100,
  };
}

/** Flags of a broker process on a free port, no store, logging to the BigQuery at `url`. */
function bigqueryBrokerArgs(url: string, extra: string[]): string[] {
  return [
    "--general.secure=false",
    "--general.websocket=false",
    "--general.bind=127.0.0.1",
    "--ports.tcp=0",
    "--storage.enabled=false",
    "--bigquery.enabled=true",
    "--bigquery.project_id=proj",
    "--bigquery.dataset_id=ds",
    "--bigquery.credentials_path=",
    `--bigquery.endpoint=${url}`,
    "--bigquery.flush_interval_ms=20",
    ...extra,
  ];
}

async function until(check: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await delay(10);
  }
}

Deno.test("every publish through the broker becomes one row: MQTT 5, 3.1.1 and a will", async () => {
  await using fake = startFakeBigQuery();
  await using b = await startBroker({ bigquery: bigquery(fake.url) });
  await using v5 = await connectClient(b.port, { clientId: "pub5", username: "alice" });
  await using v3 = await connectClient(b.port, { clientId: "pub3", protocolVersion: 4 });
  const doomed = await connectClient(b.port, {
    clientId: "doomed",
    will: { topic: "wills/doomed", payload: "gone", qos: 1, retain: false },
  });
  await v5.publishAsync("log/a", "hello", {
    qos: 1,
    properties: {
      contentType: "text/plain",
      payloadFormatIndicator: true,
      userProperties: { site: "berlin" },
    },
  });
  await v3.publishAsync("log/b", Buffer.from([0xff, 0x00]), { qos: 0, retain: true });
  doomed.stream.destroy(); // no DISCONNECT: the will is published
  await fake.waitForRows(3);
  await delay(100); // nothing more arrives ($SYS is not logged by default)
  const rows = fake.inserted.map((r) => r.json);
  assert.equal(rows.length, 3);
  const byTopic = new Map(rows.map((r) => [r.topic, r]));
  assert.deepEqual(
    { ...byTopic.get("log/a"), id: "-", publish_time: "-", node_id: "-" },
    {
      id: "-",
      topic: "log/a",
      payload: "hello",
      payload_encoding: "utf8",
      payload_format_indicator: 1,
      content_type: "text/plain",
      qos: 1,
      retain: false,
      client_id: "pub5",
      username: "alice",
      node_id: "-",
      kind: "client",
      publish_time: "-",
      user_properties: [{ key: "site", value: "berlin" }],
    },
  );
  const binary = byTopic.get("log/b")!;
  assert.equal(binary.payload, "/wA=");
  assert.equal(binary.payload_encoding, "base64");
  assert.equal(binary.retain, true);
  assert.equal(binary.client_id, "pub3");
  const will = byTopic.get("wills/doomed")!;
  assert.equal(will.kind, "will");
  assert.equal(will.payload, "gone");
  assert.equal(will.client_id, "doomed");
  const age = Date.now() - Date.parse(byTopic.get("log/a")!.publish_time as string);
  assert.ok(age >= 0 && age < 10_000, `publish_time is now (${age} ms ago)`);
});

async function roundTrips(port: number, n: number): Promise<number[]> {
  await using sub = await connectClient(port, { clientId: `sub-${crypto.randomUUID()}` });
  await using pub = await connectClient(port, { clientId: `pub-${crypto.randomUUID()}` });
  await sub.subscribeAsync("rtt/#", { qos: 1 });
  const inbox = collect(sub);
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await pub.publishAsync(`rtt/${i}`, "x", { qos: 1 });
    await inbox.next(2000);
    times.push(performance.now() - t0);
  }
  return times;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

Deno.test("MQTT round trips stay fast while BigQuery stalls; the rows go in once it answers", async () => {
  await using fake = startFakeBigQuery();
  await using b = await startBroker({
    bigquery: { ...bigquery(fake.url), batch_size: 10, request_timeout_ms: 60_000 },
  });
  await roundTrips(b.port, 20); // warm-up
  const healthy = median(await roundTrips(b.port, 100));
  fake.stall();
  await until(() => fake.calls.length > 0, "an insert to get stuck");
  const stuckCalls = fake.calls.length;
  const stalled = median(await roundTrips(b.port, 100));
  // Every insert slot is taken by a request that never answers, yet delivery does not notice.
  assert.ok(fake.calls.length >= stuckCalls);
  assert.ok(
    stalled < Math.max(10 * healthy, 20),
    `median round trip ${stalled.toFixed(2)} ms while stalled vs ${healthy.toFixed(2)} ms healthy`,
  );
  fake.release();
  await fake.waitForRows(220, 10_000);
  assert.equal(new Set(fake.inserted.map((r) => r.insertId)).size, 220);
});

Deno.test("a BigQuery that accepts connections and never answers does not keep a broker process from listening", async () => {
  await using fake = startFakeBigQuery();
  await using front = startHangingFront(fake.port, true);
  await using broker = startMain(
    repoRoot,
    bigqueryBrokerArgs(front.url, [
      "--bigquery.request_timeout_ms=1000",
      "--bigquery.retry_initial_ms=50",
      "--bigquery.retry_max_ms=200",
    ]),
  );
  const [, port] = await broker.waitFor(
    /listening for MQTT over tcp on 127\.0\.0\.1:(\d+)/,
    15_000,
  );
  await using pub = await connectClient(Number(port), { clientId: "pub" });
  for (let i = 0; i < 5; i++) await pub.publishAsync(`h/${i}`, `${i}`, { qos: 1 });
  front.hang(false);
  await fake.waitForRows(5, 15_000);
  assert.equal(new Set(fake.inserted.map((r) => r.json.topic)).size, 5);
});

Deno.test("a payload over batch_max_bytes is refused before its row is built: 100 MB of control characters leave the broker running", async () => {
  await using fake = startFakeBigQuery();
  await using broker = startMain(
    repoRoot,
    bigqueryBrokerArgs(fake.url, ["--limits.max_packet_size=268435455"]),
  );
  const [, port] = await broker.waitFor(/listening for MQTT over tcp on 127\.0\.0\.1:(\d+)/);
  await using pub = await connectClient(Number(port), { clientId: "huge-pub" });
  // Well-formed UTF-8, so logged as text, where JSON writes each byte as \u0001: 600 MB, past
  // the longest string V8 makes. Sizing the row threw outside any handler: exit 1.
  await pub.publishAsync("huge", Buffer.alloc(100 * 1024 * 1024, 1), { qos: 1 });
  await broker.waitFor(/row refused \(topic huge, .*more than batch_max_bytes/);
  await pub.publishAsync("after", "x", { qos: 1 });
  await fake.waitForRows(1);
  await delay(100);
  assert.deepEqual(fake.inserted.map((r) => r.json.topic), ["after"]);
  assert.doesNotMatch(broker.output(), /FATAL/);
});
