/**
 * Memory at start with many stored retained messages and low retained limits: the broker reads
 * the store page by page in topic order and stops reading messages once nothing more fits, so its
 * peak RSS is bounded by the limits and the page size, not by what the data directory holds. A
 * broker process (`main.ts`) started on a data directory written through the SQLite store class
 * (200,000 retained messages, fast), its peak RSS read from /proc/<pid>/status (VmHWM).
 */
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { freePort, RawClient } from "../helpers/broker.ts";
import { type MainProcess, startMain } from "../helpers/main_process.ts";
import { mib, peakRssOf } from "../helpers/broker_process.ts";
import { tempProject } from "../helpers/durable.ts";
import { metric, scrape } from "../helpers/ops.ts";
import { SqliteStore } from "../../src/store/sqlite.ts";
import type { StoreOp } from "../../src/store/types.ts";

const MIB = 1024 * 1024;
const STORED = 200_000;
const PAYLOAD = 200;

/** Topic `i` of the store: zero-padded, so topic order is number order. */
const topicOf = (i: number) => `fleet/${String(i).padStart(6, "0")}/state`;

/** Writes STORED retained messages into `dir/data` through the store, in batches. */
async function fillStore(dir: string): Promise<void> {
  const store = new SqliteStore({ dir: `${dir}/data`, sync: "async" });
  await store.open();
  try {
    const payload = new Uint8Array(PAYLOAD).fill(0x2e);
    // Newest topic first: the store's own order is not the order kept.
    for (let end = STORED; end > 0; end -= 10_000) {
      const ops: StoreOp[] = [];
      for (let i = end - 1; i >= end - 10_000; i--) {
        ops.push({
          type: "retain",
          msg: {
            topic: topicOf(i),
            payload,
            qos: 1,
            retain: true,
            props: null,
            expiresAt: 0,
            origin: "filler",
          },
        });
      }
      await store.write(ops);
    }
  } finally {
    await store.close();
  }
}

async function start(dir: string, args: string[]): Promise<{ proc: MainProcess; port: number }> {
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
    await proc.waitFor(/listening for MQTT over tcp/, 120_000);
    return { proc, port };
  } catch (e) {
    await proc.stop();
    throw e;
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

function storedCount(dir: string): number {
  const db = new DatabaseSync(`${dir}/data/mcloudtt.db`, { readOnly: true });
  try {
    return Number(db.prepare("SELECT count(*) AS n FROM retained").get()?.n);
  } finally {
    db.close();
  }
}

/** A filled data directory, made once and copied for each test (each start deletes from it). */
let template: Promise<string> | null = null;

async function filledProject(): Promise<{ dir: string } & AsyncDisposable> {
  template ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "mcloudtt-retained-fill-" });
    await fillStore(dir);
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    return dir;
  })();
  const from = await template;
  const p = await tempProject();
  await Deno.mkdir(`${p.dir}/data`);
  for await (const e of Deno.readDir(`${from}/data`)) {
    await Deno.copyFile(`${from}/data/${e.name}`, `${p.dir}/data/${e.name}`);
  }
  return p;
}

/**
 * Starts the broker on a copy of the filled store with `limit`, checks what it kept, served,
 * counted and left in the store, and returns its peak RSS during the start.
 */
async function restart(limit: string, reason: string): Promise<number> {
  await using p = await filledProject();
  const { proc, port } = await start(p.dir, [limit]);
  let peak: number;
  try {
    // Restored before the listeners open: the peak of the start is in VmHWM now.
    peak = peakRssOf(proc.child.pid);
    console.log(`${limit}: peak RSS at start ${mib(peak)}`);
    await proc.waitFor(/199990 of 200000 stored retained messages not restored/);
    assert.deepEqual(
      await retainedTopics(port, "fleet/#"),
      Array.from({ length: 10 }, (_, i) => topicOf(i)),
    );
    const http = await proc.waitFor(/HTTP endpoint .* on (\S+):(\d+)/);
    const m = await scrape(`http://127.0.0.1:${http[2]}`);
    assert.equal(
      metric(m, `mcloudtt_retained_dropped_at_start_total{reason="${reason}"}`),
      STORED - 10,
    );
  } finally {
    const status = await proc.stop();
    assert.equal(status.code, 0, proc.output());
  }
  assert.equal(storedCount(p.dir), 10);
  return peak;
}

// Loading every message at once, as the start did before, peaked at 566-570 MiB in both cases;
// reading pages and stopping at the limit, 88 MiB (a broker holding nothing: about 85 MiB).
Deno.test("a start with 200,000 stored retained messages and max_retained_messages = 10 stays small", async () => {
  const peak = await restart("--limits.max_retained_messages=10", "max_retained_messages");
  assert.ok(peak < 200 * MIB, `peak RSS ${mib(peak)}`);
});

Deno.test("a start with 200,000 stored retained messages and room for 10 in max_retained_bytes stays small", async () => {
  // 558 bytes each as the retained store counts them (retained.ts): 160 per message, 48 per
  // level (3), the topic twice (18 characters) and once in UTF-8, and 200 of payload.
  const peak = await restart("--limits.max_retained_bytes=5580", "max_retained_bytes");
  assert.ok(peak < 200 * MIB, `peak RSS ${mib(peak)}`);
});
