/**
 * `mcloudtt bq-adapter` as processes against a running broker and the fake
 * BigQuery: replicas split one stream, every message is written once, and a
 * replica killed with messages unacknowledged loses none of them.
 */
import assert from "node:assert/strict";
import { startFakeBigQuery, startHangingFront } from "../helpers/bigquery_server.ts";
import { promtool } from "../helpers/promtool.ts";
import { connectClient, delay, startBroker } from "../helpers/broker.ts";
import { copyProject, type MainProcess, startMain } from "../helpers/main_process.ts";

const repoRoot = new URL("../../", import.meta.url).pathname;

/** `bq-adapter` on `brokerUrl` writing to the fake BigQuery at `bigquery`, with `more` flags. */
function adapter(
  brokerUrl: string,
  bigquery: string,
  clientId: string,
  more = ["--adapter.receive_maximum=50", "--bigquery.batch_size=20"],
  cwd = repoRoot,
): MainProcess {
  return startMain(cwd, [
    "bq-adapter",
    `--adapter.url=${brokerUrl}`,
    `--adapter.client_id=${clientId}`,
    "--bigquery.project_id=proj",
    "--bigquery.dataset_id=ds",
    `--bigquery.endpoint=${bigquery}`,
    "--bigquery.credentials_path=",
    "--bigquery.flush_interval_ms=20",
    "--bigquery.retry_initial_ms=20",
    "--bigquery.retry_max_ms=200",
    ...more,
  ]);
}

async function publish(port: number, n: number, prefix: string): Promise<void> {
  await using pub = await connectClient(port, { clientId: `pub-${prefix}` });
  for (let i = 0; i < n; i++) await pub.publishAsync(`${prefix}/${i}`, `${i}`, { qos: 1 });
}

Deno.test("two adapters split a stream: every message written once, by both replicas", async () => {
  await using fake = startFakeBigQuery();
  await using b = await startBroker();
  await using a1 = adapter(b.url, fake.url, "a1");
  await using a2 = adapter(b.url, fake.url, "a2");
  await a1.waitFor(/subscribed to \$share\/bq-adapter\/#/);
  await a2.waitFor(/subscribed to \$share\/bq-adapter\/#/);
  await publish(b.port, 300, "s");
  await fake.waitForRows(300, 15_000);
  await delay(200);
  const topics = fake.inserted.map((r) => r.json.topic as string);
  assert.equal(topics.length, 300, "no message written twice");
  assert.equal(new Set(topics).size, 300);
  const byNode = Map.groupBy(fake.inserted, (r) => r.json.node_id as string);
  assert.deepEqual([...byNode.keys()].sort(), ["a1", "a2"]);
  for (const [node, rows] of byNode) assert.ok(rows.length >= 30, `${node} wrote ${rows.length}`);
  const row = fake.inserted[0].json;
  assert.equal(row.kind, "adapter");
  assert.equal(row.qos, 1);
});

Deno.test("an adapter killed with unacknowledged messages loses none: its next start writes them", async () => {
  await using fake = startFakeBigQuery();
  await using b = await startBroker();
  const first = adapter(b.url, fake.url, "solo");
  await first.waitFor(/subscribed to/);
  fake.failAll(503); // rows wait in the adapter, messages stay unacknowledged
  await publish(b.port, 40, "k");
  await delay(300);
  first.child.kill("SIGKILL");
  await first.status;
  assert.equal(fake.inserted.length, 0);
  fake.failAll(0);
  await using second = adapter(b.url, fake.url, "solo");
  await second.waitFor(/session resumed/);
  await fake.waitForRows(40, 15_000);
  assert.deepEqual(
    [...new Set(fake.inserted.map((r) => r.json.topic as string))].sort(),
    Array.from({ length: 40 }, (_, i) => `k/${i}`).sort(),
  );
});

Deno.test("reconnects during a BigQuery outage do not write a message again: the broker's resends are not queued twice", async () => {
  await using fake = startFakeBigQuery();
  await using b = await startBroker();
  // The adapter reaches the broker through a relay whose connections the test can cut.
  await using relay = startHangingFront(b.port);
  await using a = adapter(`mqtt://127.0.0.1:${relay.port}`, fake.url, "blip", [
    "--adapter.reconnect_ms=50",
  ]);
  await a.waitFor(/subscribed to/);
  fake.failAll(503);
  await publish(b.port, 20, "r");
  await delay(300);
  for (let i = 0; i < 3; i++) {
    relay.dropConnections();
    await a.waitFor(new RegExp(`(session resumed[^]*){${i + 1}}`), 10_000);
    await delay(200);
  }
  fake.failAll(0);
  await fake.waitForRows(20, 15_000);
  await delay(500);
  const topics = fake.inserted.map((r) => r.json.topic as string);
  assert.equal(topics.length, 20, `${topics.length} rows for 20 messages`);
  assert.equal(new Set(topics).size, 20);
});

Deno.test("rows dropped at max_queue_bytes during an outage do not stall the adapter: their messages come again", async () => {
  await using fake = startFakeBigQuery();
  await using b = await startBroker();
  await using a = adapter(`mqtt://127.0.0.1:${b.port}`, fake.url, "bounded", [
    "--adapter.reconnect_ms=200",
    "--bigquery.max_queue_bytes=1048576",
  ]);
  await a.waitFor(/subscribed to/);
  fake.failAll(503);
  // 20 x 100 KB: twice what the queue may hold, so rows are dropped and their messages stay
  // unacknowledged, ahead of everything that comes later.
  {
    await using pub = await connectClient(b.port, { clientId: "pub-big" });
    const big = "x".repeat(100_000);
    for (let i = 0; i < 20; i++) await pub.publishAsync(`big/${i}`, big, { qos: 1 });
  }
  await delay(1000);
  fake.failAll(0);
  await publish(b.port, 10, "after");
  // Without the reconnect the PUBACKs stayed stuck behind the first dropped message, the
  // broker's in-flight window full: nothing after it ever arrived.
  const want = [
    ...Array.from({ length: 20 }, (_, i) => `big/${i}`),
    ...Array.from({ length: 10 }, (_, i) => `after/${i}`),
  ];
  const written = () => new Set(fake.inserted.map((r) => r.json.topic as string));
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline && want.some((t) => !written().has(t))) await delay(100);
  const missing = want.filter((t) => !written().has(t));
  assert.deepEqual(missing, [], `${fake.inserted.length} rows written`);
  console.log(`${fake.inserted.length} rows for ${want.length} messages`);
});

Deno.test("a spill write that fails (a full disk) does not stall the adapter: its messages come again and are written", async () => {
  await using fake = startFakeBigQuery();
  await using b = await startBroker();
  const cwd = await Deno.makeTempDir({ prefix: "mcloudtt-adapter-spill-" });
  try {
    await copyProject(cwd);
    // A directory where the first spill segment goes: every write to it fails, as on a full disk.
    await Deno.mkdir(`${cwd}/data/spill/500000000000.jsonl`, { recursive: true });
    await using a = adapter(b.url, fake.url, "spill-fails", [
      "--adapter.reconnect_ms=200",
      "--adapter.receive_maximum=50",
      "--bigquery.batch_size=5",
      "--bigquery.max_queue=10",
      "--bigquery.overflow=spill",
      "--bigquery.spill_dir=data/spill",
    ], cwd);
    await a.waitFor(/subscribed to/);
    fake.failAll(503);
    await publish(b.port, 40, "full");
    await a.waitFor(/cannot write the spill store/);
    fake.failAll(0);
    await publish(b.port, 10, "later");
    // Before, the messages whose rows failed to spill were never acknowledged nor sent again:
    // the acknowledgements after them waited for good, the broker's window filled, and
    // nothing more was written.
    const want = [
      ...Array.from({ length: 40 }, (_, i) => `full/${i}`),
      ...Array.from({ length: 10 }, (_, i) => `later/${i}`),
    ];
    const written = () => new Set(fake.inserted.map((r) => r.json.topic as string));
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline && want.some((t) => !written().has(t))) await delay(100);
    assert.deepEqual(want.filter((t) => !written().has(t)), [], `${fake.inserted.length} rows`);
  } finally {
    await Deno.remove(cwd, { recursive: true });
  }
});

Deno.test("the adapter's own /readyz and /metrics: subscribed, messages acknowledged, rows sent; not ready once the broker is gone", async () => {
  await using fake = startFakeBigQuery();
  const b = await startBroker();
  try {
    await using a = adapter(b.url, fake.url, "observed");
    const [, host, port] = await a.waitFor(/HTTP endpoint .* on (\S+):(\d+)/);
    const base = `http://${host === "0.0.0.0" ? "127.0.0.1" : host}:${port}`;
    const get = async (path: string) => {
      const res = await fetch(`${base}${path}`);
      return { status: res.status, text: await res.text() };
    };
    const sample = (text: string, name: string) => {
      const m = text.match(new RegExp(`^${name} (\\S+)$`, "m"));
      assert.ok(m, `${name} in /metrics`);
      return Number(m[1]);
    };
    await a.waitFor(/subscribed to/);
    assert.equal((await get("/readyz")).status, 200);
    await publish(b.port, 25, "m");
    await fake.waitForRows(25, 15_000);
    let metrics = (await get("/metrics")).text;
    for (const until = Date.now() + 5000; Date.now() < until;) {
      if (sample(metrics, "mcloudtt_adapter_messages_acknowledged_total") >= 25) break;
      await delay(50);
      metrics = (await get("/metrics")).text;
    }
    const checked = await promtool(metrics);
    assert.ok(checked.ok, checked.said);
    assert.equal(sample(metrics, "mcloudtt_adapter_connected"), 1);
    assert.equal(sample(metrics, "mcloudtt_adapter_messages_received_total"), 25);
    assert.equal(sample(metrics, "mcloudtt_adapter_messages_acknowledged_total"), 25);
    assert.equal(sample(metrics, "mcloudtt_adapter_unacknowledged_messages"), 0);
    assert.match(
      metrics,
      /^mcloudtt_topic_log_rows_total\{destination="[^"]+",outcome="sent"\} 25$/m,
    );
    assert.ok(sample(metrics, "process_resident_memory_bytes") > 0);

    await b.stop();
    let ready = await get("/readyz");
    const until = Date.now() + 5000;
    while (ready.status === 200 && Date.now() < until) {
      await delay(50);
      ready = await get("/readyz");
    }
    assert.equal(ready.status, 503);
    assert.match(ready.text, /not subscribed to the broker/);
    metrics = (await get("/metrics")).text;
    assert.equal(sample(metrics, "mcloudtt_adapter_connected"), 0);
    assert.ok(sample(metrics, "mcloudtt_adapter_connections_lost_total") >= 1);
  } finally {
    await b.stop();
  }
});

Deno.test("an adapter whose http_port is taken says which key to change and exits 2", async () => {
  await using fake = startFakeBigQuery();
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const a = adapter("mqtt://127.0.0.1:1", fake.url, "taken", [
    `--adapter.http_port=${taken.addr.port}`,
    "--http.bind=127.0.0.1",
  ]);
  const status = await a.status;
  assert.equal(status.code, 2);
  assert.match(a.stderr(), /adapter\.http_port = \d+: cannot listen .*pick a free port/);
});

Deno.test("SIGTERM to an adapter still waiting for its broker stops it cleanly (exit 0), not by the signal's default action", async () => {
  await using fake = startFakeBigQuery();
  // Nothing listens on port 1: the adapter keeps trying, serving its /readyz (503) meanwhile.
  const a = adapter("mqtt://127.0.0.1:1", fake.url, "waiting", ["--http.bind=127.0.0.1"]);
  try {
    await a.waitFor(/HTTP endpoint .* on (\S+):(\d+)/);
    await a.waitFor(/connection to .* failed/);
    a.child.kill("SIGTERM");
    const status = await a.status;
    assert.deepEqual([status.code, status.signal], [0, null], a.stderr());
  } finally {
    await a.stop();
  }
});
