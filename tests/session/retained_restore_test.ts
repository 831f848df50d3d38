/**
 * Retained messages a broker restores from its SQLite store at start, after an operator lowered
 * the retained limits (limits.max_retained_messages, limits.max_retained_bytes): the broker
 * keeps what fits now, in topic order, and deletes the rest from the store, so a later start
 * with the old, higher limits does not bring them back and no start reads them again. Counted
 * in /metrics, said in one log line. Broker processes (`main.ts`) restarted on one data
 * directory, a real client subscribing after each start.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { DatabaseSync } from "node:sqlite";
import { delay, freePort, RawClient } from "../helpers/broker.ts";
import { type MainProcess, startMain } from "../helpers/main_process.ts";
import { tempProject } from "../helpers/durable.ts";
import { metric, scrape } from "../helpers/ops.ts";

interface Durable extends AsyncDisposable {
  readonly proc: MainProcess;
  readonly port: number;
  /** `/metrics`, parsed. */
  metrics(): Promise<Map<string, number>>;
}

/**
 * `main.ts` in the project copy `dir`, with the SQLite store in `dir/data`, no $SYS (its topics
 * would be retained too).
 */
async function start(dir: string, args: string[] = []): Promise<Durable> {
  const port = freePort();
  const proc = startMain(dir, [
    "--general.secure=false",
    "--general.bind=127.0.0.1",
    "--general.websocket=false",
    "--general.sys_interval=0",
    `--ports.tcp=${port}`,
    "--storage.enabled=true",
    ...args,
  ]);
  try {
    await proc.waitFor(/listening for MQTT over tcp/);
    const http = await proc.waitFor(/HTTP endpoint .* on (\S+):(\d+)/);
    const url = `http://127.0.0.1:${http[2]}`;
    return { proc, port, metrics: () => scrape(url), [Symbol.asyncDispose]: () => stop(proc) };
  } catch (e) {
    await proc.stop();
    throw e;
  }
}

/** SIGTERM: a graceful stop writes what the journal holds. */
async function stop(proc: MainProcess): Promise<void> {
  const status = await proc.stop();
  assert.equal(status.code, 0, proc.output());
}

/** Publishes retained QoS 1 messages (acknowledged once stored), in the order given. */
async function retain(
  port: number,
  topics: string[],
  size = 10,
  properties: Record<string, unknown> = {},
): Promise<void> {
  await using pub = await RawClient.connect(port, 5);
  await pub.handshake(`pub-${crypto.randomUUID()}`);
  let messageId = 0;
  for (const topic of topics) {
    const payload = Buffer.alloc(size, 0x2e);
    payload.write(topic);
    await pub.sendPacket({
      cmd: "publish",
      topic,
      qos: 1,
      messageId: ++messageId,
      retain: true,
      payload,
      properties,
    });
    // 0x10 (no matching subscribers) is a success too.
    assert.ok(((await pub.expect("puback")).reasonCode as number ?? 0) < 0x80);
  }
}

/** The topics of the retained messages a new subscription to `filter` receives, sorted. */
async function retainedTopics(port: number, filter: string): Promise<string[]> {
  await using s = await RawClient.connect(port, 5);
  await s.handshake(`sub-${crypto.randomUUID()}`);
  await s.sendPacket({
    cmd: "subscribe",
    messageId: 1,
    subscriptions: [{ topic: filter, qos: 0 }],
  });
  await s.expect("suback");
  const topics: string[] = [];
  for (;;) {
    const p = await s.next(500).catch(() => null) as { cmd: string; topic?: string } | null;
    if (p === null) return topics.sort();
    if (p.cmd === "publish") topics.push(p.topic!);
  }
}

/** The topics the store holds retained messages of (read with the broker stopped). */
function storedTopics(dir: string): string[] {
  const db = new DatabaseSync(`${dir}/data/mcloudtt.db`, { readOnly: true });
  try {
    return db.prepare("SELECT topic FROM retained ORDER BY topic").all().map((r) =>
      String(r.topic)
    );
  } finally {
    db.close();
  }
}

const names = (prefix: string, n: number) =>
  Array.from({ length: n }, (_, i) => `${prefix}/${String(i).padStart(2, "0")}`);

const dropped = (reason: string) => `mcloudtt_retained_dropped_at_start_total{reason="${reason}"}`;

Deno.test("a restart with a lowered max_retained_messages keeps the first topics and deletes the rest from the store", async () => {
  await using p = await tempProject();
  const dir = p.dir;
  const all = names("r", 20);
  {
    await using b = await start(dir);
    // Newest topic first: the store's own order is not the order kept.
    await retain(b.port, [...all].reverse());
  }
  {
    await using b = await start(dir, ["--limits.max_retained_messages=5"]);
    await b.proc.waitFor(
      /15 of 20 stored retained messages not restored.*5 held.*15 over limits\.max_retained_messages, 0 over limits\.max_retained_bytes; deleted from the store/,
    );
    assert.deepEqual(await retainedTopics(b.port, "r/#"), all.slice(0, 5));
    const m = await b.metrics();
    assert.equal(metric(m, dropped("max_retained_messages")), 15);
    assert.equal(metric(m, dropped("max_retained_bytes")), 0);
    assert.equal(metric(m, "mcloudtt_retained_messages"), 5);
  }
  // Before: all 20 stayed in the store, read at every start and served again here.
  assert.deepEqual(storedTopics(dir), all.slice(0, 5));
  await using b = await start(dir);
  assert.deepEqual(await retainedTopics(b.port, "r/#"), all.slice(0, 5));
  assert.equal(metric(await b.metrics(), dropped("max_retained_messages")), 0);
});

Deno.test("a restart with a lowered max_retained_bytes keeps what fits in topic order and deletes the rest", async () => {
  await using p = await tempProject();
  const dir = p.dir;
  const all = names("b", 8);
  {
    await using b = await start(dir);
    await retain(b.port, [...all].reverse(), 10_000);
  }
  {
    // About 10.3 kB each as the retained store counts them (retained.ts): three fit.
    await using b = await start(dir, ["--limits.max_retained_bytes=35000"]);
    await b.proc.waitFor(/5 over limits\.max_retained_bytes; deleted from the store/);
    assert.deepEqual(await retainedTopics(b.port, "b/#"), all.slice(0, 3));
    const m = await b.metrics();
    assert.equal(metric(m, dropped("max_retained_bytes")), 5);
    assert.equal(metric(m, dropped("max_retained_messages")), 0);
  }
  assert.deepEqual(storedTopics(dir), all.slice(0, 3));
});

Deno.test("a retained message that expired while the broker was down takes no place at the restart", async () => {
  await using p = await tempProject();
  const dir = p.dir;
  let expiresAt: number;
  {
    await using b = await start(dir);
    // "e/0" sorts first: had it taken a place, the one place left below would be gone.
    await retain(b.port, ["e/0"], 10, { messageExpiryInterval: 1 });
    expiresAt = Date.now() + 1000;
    await retain(b.port, ["e/1"]);
  }
  await delay(Math.max(0, expiresAt - Date.now() + 100));
  {
    await using b = await start(dir, ["--limits.max_retained_messages=1"]);
    assert.deepEqual(await retainedTopics(b.port, "e/#"), ["e/1"]);
    const m = await b.metrics();
    assert.equal(metric(m, dropped("expired")), 1);
    assert.equal(metric(m, dropped("max_retained_messages")), 0);
  }
  assert.deepEqual(storedTopics(dir), ["e/1"]);
});
