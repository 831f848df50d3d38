/**
 * A QoS 1/2 message in flight counts in limits.max_queued_bytes_total (the gauge
 * `mcloudtt_queued_bytes`) until its in-flight entry goes, on every path that drops one: PUBACK,
 * PUBCOMP, a PUBREC that refuses, a resend the client no longer accepts, the session ending
 * (clean start, no Session Expiry, expiry) and a restart that restores it from the store. Each
 * lets it go exactly once: the gauge is back at 0 when nothing is held, and a takeover or the
 * sweep moving its bytes out of the arena changes nothing.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { type Packet, RawClient } from "../helpers/broker.ts";
import { type BrokerProcess, startBrokerProcess } from "../helpers/broker_process.ts";

type Publish = Packet & { messageId: number; payload: Uint8Array; qos: number; dup: boolean };

/** What one message of `payload` bytes on a topic of `topic` bytes counts, held once. */
const held = (payload: number, topic: number, entries = 1) => payload + topic + 512 + entries * 64;

const SIZE = 4000;
/** `held` for the messages here: topic "t/x". */
const EACH = held(SIZE, 3);

const persistent = (expiry = 3600) => ({
  clean: false,
  properties: { sessionExpiryInterval: expiry },
});

/** Connects `clientId` (with CONNECT `extra`) subscribed to "t/#" at `qos`. */
async function receiver(
  port: number,
  clientId: string,
  qos: 1 | 2,
  extra: Record<string, unknown> = {},
): Promise<RawClient> {
  const c = await RawClient.connect(port, 5);
  await c.handshake(clientId, 5, extra);
  await c.sendPacket({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic: "t/#", qos }] });
  await c.expect("suback");
  return c;
}

/** Publishes `n` distinct messages of SIZE bytes to "t/x" at `qos` and reads them at `c`. */
async function deliver(port: number, c: RawClient, n: number, qos: 1 | 2): Promise<Publish[]> {
  await using pub = await RawClient.connect(port, 5);
  await pub.handshake("publisher");
  for (let i = 1; i <= n; i++) {
    const payload = Buffer.alloc(SIZE, i);
    await pub.sendPacket({ cmd: "publish", topic: "t/x", qos, messageId: i, payload });
    if (qos === 1) await pub.expect("puback");
    else {
      await pub.expect("pubrec");
      await pub.sendPacket({ cmd: "pubrel", messageId: i });
      await pub.expect("pubcomp");
    }
  }
  const got: Publish[] = [];
  while (got.length < n) got.push(await c.expect("publish") as Publish);
  return got;
}

/** Sends PINGREQ and waits for PINGRESP: the broker has handled everything sent before it. */
async function settled(c: RawClient): Promise<void> {
  await c.sendPacket({ cmd: "pingreq" });
  await c.expect("pingresp");
}

async function gauge(broker: BrokerProcess): Promise<number> {
  await broker.memory();
  return broker.metrics.queuedBytes;
}

/** Waits until `n` sessions have a connection: the broker has seen the others close. */
async function online(broker: BrokerProcess, n: number): Promise<void> {
  await broker.memory();
  while (broker.metrics.sessionsOnline !== n) {
    await new Promise((r) => setTimeout(r, 50));
    await broker.memory();
  }
}

Deno.test("QoS 2 in flight counts until PUBCOMP, or until a PUBREC that refuses", async () => {
  await using broker = await startBrokerProcess({ general: { websocket: false } });
  const port = broker.ports.tcp;
  await using c = await receiver(port, "q2", 2);
  const got = await deliver(port, c, 3, 2);
  assert.equal(await gauge(broker), 3 * EACH);
  // PUBREC: released, still in flight until PUBCOMP.
  await c.sendPacket({ cmd: "pubrec", messageId: got[0].messageId });
  await c.expect("pubrel");
  assert.equal(await gauge(broker), 3 * EACH);
  await c.sendPacket({ cmd: "pubcomp", messageId: got[0].messageId });
  await settled(c);
  assert.equal(await gauge(broker), 2 * EACH);
  // A PUBREC with an error ends the flow.
  await c.sendPacket({ cmd: "pubrec", messageId: got[1].messageId, reasonCode: 0x80 });
  await settled(c);
  assert.equal(await gauge(broker), EACH);
  await c.sendPacket({ cmd: "pubrec", messageId: got[2].messageId });
  await c.expect("pubrel");
  await c.sendPacket({ cmd: "pubcomp", messageId: got[2].messageId });
  await settled(c);
  assert.equal(await gauge(broker), 0);
});

Deno.test("a takeover resends what is in flight without counting it again; a clean start lets it go", async () => {
  await using broker = await startBrokerProcess({
    general: { websocket: false },
    limits: { sweep_interval_ms: 100 },
  });
  const port = broker.ports.tcp;
  const first = await receiver(port, "taken", 1, persistent());
  // Small payloads wait in flight in the arena until the sweep gives them buffers of their own.
  await deliver(port, first, 4, 1);
  assert.equal(await gauge(broker), 4 * EACH);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(await gauge(broker), 4 * EACH);
  // The same client id again, resuming: the old connection is taken over, the four sent again.
  const second = await RawClient.connect(port, 5);
  await second.handshake("taken", 5, persistent());
  const again: Publish[] = [];
  while (again.length < 4) again.push(await second.expect("publish") as Publish);
  assert.ok(again.every((p) => p.dup));
  assert.equal(await gauge(broker), 4 * EACH);
  await second.sendPacket({ cmd: "puback", messageId: again[0].messageId });
  await settled(second);
  assert.equal(await gauge(broker), 3 * EACH);
  // A third connection starts anew: the session and what it held in flight end.
  await using third = await RawClient.connect(port, 5);
  await third.handshake("taken", 5, { clean: true, properties: { sessionExpiryInterval: 3600 } });
  assert.equal(await gauge(broker), 0);
  first.close();
  second.close();
});

Deno.test("what is in flight stops counting when its session ends with its connection or expires", async () => {
  await using broker = await startBrokerProcess({
    general: { websocket: false },
    limits: { sweep_interval_ms: 100 },
  });
  const port = broker.ports.tcp;
  // Session Expiry 0: the session ends with the connection.
  const brief = await receiver(port, "brief", 1);
  await deliver(port, brief, 3, 2);
  assert.equal(await gauge(broker), 3 * EACH);
  await brief[Symbol.asyncDispose]();
  await online(broker, 0);
  assert.equal(broker.metrics.queuedBytes, 0);
  // Session Expiry 1 s: the session waits, then expires.
  const expiring = await receiver(port, "expiring", 2, persistent(1));
  await deliver(port, expiring, 2, 2);
  await expiring[Symbol.asyncDispose]();
  assert.equal(await gauge(broker), 2 * EACH);
  while (broker.metrics.sessionsExpired === 0) {
    await new Promise((r) => setTimeout(r, 200));
    await broker.memory();
  }
  assert.equal(broker.metrics.queuedBytes, 0);
});

Deno.test("a resend the client's new Maximum Packet Size refuses stops counting", async () => {
  await using broker = await startBrokerProcess({ general: { websocket: false } });
  const port = broker.ports.tcp;
  const big = await receiver(port, "shrinks", 1, persistent());
  await deliver(port, big, 2, 1);
  await big[Symbol.asyncDispose]();
  assert.equal(await gauge(broker), 2 * EACH);
  await using small = await RawClient.connect(port, 5);
  await small.handshake("shrinks", 5, {
    clean: false,
    properties: { sessionExpiryInterval: 3600, maximumPacketSize: 1000 },
  });
  await settled(small);
  assert.equal(await gauge(broker), 0);
  assert.equal(broker.metrics.droppedTooLarge, 2);
});

Deno.test("messages in flight restored from the store count as before the restart, and go when acknowledged", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-inflight-total-" });
  const config = { general: { websocket: false }, storage: { enabled: true, dir } };
  try {
    let before: number;
    {
      await using broker = await startBrokerProcess(config);
      const port = broker.ports.tcp;
      await using c = await receiver(port, "stored", 1, persistent());
      const q1 = await deliver(port, c, 2, 1);
      await using c2 = await receiver(port, "stored-2", 2, persistent());
      await deliver(port, c2, 2, 2);
      // "stored" has 4 in flight: 2 of QoS 1, and the 2 QoS 2 ones at QoS 1 (its subscription);
      // those 2 are in flight for both sessions, counted once with an entry for each.
      while (q1.length < 4) q1.push(await c.expect("publish") as Publish);
      before = await gauge(broker);
      assert.equal(before, 2 * EACH + 2 * held(SIZE, 3, 2));
    }
    await using broker = await startBrokerProcess(config);
    const port = broker.ports.tcp;
    // Before: restored in flight, counted nowhere.
    assert.equal(await gauge(broker), before);
    for (const [id, qos] of [["stored", 1], ["stored-2", 2]] as const) {
      await using c = await RawClient.connect(port, 5);
      await c.handshake(id, 5, persistent());
      const n = qos === 1 ? 4 : 2;
      const resent: Publish[] = [];
      while (resent.length < n) resent.push(await c.expect("publish") as Publish);
      for (const p of resent) {
        assert.ok(p.dup);
        if (qos === 1) await c.sendPacket({ cmd: "puback", messageId: p.messageId });
        else {
          await c.sendPacket({ cmd: "pubrec", messageId: p.messageId });
          await c.expect("pubrel");
          await c.sendPacket({ cmd: "pubcomp", messageId: p.messageId });
        }
      }
      await settled(c);
    }
    assert.equal(await gauge(broker), 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
