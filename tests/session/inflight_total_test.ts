/**
 * `limits.max_queued_bytes_total` counts the QoS 1/2 messages in flight (sent, not yet
 * acknowledged) with the queued ones, each message once however many queues and in-flight
 * windows hold it. A client that never acknowledges held up to max_inflight_messages of
 * max_packet_size each, uncounted: read from the broker's own process here. Once the total is
 * reached, a message that would have gone straight into flight is dropped for that session
 * (`queue_total_full`); QoS 0 goes on.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { type Packet, RawClient } from "../helpers/broker.ts";
import { mib, startBrokerProcess } from "../helpers/broker_process.ts";

const MIB = 1024 * 1024;
/** The largest payload a PUBLISH under the default max_packet_size (1 MiB) carries here. */
const NEAR_MIB = MIB - 1024;

type Publish = Packet & { messageId: number; payload: Uint8Array; qos: number };

/** Connects `clientId` subscribed to `topic` at QoS `qos`. */
async function subscribed(
  port: number,
  clientId: string,
  topic: string,
  qos: 0 | 1 | 2 = 1,
  extra: Record<string, unknown> = {},
): Promise<RawClient> {
  const c = await RawClient.connect(port, 5);
  await c.handshake(clientId, 5, extra);
  await c.sendPacket({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic, qos }] });
  await c.expect("suback");
  return c;
}

/**
 * Reads packets until `pubacks` PUBACKs have come (the broker writes a delivery to its publisher
 * before it acknowledges the publish, so every PUBLISH for it came before them); returns the
 * PUBLISH packets read meanwhile, none acknowledged.
 */
async function readUntilAcked(c: RawClient, pubacks: number): Promise<Publish[]> {
  const got: Publish[] = [];
  while (pubacks > 0) {
    const p = await c.next(10_000);
    if (p === null) throw new Error("connection closed");
    if (p.cmd === "puback") pubacks--;
    else if (p.cmd === "publish") got.push(p as Publish);
  }
  return got;
}

/** Sends PINGREQ and waits for PINGRESP: the broker has handled everything sent before it. */
async function settled(c: RawClient): Promise<Publish[]> {
  await c.sendPacket({ cmd: "pingreq" });
  const got: Publish[] = [];
  for (;;) {
    const p = await c.next(10_000);
    if (p === null) throw new Error("connection closed");
    if (p.cmd === "pingresp") return got;
    if (p.cmd === "publish") got.push(p as Publish);
  }
}

Deno.test("clients that never acknowledge hold no more than max_queued_bytes_total in flight", async () => {
  await using broker = await startBrokerProcess({
    general: { websocket: false },
    limits: { max_queued_bytes_total: 8 * MIB },
  });
  const port = broker.ports.tcp;
  const CLIENTS = 4;
  const clients: RawClient[] = [];
  for (let i = 0; i < CLIENTS; i++) clients.push(await subscribed(port, `stuck-${i}`, `own/${i}`));
  const before = await broker.memory();
  // Each publishes 32 distinct messages of about 1 MiB to its own topic and acknowledges none
  // of what it gets back: 128 MiB in flight before the total counted them.
  const received: Publish[][] = [];
  for (let i = 0; i < CLIENTS; i++) {
    const c = clients[i];
    for (let k = 1; k <= 32; k++) {
      const payload = Buffer.alloc(NEAR_MIB, k);
      await c.sendPacket({ cmd: "publish", topic: `own/${i}`, qos: 1, messageId: k, payload });
    }
    received.push(await readUntilAcked(c, 32));
  }
  const after = await broker.memory();
  const m = broker.metrics;
  const held = after.heapUsed + after.external - before.heapUsed - before.external;
  const got = received.reduce((n, r) => n + r.length, 0);
  console.log(
    `${got} of ${32 * CLIENTS} in flight, ${m.droppedQueueTotal} dropped, ` +
      `${m.queuedBytes} bytes counted, heap and external +${mib(held)}`,
  );
  // Before: all 128 in flight, nothing counted or dropped, +128 MiB.
  assert.ok(m.queuedBytes <= 8 * MIB, `${m.queuedBytes} bytes counted`);
  assert.ok(m.queuedBytes > 6 * MIB, `only ${m.queuedBytes} bytes counted`);
  assert.equal(m.queuedMessages, 0);
  assert.equal(got + m.droppedQueueTotal, 32 * CLIENTS);
  assert.ok(got >= 6 && got <= 8, `${got} in flight`);
  assert.ok(held < 16 * MIB, `heap and external grew by ${mib(held)}`);

  // QoS 0 is not counted and not held: it still goes while the total is full.
  await clients[0].sendPacket({ cmd: "publish", topic: "own/0", qos: 0, payload: "q0" });
  const q0 = await settled(clients[0]);
  assert.deepEqual(q0.map((p) => Buffer.from(p.payload).toString()), ["q0"]);
  await broker.memory();
  assert.equal(broker.metrics.queuedBytes, m.queuedBytes);
  assert.equal(broker.metrics.droppedQos0, 0);

  // Acknowledged, nothing is counted any more.
  for (let i = 0; i < CLIENTS; i++) {
    for (const p of received[i]) {
      await clients[i].sendPacket({ cmd: "puback", messageId: p.messageId });
    }
    await settled(clients[i]);
  }
  await broker.memory();
  assert.equal(broker.metrics.queuedBytes, 0);
  for (const c of clients) c.close();
});

Deno.test("a message in flight for some sessions and queued for others counts once", async () => {
  await using broker = await startBrokerProcess({
    general: { websocket: false },
    limits: { max_queued_bytes_total: 2 * MIB, max_packet_size: 2 * MIB },
  });
  const port = broker.ports.tcp;
  const persistent = { clean: false, properties: { sessionExpiryInterval: 3600 } };
  const online: RawClient[] = [];
  for (let i = 0; i < 20; i++) online.push(await subscribed(port, `on-${i}`, "fan"));
  for (let i = 0; i < 20; i++) (await subscribed(port, `off-${i}`, "fan", 1, persistent)).close();
  await using pub = await RawClient.connect(port, 5);
  await pub.handshake("publisher");
  await pub.sendPacket({
    cmd: "publish",
    topic: "fan",
    qos: 1,
    messageId: 1,
    payload: Buffer.alloc(MIB, 1),
  });
  await pub.expect("puback");
  const first = await Promise.all(online.map((c) => c.expect("publish") as Promise<Publish>));
  await broker.memory();
  const m = { ...broker.metrics };
  // 1 MiB, its topic, 512 for its objects, 64 for each of 40 entries: not once per session.
  assert.equal(m.droppedQueueTotal, 0);
  assert.equal(m.queuedMessages, 20);
  assert.equal(m.queuedBytes, MIB + 3 + 512 + 40 * 64);

  // A second one of 1 MiB does not fit beside it, for the online sessions neither.
  await pub.sendPacket({
    cmd: "publish",
    topic: "fan",
    qos: 1,
    messageId: 2,
    payload: Buffer.alloc(MIB, 2),
  });
  await pub.expect("puback");
  for (const c of online) assert.deepEqual(await settled(c), []);
  await broker.memory();
  // Before: the 20 in flight took it, uncounted; only the 20 queues turned it away.
  assert.equal(broker.metrics.droppedQueueTotal, 40);

  // The online sessions acknowledge: the queued entries still hold the message.
  for (let i = 0; i < 20; i++) {
    await online[i].sendPacket({ cmd: "puback", messageId: first[i].messageId });
    await settled(online[i]);
  }
  await broker.memory();
  assert.equal(broker.metrics.queuedBytes, MIB + 3 + 512 + 20 * 64);
  for (let i = 0; i < 20; i++) {
    await using c = await RawClient.connect(port, 5);
    await c.handshake(`off-${i}`, 5, persistent);
    const p = await c.expect("publish") as Publish;
    assert.equal(p.payload.length, MIB);
    await c.sendPacket({ cmd: "puback", messageId: p.messageId });
    await settled(c);
  }
  await broker.memory();
  assert.equal(broker.metrics.queuedBytes, 0);
  assert.equal(broker.metrics.queuedMessages, 0);
  for (const c of online) c.close();
});

Deno.test("at max_queued_bytes_total a new subscription still gets every retained message", async () => {
  await using broker = await startBrokerProcess({
    general: { websocket: false },
    limits: { max_queued_bytes_total: 2 * MIB },
  });
  const port = broker.ports.tcp;
  await using pub = await RawClient.connect(port, 5);
  await pub.handshake("publisher");
  for (let i = 1; i <= 3; i++) {
    await pub.sendPacket({
      cmd: "publish",
      topic: `r/${i}`,
      qos: 1,
      messageId: i,
      retain: true,
      payload: Buffer.alloc(1000, i),
    });
    await pub.expect("puback");
  }
  // A client that never acknowledges fills the total.
  await using stuck = await subscribed(port, "stuck", "own");
  for (let k = 1; k <= 3; k++) {
    const payload = Buffer.alloc(NEAR_MIB, k);
    await stuck.sendPacket({ cmd: "publish", topic: "own", qos: 1, messageId: k, payload });
  }
  const inflight = await readUntilAcked(stuck, 3);
  await broker.memory();
  const full = broker.metrics.queuedBytes;
  assert.equal(inflight.length, 2);
  assert.equal(broker.metrics.droppedQueueTotal, 1);
  // The retained store holds them anyway, and a stream sends every one: counted, not refused.
  await using late = await subscribed(port, "late", "r/#");
  const retained: Publish[] = [];
  while (retained.length < 3) retained.push(await late.expect("publish") as Publish);
  await broker.memory();
  assert.equal(broker.metrics.queuedBytes, full + 3 * (1000 + 3 + 512 + 64));
  for (const p of retained) await late.sendPacket({ cmd: "puback", messageId: p.messageId });
  await settled(late);
  await broker.memory();
  assert.equal(broker.metrics.queuedBytes, full);
});
