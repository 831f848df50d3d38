/**
 * Large messages: a publish fanned out to many subscribers shares one payload buffer instead of
 * a copy per subscriber, and nothing of it stays after everyone left. Memory is read from a
 * broker in its own process (peak RSS from /proc, ArrayBuffer memory after a full GC); the bytes
 * themselves are checked with real clients.
 */
import assert from "node:assert/strict";
import {
  collect,
  connectClient,
  delay,
  endClient,
  startBroker,
  subscriber,
} from "../helpers/broker.ts";
import { mib, peakRssOf, resetPeakRss, startBrokerProcess } from "../helpers/broker_process.ts";
import { frame, str, varint } from "../helpers/wire.ts";

const MIB = 1024 * 1024;

/** A raw 3.1.1 client that counts the bytes it reads (and discards them). */
async function byteCounter(port: number, id: string, filter: string | null) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(frame(0x10, [...str("MQTT"), 4, 0x02, 0, 60, ...str(id)]));
  if (filter !== null) await conn.write(frame(0x82, [0, 1, ...str(filter), 0]));
  let bytes = 0;
  const done = (async () => {
    const buf = new Uint8Array(256 * 1024);
    for (;;) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) return;
      bytes += n;
    }
  })();
  return {
    conn,
    get bytes(): number {
      return bytes;
    },
    async until(n: number, timeoutMs = 20_000): Promise<void> {
      const deadline = Date.now() + timeoutMs;
      while (bytes < n) {
        if (Date.now() > deadline) throw new Error(`${id}: ${bytes} of ${n} bytes`);
        await delay(5);
      }
    },
    async close(): Promise<void> {
      conn.close();
      await done;
    },
  };
}

/** A 3.1.1 PUBLISH of `size` bytes of payload. */
function bigPublish(topic: string, size: number, qos: 0 | 1): Uint8Array {
  const head = [...str(topic), ...(qos > 0 ? [0, 1] : [])];
  const rem = head.length + size;
  const prefix = [0x30 | (qos << 1), ...varint(rem), ...head];
  const out = new Uint8Array(prefix.length + size);
  out.set(prefix);
  out.fill(0x5a, prefix.length);
  return out;
}

Deno.test("a 20 MB publish to 20 subscribers shares one payload buffer, and none of it stays after they leave", async () => {
  const size = 20 * MIB;
  const subscribers = 20;
  await using broker = await startBrokerProcess({ limits: { max_packet_size: 32 * MIB } });
  const port = broker.ports.tcp;
  const subs = await Promise.all(
    Array.from({ length: subscribers }, (_, i) => byteCounter(port, `big-sub-${i}`, "big")),
  );
  const pub = await byteCounter(port, "big-pub", null);
  // CONNACK (4 bytes) and SUBACK (5): subscribed.
  await Promise.all([...subs.map((s) => s.until(9)), pub.until(4)]);
  const before = await broker.memory();
  const peakReset = resetPeakRss(broker.pid);
  const packet = bigPublish("big", size, 1);
  // The delivered PUBLISH is QoS 0 (the subscription's), 2 bytes shorter.
  const delivered = packet.length - 2;
  for (let w = 0; w < packet.length;) w += await pub.conn.write(packet.subarray(w));
  await pub.until(8); // PUBACK
  await Promise.all(subs.map((s) => s.until(9 + delivered)));
  const peak = peakRssOf(broker.pid) - before.rss;
  await Promise.all([...subs.map((s) => s.close()), pub.close()]);
  await delay(100);
  const after = await broker.memory();
  const left = after.external - before.external;
  console.log(
    `${subscribers} x ${mib(size)}: peak RSS +${mib(peak)}${peakReset ? "" : " (since start)"}, ` +
      `after all left: external ${left >= 0 ? "+" : ""}${mib(left)}, ` +
      `RSS ${mib(after.rss)} (before ${mib(before.rss)})`,
  );
  // A copy per subscriber would be 400 MiB; one inbound buffer plus the shared payload is ~40.
  assert.ok(peak < 5 * size, `peak RSS grew by ${mib(peak)} for ${subscribers} x ${mib(size)}`);
  // The encoding cache and the outboxes let go of the payload once it was written.
  assert.ok(left < 4 * MIB, `${mib(left)} of ArrayBuffers stayed after everyone left`);
});

Deno.test("large payloads arrive intact on every path: forms, Subscription Identifiers, 3.1.1, queued, retained", async () => {
  await using b = await startBroker({ limits: { max_packet_size: 8 * MIB } });
  const payload = new Uint8Array(3 * MIB + 17);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 7 + (i >> 12)) & 0xff;
  const v5 = await connectClient(b.port, { clientId: "v5" });
  const v5id = await connectClient(b.port, { clientId: "v5id" });
  const v4 = await connectClient(b.port, { clientId: "v4", protocolVersion: 4 });
  const offline = await connectClient(b.port, {
    clientId: "later",
    clean: false,
    properties: { sessionExpiryInterval: 60 },
  });
  const pub = await connectClient(b.port, { clientId: "pub" });
  try {
    await v5.subscribeAsync("big/#", { qos: 1 });
    await v5id.subscribeAsync("big/#", { qos: 1, properties: { subscriptionIdentifier: 7 } });
    await v4.subscribeAsync("big/#", { qos: 0 });
    await offline.subscribeAsync("big/#", { qos: 1 });
    await endClient(offline);
    const inboxes = [collect(v5), collect(v5id), collect(v4)];
    await pub.publishAsync("big/one", Buffer.from(payload), {
      qos: 1,
      retain: true,
      properties: { contentType: "application/octet-stream" },
    });
    for (const inbox of inboxes) {
      const m = await inbox.next(10_000);
      assert.equal(m.topic, "big/one");
      assert.ok(Buffer.from(payload).equals(m.packet.payload as Buffer), "payload intact");
    }
    assert.deepEqual(inboxes[1].messages[0].packet.properties?.subscriptionIdentifier, 7);
    assert.equal(inboxes[0].messages[0].packet.properties?.contentType, "application/octet-stream");
    // Queued for the offline session, and retained for a new subscriber.
    const back = await connectClient(b.port, {
      clientId: "later",
      clean: false,
      properties: { sessionExpiryInterval: 60 },
    });
    const queued = await collect(back).next(10_000);
    assert.ok(Buffer.from(payload).equals(queued.packet.payload as Buffer), "queued intact");
    await endClient(back);
    const late = await subscriber(b.port, "big/+", 1, { clientId: "late" });
    const r = await late.inbox.next(10_000);
    assert.equal(r.packet.retain, true);
    assert.ok(Buffer.from(payload).equals(r.packet.payload as Buffer), "retained intact");
    await endClient(late);
  } finally {
    await Promise.all([v5, v5id, v4, pub].map((c) => endClient(c)));
  }
});

Deno.test("an offline session's queue stops at max_queued_bytes, and memory with it", async () => {
  const size = 1_000_000;
  await using broker = await startBrokerProcess({ limits: { max_queued_bytes: 8 * MIB } });
  const port = broker.ports.tcp;
  // A persistent 3.1.1 session (Clean Session 0) subscribed at QoS 1, then gone.
  const away = await Deno.connect({ hostname: "127.0.0.1", port });
  await away.write(frame(0x10, [...str("MQTT"), 4, 0x00, 0, 60, ...str("away")]));
  await away.write(frame(0x82, [0, 1, ...str("q"), 1]));
  await away.read(new Uint8Array(64)); // CONNACK (and perhaps SUBACK)
  await delay(100);
  away.close();
  const pub = await byteCounter(port, "q-pub", null);
  await pub.until(4);
  const before = await broker.memory();
  const count = 64;
  for (let i = 0; i < count; i++) {
    const p = bigPublish("q", size, 1);
    for (let w = 0; w < p.length;) w += await pub.conn.write(p.subarray(w));
  }
  await pub.until(4 + 4 * count); // every PUBACK
  const after = await broker.memory();
  const grew = after.external - before.external;
  console.log(`${count} x ${mib(size)} queued for an offline session: external +${mib(grew)}`);
  await pub.close();
  // 8 MiB of payload fit: 8 messages; the rest were dropped and counted.
  assert.equal(broker.metrics.droppedQueueFull, count - 8);
  assert.ok(grew < 24 * MIB, `ArrayBuffers grew by ${mib(grew)}`);
});

Deno.test("a large payload reaches a WebSocket subscriber intact (header and shared payload in separate frames)", async () => {
  await using b = await startBroker({ general: { websocket: true } });
  const ws = b.broker.addresses.find((a) => a.kind === "ws")!;
  const payload = new Uint8Array(300_000);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 13) & 0xff;
  const sub = await connectClient(
    ws.port,
    {
      clientId: "ws-sub",
      protocol: "ws",
      path: "/mqtt",
    } as Parameters<typeof connectClient>[1],
  );
  const pub = await connectClient(b.port, { clientId: "tcp-pub" });
  try {
    const inbox = collect(sub);
    await sub.subscribeAsync("big", { qos: 1 });
    await pub.publishAsync("big", Buffer.from(payload), { qos: 1 });
    await pub.publishAsync("big", "small after", { qos: 1 });
    const m = await inbox.next(10_000);
    assert.ok(Buffer.from(payload).equals(m.packet.payload as Buffer), "payload intact");
    assert.equal((await inbox.next()).payload, "small after");
  } finally {
    await endClient(sub);
    await endClient(pub);
  }
});
