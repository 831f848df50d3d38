/**
 * `limits.max_queued_bytes_total` bounds what every session queue holds together: each message
 * once however many queues it waits in, plus a small cost per entry. Offline sessions filling
 * their queues stop at it, and the broker's memory with them (read from its own process);
 * what was queued is delivered when they come back, and nothing else is.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import mqttPacket from "mqtt-packet";
import { RawClient } from "../helpers/broker.ts";
import { type BrokerProcess, mib, startBrokerProcess } from "../helpers/broker_process.ts";

const MIB = 1024 * 1024;

/** Starts an offline persistent session of `clientId` subscribed to `topic` at QoS 1. */
async function offlineSubscriber(port: number, clientId: string, topic: string): Promise<void> {
  await using s = await RawClient.connect(port, 5);
  await s.handshake(clientId, 5, { clean: false, properties: { sessionExpiryInterval: 3600 } });
  await s.sendPacket({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic, qos: 1 }] });
  await s.expect("suback");
}

/** Resumes `clientId` and acknowledges what arrives until nothing has for a while. */
async function resume(port: number, clientId: string): Promise<string[]> {
  await using s = await RawClient.connect(port, 5);
  await s.handshake(clientId, 5, { clean: false, properties: { sessionExpiryInterval: 3600 } });
  const got = await s.drainPublishes(1500);
  return got.map((p) => new TextDecoder().decode(p.subarray(0, 16)).trimEnd());
}

/** Publishes QoS 1 messages of `size` bytes, each starting with its label, and waits for PUBACK. */
async function publish(
  pub: RawClient,
  items: { topic: string; label: string }[],
  size: number,
): Promise<void> {
  let id = 0;
  for (const { topic, label } of items) {
    const payload = Buffer.alloc(size, 0x2e);
    payload.write(label.padEnd(16));
    id = (id % 60000) + 1;
    await pub.sendPacket({ cmd: "publish", topic, qos: 1, messageId: id, payload });
    await pub.expect("puback");
  }
}

async function queuedState(broker: BrokerProcess) {
  const mem = await broker.memory();
  return { mem, m: broker.metrics };
}

Deno.test("all session queues together stop at max_queued_bytes_total", async () => {
  await using broker = await startBrokerProcess({
    general: { websocket: false },
    limits: {
      max_queued_bytes_total: 8 * MIB,
      max_queued_bytes: 1024 * MIB,
      max_queued_messages: 100_000,
    },
  });
  const port = broker.ports.tcp;
  for (let i = 0; i < 4; i++) await offlineSubscriber(port, `away-${i}`, `t/${i}`);
  await using pub = await RawClient.connect(port, 5);
  await pub.handshake("publisher");
  const before = await queuedState(broker);
  // 800 distinct messages of 64 KiB (50 MiB), 200 for each offline session.
  const items = Array.from({ length: 800 }, (_, i) => ({ topic: `t/${i % 4}`, label: `m${i}` }));
  await publish(pub, items, 64 * 1024);
  const { mem: after, m } = await queuedState(broker);
  const held = after.heapUsed + after.external - before.mem.heapUsed - before.mem.external;
  // Before the bound: all 800 queued (each session's 12.5 MiB is under its own 1 GiB), +50 MiB.
  assert.ok(m.queuedBytes <= 8 * MIB, `queues hold ${m.queuedBytes} bytes`);
  assert.ok(m.queuedBytes > 7 * MIB, `queues hold only ${m.queuedBytes} bytes`);
  assert.ok(m.droppedQueueTotal >= 650, `${m.droppedQueueTotal} dropped at the total`);
  assert.ok(held < 20 * MIB, `heap and external grew by ${mib(held)}`);

  // Every queued message arrives when its session comes back, and the gauges go back to 0.
  let delivered = 0;
  for (let i = 0; i < 4; i++) delivered += (await resume(port, `away-${i}`)).length;
  assert.equal(delivered, 800 - m.droppedQueueTotal);
  const { m: end } = await queuedState(broker);
  assert.equal(end.queuedMessages, 0);
  assert.equal(end.queuedBytes, 0);
});

Deno.test("a message queued for many sessions counts once against max_queued_bytes_total", async () => {
  await using broker = await startBrokerProcess({
    general: { websocket: false },
    limits: { max_queued_bytes_total: 2 * MIB, max_packet_size: 2 * MIB },
  });
  const port = broker.ports.tcp;
  for (let i = 0; i < 40; i++) await offlineSubscriber(port, `fan-${i}`, "fan");
  await using pub = await RawClient.connect(port, 5);
  await pub.handshake("publisher");
  // 1 MiB for 40 sessions: 40 MiB if every queue counted it, 1 MiB and 40 entries once.
  await publish(pub, [{ topic: "fan", label: "big" }], MIB);
  const { m } = await queuedState(broker);
  assert.equal(m.droppedQueueTotal, 0);
  assert.equal(m.queuedMessages, 40);
  assert.ok(m.queuedBytes >= MIB && m.queuedBytes < MIB + 64 * 1024, `${m.queuedBytes} bytes`);
  for (let i = 0; i < 40; i += 13) assert.deepEqual(await resume(port, `fan-${i}`), ["big"]);
  // A second message too large for what is left is not queued, even for the resumed ones.
  await publish(pub, [{ topic: "fan", label: "second" }], MIB + 512 * 1024);
  const { m: later } = await queuedState(broker);
  assert.equal(later.droppedQueueTotal, 40);
});

for (const policy of ["oldest", "newest"] as const) {
  Deno.test(`at max_queued_bytes_total, drop policy "${policy}" drops only the session's own messages`, async () => {
    await using broker = await startBrokerProcess({
      general: { websocket: false },
      limits: { max_queued_bytes_total: 1 * MIB, queue_drop_policy: policy },
    });
    const port = broker.ports.tcp;
    await offlineSubscriber(port, "early", "e");
    await offlineSubscriber(port, "late", "l");
    await using pub = await RawClient.connect(port, 5);
    await pub.handshake("publisher");
    // "early" holds 300 KiB; "late" gets 20 x 100 KiB, of which about 7 fit beside it.
    await publish(pub, [{ topic: "e", label: "e0" }, { topic: "e", label: "e1" }], 150 * 1024);
    const late = Array.from({ length: 20 }, (_, i) => ({ topic: "l", label: `l${i}` }));
    await publish(pub, late, 100 * 1024);
    assert.deepEqual(await resume(port, "early"), ["e0", "e1"]);
    const got = await resume(port, "late");
    assert.ok(got.length >= 5 && got.length <= 8, got.join(" "));
    const first = policy === "oldest" ? 20 - got.length : 0;
    assert.deepEqual(got, Array.from({ length: got.length }, (_, i) => `l${first + i}`));
  });
}

Deno.test("many small distinct messages stay within max_queued_bytes_total in the broker's heap", async () => {
  await using broker = await startBrokerProcess({
    general: { websocket: false },
    limits: { max_queued_bytes_total: 4 * MIB, max_queued_messages: 1_000_000 },
  });
  const port = broker.ports.tcp;
  const SESSIONS = 100;
  for (let i = 0; i < SESSIONS; i++) await offlineSubscriber(port, `small-${i}`, `s/${i}`);
  const before = await broker.memory();
  await using pub = await RawClient.connect(port, 5);
  await pub.handshake("publisher");
  // 60000 messages of 8 bytes, each for one session, sent 500 at a time.
  for (let i = 0; i < 60_000; i += 500) {
    const packets = Array.from({ length: 500 }, (_, k) =>
      mqttPacket.generate({
        cmd: "publish",
        topic: `s/${(i + k) % SESSIONS}`,
        qos: 1,
        messageId: ((i + k) % 60000) + 1,
        payload: Buffer.alloc(8, k),
        dup: false,
        retain: false,
      }, { protocolVersion: 5 }));
    await pub.send(Buffer.concat(packets));
    for (let k = 0; k < 500; k++) await pub.expect("puback");
  }
  const after = await broker.memory();
  const m = broker.metrics;
  const held = after.heapUsed + after.external - before.heapUsed - before.external;
  assert.ok(m.droppedQueueTotal > 0, "the total was reached");
  // Before: 4 MiB counted 77 bytes for each message, 54000 of them took +31 MiB.
  assert.ok(held < 6 * MIB, `${m.queuedMessages} queued messages held ${mib(held)}`);
});

Deno.test('an offline queue with drop policy "oldest" does not grow with what passes through it', async () => {
  await using broker = await startBrokerProcess({
    general: { websocket: false },
    limits: { max_queued_messages: 10, queue_drop_policy: "oldest" },
  });
  const port = broker.ports.tcp;
  await offlineSubscriber(port, "away", "t");
  await using pub = await RawClient.connect(port, 5);
  await pub.handshake("publisher");
  const before = await broker.memory();
  // 300000 messages through a queue of 10, 1000 at a time.
  for (let i = 0; i < 300_000; i += 1000) {
    const packets = Array.from({ length: 1000 }, (_, k) =>
      mqttPacket.generate({
        cmd: "publish",
        topic: "t",
        qos: 1,
        messageId: ((i + k) % 60000) + 1,
        payload: Buffer.alloc(8),
        dup: false,
        retain: false,
      }, { protocolVersion: 5 }));
    await pub.send(Buffer.concat(packets));
    for (let k = 0; k < 1000; k++) await pub.expect("puback");
  }
  const after = await broker.memory();
  assert.equal(broker.metrics.queuedMessages, 10);
  // Before: the queue's array kept a slot for every message dropped from its head, +3.2 MiB.
  const grew = after.heapUsed - before.heapUsed;
  assert.ok(grew < MIB, `heap grew by ${mib(grew)}`);
});

Deno.test("expired messages waiting for an absent client make room at max_queued_bytes_total", async () => {
  await using broker = await startBrokerProcess({
    general: { websocket: false },
    limits: { max_queued_bytes_total: 1 * MIB, sweep_interval_ms: 100 },
  });
  const port = broker.ports.tcp;
  await offlineSubscriber(port, "away", "telemetry");
  await offlineSubscriber(port, "other", "commands");
  await using pub = await RawClient.connect(port, 5);
  await pub.handshake("publisher");
  // Telemetry that expires after 1 s fills the total (the away session takes about 660).
  for (let i = 1; i <= 800; i++) {
    await pub.sendPacket({
      cmd: "publish",
      topic: "telemetry",
      qos: 1,
      messageId: i,
      payload: Buffer.alloc(1000),
      properties: { messageExpiryInterval: 1 },
    });
    await pub.expect("puback");
  }
  await broker.memory();
  assert.ok(broker.metrics.droppedQueueTotal > 0, "the total was reached");
  await new Promise((r) => setTimeout(r, 1200));
  // All of it expired. The first command is turned away; the sweep after it drops what expired.
  await publish(pub, [{ topic: "commands", label: "c0" }], 1000);
  await new Promise((r) => setTimeout(r, 300));
  const later = Array.from({ length: 5 }, (_, i) => ({ topic: "commands", label: `c${i + 1}` }));
  await publish(pub, later, 1000);
  await broker.memory();
  // Before: the expired telemetry held the total until its client came back (a day here).
  assert.equal(broker.metrics.queuedMessages, 5);
  assert.ok(broker.metrics.droppedExpired >= 600, `${broker.metrics.droppedExpired} expired`);
  assert.deepEqual(await resume(port, "other"), ["c1", "c2", "c3", "c4", "c5"]);
  assert.deepEqual(await resume(port, "away"), []);
  await broker.memory();
  assert.equal(broker.metrics.queuedBytes, 0);
});
