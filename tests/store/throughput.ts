/**
 * A quick measurement of the SQLite store's batch write throughput, for the
 * README's durability figures (a script, not a test):
 *
 *     deno run --allow-read --allow-write tests/store/throughput.ts [seconds-per-case]
 *
 * Steady state of QoS 1 messages to persistent sessions: every batch enqueues
 * B new messages to each of F sessions, moves the previous batch's to
 * inflight (dequeue + inflight) and acknowledges the one before (inflight-
 * delete): 4 ops per message per session, each message stored once.
 */
import process from "node:process";
import { SqliteStore } from "../../src/store/sqlite.ts";
import type { StoredMessage, StoreOp } from "../../src/store/types.ts";
import { message, session } from "./fixtures.ts";

const seconds = Number(Deno.args[0] ?? 1.5);
const dir = await Deno.makeTempDir({ prefix: "mcloudtt-store-throughput-" });

async function run(sync: "ack-after-write" | "async", batch: number, fanout: number, size: number) {
  const store = new SqliteStore({ dir: `${dir}/${sync}-${batch}-${fanout}-${size}`, sync });
  await store.open();
  const ids = Array.from({ length: fanout }, (_, i) => `s${i}`);
  await store.write(ids.map((id) => ({ type: "session", state: session(id) })));
  const payload = new Uint8Array(size).fill(1);
  let seq = 0;
  let prev: { seq: number; msg: StoredMessage }[] = [];
  let prev2: { seq: number; msg: StoredMessage }[] = [];
  let ops = 0, messages = 0, batches = 0;
  const start = performance.now();
  const cpu0 = process.cpuUsage();
  while (performance.now() - start < seconds * 1000) {
    const now = Array.from({ length: batch }, () => ({ seq: ++seq, msg: message({ payload }) }));
    const b: StoreOp[] = [];
    for (const id of ids) {
      for (const m of now) {
        b.push({ type: "enqueue", clientId: id, seq: m.seq, item: delivery(m.msg) });
      }
      for (const m of prev) {
        b.push({ type: "dequeue", clientId: id, seq: m.seq });
        b.push({
          type: "inflight",
          clientId: id,
          item: { ...delivery(m.msg), packetId: m.seq % 65535 + 1, released: false },
        });
      }
      for (const m of prev2) {
        b.push({ type: "inflight-delete", clientId: id, packetId: m.seq % 65535 + 1 });
      }
    }
    await store.write(b);
    ops += b.length;
    messages += batch;
    batches++;
    [prev2, prev] = [prev, now];
  }
  const s = (performance.now() - start) / 1000;
  const cpu1 = process.cpuUsage(cpu0);
  const cpuS = (cpu1.user + cpu1.system) / 1e6;
  await store.close();
  return {
    ops: ops / s,
    messages: messages / s,
    batches: batches / s,
    msPerBatch: 1000 * s / batches,
    opsPerCpuS: ops / cpuS,
  };
}

function delivery(msg: StoredMessage) {
  return { msg, qos: 1 as const, retain: false, subIds: null };
}

const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
console.log(
  "sync             batch fanout payload   batches/s   ms/batch      ops/s   messages/s  ops/cpu-s",
);
for (
  const [batch, fanout, size] of [[1, 1, 100], [10, 1, 100], [100, 1, 100], [1000, 1, 100], [
    100,
    10,
    100,
  ], [100, 1, 16384]]
) {
  for (const sync of ["ack-after-write", "async"] as const) {
    const r = await run(sync, batch, fanout, size);
    console.log(
      `${sync.padEnd(16)} ${String(batch).padStart(5)} ${String(fanout).padStart(6)} ${
        String(size).padStart(7)
      } ` +
        `${fmt(r.batches).padStart(11)} ${r.msPerBatch.toFixed(3).padStart(10)} ${
          fmt(r.ops).padStart(10)
        } ${fmt(r.messages).padStart(12)} ${fmt(r.opsPerCpuS).padStart(10)}`,
    );
  }
}
await Deno.remove(dir, { recursive: true });
