/**
 * A message queued for many offline sessions stays one copy through restarts on the SQLite
 * store, also when some clients come back between restarts and leave again before they
 * acknowledge it (a dropped connection): their sessions are written whole, message included.
 * Before, each process wrote a message it had restored as a new row (the store knew its rows by
 * the object it had written, and a restored message is another object), so every restart in
 * which some sessions of a message were written and others not split them between two rows, and
 * the next start loaded one copy per row: 2, 4, 8, 16 copies after the 2nd to 5th restart of 32
 * sessions, and 32 rows (one per session) at the start after that: 33,572,896 bytes in
 * mcloudtt_queued_bytes for a 1 MiB message, heap and buffers 40.3 MiB against 9.3. Past
 * limits.max_queued_bytes_total, a message published then was acknowledged and dropped for
 * every session (32 drops). Now the row keeps the message's id (schema 4): the session written again refers
 * to the same row, and the sessions restored from it share one Message. Broker processes
 * restarted on one data directory; each subscriber comes back and must get both messages.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { DatabaseSync } from "node:sqlite";
import { connectClient, RawClient } from "../helpers/broker.ts";
import { type BrokerProcess, mib, startBrokerProcess } from "../helpers/broker_process.ts";
import { DB_FILE } from "../../src/store/sqlite.ts";

const MIB = 1024 * 1024;
const SESSIONS = 32;
const RESTARTS = 5;
const SIZE = MIB;
/** Room for one copy of the message and a second one; 16 copies are 16 MiB. */
const TOTAL = 6 * MIB;
const persistent = { clean: false, properties: { sessionExpiryInterval: 3600 } };

/** A QoS 1 message of `size` bytes to "t", starting with `label`, published with MQTT.js. */
async function publish(b: BrokerProcess, label: string, size: number): Promise<void> {
  await using pub = await connectClient(b.ports.tcp, { clientId: `pub-${label}` });
  const payload = Buffer.alloc(size, 0x2e);
  payload.write(label);
  // Resolves on PUBACK: the message is stored for every session.
  await pub.publishAsync("t", payload, { qos: 1 });
}

/** The label a payload starts with. */
function label(payload: Uint8Array): string {
  return new TextDecoder().decode(payload.subarray(0, 2));
}

/** Rows of the store's messages table (the broker stopped). */
function messageRows(dir: string): number {
  const db = new DatabaseSync(`${dir}/${DB_FILE}`);
  try {
    return Number(db.prepare("SELECT count(*) AS n FROM messages").get()?.n);
  } finally {
    db.close();
  }
}

/** Heap and buffers after a full GC, and the metrics. */
async function measured(b: BrokerProcess): Promise<number> {
  const m = await b.memory();
  return m.heapUsed + m.external;
}

Deno.test("a message shared by sessions stays one copy through restarts with clients coming and going", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-shared-restarts-" });
  const config = {
    general: { websocket: false },
    storage: { enabled: true, dir },
    limits: { max_queued_bytes_total: TOTAL, max_packet_size: 2 * MIB },
  };
  try {
    let stored: number;
    {
      await using b = await startBrokerProcess(config);
      for (let i = 0; i < SESSIONS; i++) {
        await using s = await RawClient.connect(b.ports.tcp, 5);
        await s.handshake(`s-${i}`, 5, persistent);
        await s.sendPacket({
          cmd: "subscribe",
          messageId: 1,
          subscriptions: [{ topic: "t", qos: 1 }],
        });
        await s.expect("suback");
      }
      await publish(b, "m1", SIZE);
      await b.memory();
      stored = b.metrics.queuedBytes;
      assert.ok(stored > SIZE && stored < 2 * SIZE, `${stored} bytes queued`);
    }
    let first = 0;
    const seen: string[] = [];
    for (let restart = 1; restart <= RESTARTS; restart++) {
      await using b = await startBrokerProcess(config);
      const heap = await measured(b);
      if (restart === 1) first = heap;
      seen.push(`${b.metrics.queuedBytes} B (heap + external ${mib(heap)})`);
      assert.equal(b.metrics.queuedBytes, stored, `after restart ${restart}: ${seen.join(", ")}`);
      // Half the sessions of each group that shared a row before come back, get the message and
      // leave without acknowledging it (a lost connection): it is in flight for them, written
      // whole with their sessions.
      for (let i = 0; i < SESSIONS; i++) {
        if (((i >> (restart - 1)) & 1) === 0) continue;
        await using s = await RawClient.connect(b.ports.tcp, 5);
        await s.handshake(`s-${i}`, 5, persistent);
        assert.equal(label((await s.expect("publish")).payload as Uint8Array), "m1");
        await s.sendPacket({ cmd: "disconnect" });
        await s.expectClosed();
      }
    }
    // The data directory holds the message once (before: a row for each copy).
    assert.equal(messageRows(dir), 1);
    await using b = await startBrokerProcess(config);
    const last = await measured(b);
    console.log(
      `queued bytes after each restart: ${seen.join(", ")}; last ${b.metrics.queuedBytes} B, ` +
        `heap + external ${mib(last)}`,
    );
    // Before: 16 copies of 1 MiB after the 5th restart.
    assert.equal(b.metrics.queuedBytes, stored);
    assert.ok(last - first < 4 * MIB, `restarts grew the heap by ${mib(last - first)}`);

    // Acknowledged to its publisher: it must reach every session it was queued for.
    await publish(b, "m2", 1024);
    await b.memory();
    assert.equal(b.metrics.droppedQueueTotal, 0, "messages dropped at max_queued_bytes_total");
    const missing: string[] = [];
    for (let i = 0; i < SESSIONS; i++) {
      await using s = await RawClient.connect(b.ports.tcp, 5);
      await s.handshake(`s-${i}`, 5, persistent);
      const got: string[] = [];
      while (got.length < 2) {
        const p = await s.next(3000).catch(() => null);
        if (p === null || p.cmd !== "publish") break;
        got.push(label(p.payload as Uint8Array));
        await s.sendPacket({ cmd: "puback", messageId: p.messageId });
      }
      if (got.join() !== "m1,m2") missing.push(`s-${i}: ${got.join() || "nothing"}`);
    }
    assert.deepEqual(missing, []);
    // A PUBACK is answered by nothing: wait until the broker has read the last one (nothing
    // queued or in flight) before stopping it, or the stop may close that connection first.
    for (let i = 0; i < 100; i++) {
      await b.memory();
      if (b.metrics.queuedBytes === 0) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(b.metrics.queuedBytes, 0, "every message acknowledged");
    await b.stop();
    assert.equal(messageRows(dir), 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
