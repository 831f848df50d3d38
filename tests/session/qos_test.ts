/**
 * QoS 0/1/2 flows in both directions, packet identifiers, duplicate handling
 * and redelivery of unacknowledged and queued messages after reconnect, for
 * MQTT 5 and 3.1.1. MQTT.js checks the end-to-end result; RawClient shows the
 * exact packets.
 */
import assert from "node:assert/strict";
import { collect, connectClient, type Packet, RawClient, startBroker } from "../helpers/broker.ts";
import { expectSilence, subscriber } from "../helpers/broker.ts";

type Version = 4 | 5;
type Qos = 0 | 1 | 2;
type Fields = Packet & Record<string, unknown>;

/** Subscribes a raw client to one filter and checks the granted QoS. */
async function subscribe(
  c: RawClient,
  v: Version,
  filter: string,
  qos: Qos,
  messageId = 1,
): Promise<void> {
  await c.sendPacket({
    cmd: "subscribe",
    messageId,
    subscriptions: [{ topic: filter, qos, nl: false, rap: false, rh: 0 }],
  }, v);
  const ack = await c.expect("suback");
  assert.equal(ack.messageId, messageId);
  assert.deepEqual(ack.granted, [qos]);
}

/** Sends a PUBLISH from a raw client. */
function publish(
  c: RawClient,
  v: Version,
  topic: string,
  payload: string,
  qos: Qos,
  messageId?: number,
  dup = false,
): Promise<void> {
  return c.sendPacket({
    cmd: "publish",
    topic,
    payload: Buffer.from(payload),
    qos,
    dup,
    retain: false,
    ...(qos > 0 ? { messageId } : {}),
  }, v);
}

/** Sends an acknowledgement packet (puback, pubrec, pubrel, pubcomp). */
function ack(c: RawClient, v: Version, cmd: string, messageId: number): Promise<void> {
  return c.sendPacket({ cmd, messageId, reasonCode: 0 }, v);
}

/** Reads `n` PUBLISH packets. */
async function publishes(c: RawClient, n: number): Promise<Fields[]> {
  const out: Fields[] = [];
  for (let i = 0; i < n; i++) out.push(await c.expect("publish"));
  return out;
}

function text(p: Fields): string {
  return new TextDecoder().decode(p.payload as Uint8Array);
}

/**
 * CONNECT fields for a session that survives the connection: MQTT 5 uses a
 * Session Expiry Interval (and Clean Start only on the first connect), 3.1.1
 * needs Clean Session 0 every time.
 */
function persistent(v: Version, first: boolean): Record<string, unknown> {
  return v === 5 ? { clean: first, properties: { sessionExpiryInterval: 60 } } : { clean: false };
}

function label(v: Version): string {
  return v === 5 ? "v5" : "v3.1.1";
}

const VERSIONS: Version[] = [5, 4];
const PAIRS: [Version, Version][] = [[5, 5], [4, 4], [5, 4], [4, 5]];

for (const [pv, sv] of PAIRS) {
  Deno.test(
    `${label(pv)} publisher to ${
      label(sv)
    } subscriber: each message arrives once at min(publish QoS, subscription QoS)`,
    async () => {
      // [MQTT-3.8.4-8] delivered QoS = min(published QoS, granted QoS).
      await using b = await startBroker();
      await using sub = await connectClient(b.port, { clientId: "sub", protocolVersion: sv });
      const inbox = collect(sub);
      for (const s of [0, 1, 2] as const) await sub.subscribeAsync(`m/+/${s}`, { qos: s });
      await using pub = await connectClient(b.port, { clientId: "pub", protocolVersion: pv });
      for (const p of [0, 1, 2] as const) {
        for (const s of [0, 1, 2] as const) {
          await pub.publishAsync(`m/${p}/${s}`, `${p}${s}`, { qos: p });
        }
      }
      const got = new Map<string, number>();
      for (let i = 0; i < 9; i++) {
        const m = await inbox.next();
        assert.equal(got.has(m.topic), false, `${m.topic} delivered twice`);
        got.set(m.topic, m.packet.qos);
      }
      for (const p of [0, 1, 2]) {
        for (const s of [0, 1, 2]) {
          assert.equal(got.get(`m/${p}/${s}`), Math.min(p, s), `m/${p}/${s}`);
        }
      }
      await inbox.none(200);
    },
  );
}

for (const v of VERSIONS) {
  Deno.test(`${label(v)}: QoS 1 flow is PUBLISH/PUBACK with the packet ids of each side`, async () => {
    await using b = await startBroker();
    await using sub = await RawClient.connect(b.port, v);
    await sub.handshake("sub", v);
    await subscribe(sub, v, "q1/#", 1);
    await using pub = await RawClient.connect(b.port, v);
    await pub.handshake("pub", v);

    await publish(pub, v, "q1/a", "one", 1, 4711);
    // [MQTT-2.2.1-5] PUBACK carries the packet id of the PUBLISH it acknowledges.
    const puback = await pub.expect("puback");
    assert.equal(puback.messageId, 4711);
    if (v === 5) assert.equal(puback.reasonCode ?? 0, 0);

    const p = await sub.expect("publish");
    assert.equal(p.qos, 1);
    assert.equal(p.dup, false);
    assert.equal(p.topic, "q1/a");
    assert.equal(text(p), "one");
    // [MQTT-2.2.1-4] the server picks its own non-zero packet id.
    assert.ok((p.messageId as number) > 0);
    await ack(sub, v, "puback", p.messageId as number);
    await expectSilence(sub);
  });

  Deno.test(`${label(v)}: QoS 2 flow is PUBLISH/PUBREC/PUBREL/PUBCOMP in both directions`, async () => {
    await using b = await startBroker();
    await using sub = await RawClient.connect(b.port, v);
    await sub.handshake("sub", v);
    await subscribe(sub, v, "q2/#", 2);
    await using pub = await RawClient.connect(b.port, v);
    await pub.handshake("pub", v);

    await publish(pub, v, "q2/a", "two", 2, 300);
    // [MQTT-4.3.3-8] PUBREC, then [MQTT-4.3.3-11] PUBCOMP, each with the same packet id.
    assert.equal((await pub.expect("pubrec")).messageId, 300);
    await ack(pub, v, "pubrel", 300);
    const pubcomp = await pub.expect("pubcomp");
    assert.equal(pubcomp.messageId, 300);
    if (v === 5) assert.equal(pubcomp.reasonCode ?? 0, 0);

    const p = await sub.expect("publish");
    assert.equal(p.qos, 2);
    assert.equal(text(p), "two");
    const id = p.messageId as number;
    assert.ok(id > 0);
    await ack(sub, v, "pubrec", id);
    // [MQTT-4.3.3-4] the sender answers PUBREC with PUBREL of the same id.
    assert.equal((await sub.expect("pubrel")).messageId, id);
    await ack(sub, v, "pubcomp", id);
    await expectSilence(sub);
  });

  Deno.test(`${label(v)}: a QoS 2 PUBLISH resent with DUP before PUBREL is delivered once`, async () => {
    // [MQTT-4.3.3-10] until PUBREL, a PUBLISH with the same id is answered with
    // PUBREC and must not cause a duplicate delivery.
    await using b = await startBroker();
    await using sub = await subscriber(b.port, "once/#", 2, { clientId: "sub" });
    await using pub = await RawClient.connect(b.port, v);
    await pub.handshake("pub", v);

    await publish(pub, v, "once/a", "exactly once", 2, 9);
    assert.equal((await pub.expect("pubrec")).messageId, 9);
    await publish(pub, v, "once/a", "exactly once", 2, 9, true);
    assert.equal((await pub.expect("pubrec")).messageId, 9);
    await ack(pub, v, "pubrel", 9);
    const comp = await pub.expect("pubcomp");
    assert.equal(comp.messageId, 9);
    if (v === 5) assert.equal(comp.reasonCode ?? 0, 0);

    assert.equal((await sub.inbox.next()).payload, "exactly once");
    await sub.inbox.none(300);
  });

  Deno.test(`${label(v)}: a packet id reused after PUBACK or PUBCOMP carries a new message`, async () => {
    // [MQTT-4.3.2-5] after PUBACK the same id is a new message, whatever its DUP flag;
    // [MQTT-4.3.3-12] after PUBCOMP likewise.
    await using b = await startBroker();
    await using sub = await subscriber(b.port, "reuse/#", 2, { clientId: "sub" });
    await using pub = await RawClient.connect(b.port, v);
    await pub.handshake("pub", v);

    await publish(pub, v, "reuse/1", "first", 1, 5);
    assert.equal((await pub.expect("puback")).messageId, 5);
    await publish(pub, v, "reuse/1", "second", 1, 5, true);
    assert.equal((await pub.expect("puback")).messageId, 5);

    for (const payload of ["third", "fourth"]) {
      await publish(pub, v, "reuse/2", payload, 2, 6);
      assert.equal((await pub.expect("pubrec")).messageId, 6);
      await ack(pub, v, "pubrel", 6);
      assert.equal((await pub.expect("pubcomp")).messageId, 6);
    }
    const got = [];
    for (let i = 0; i < 4; i++) got.push((await sub.inbox.next()).payload);
    assert.deepEqual(got, ["first", "second", "third", "fourth"]);
    await sub.inbox.none(200);
  });
}

Deno.test("v5: PUBREL for an unknown packet id is answered with PUBCOMP 0x92", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("c", 5);
  await ack(c, 5, "pubrel", 77);
  const comp = await c.expect("pubcomp");
  assert.equal(comp.messageId, 77);
  assert.equal(comp.reasonCode, 0x92);
  // Not a protocol error: the connection stays usable.
  await c.send([0xc0, 0x00]);
  await c.expect("pingresp");
});

Deno.test("v3.1.1: PUBREL for an unknown packet id is still completed with PUBCOMP", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 4);
  await c.handshake("c", 4);
  await ack(c, 4, "pubrel", 78);
  assert.equal((await c.expect("pubcomp")).messageId, 78);
  await c.send([0xc0, 0x00]);
  await c.expect("pingresp");
});

Deno.test("v5: PUBACK and PUBREC carry 0x10 when no subscriber matched, 0 once one does", async () => {
  await using b = await startBroker();
  await using pub = await RawClient.connect(b.port, 5);
  await pub.handshake("pub", 5);
  await publish(pub, 5, "nobody/here", "x", 1, 1);
  assert.equal((await pub.expect("puback")).reasonCode, 0x10);
  await publish(pub, 5, "nobody/here", "x", 2, 2);
  const rec = await pub.expect("pubrec");
  assert.equal(rec.reasonCode, 0x10);
  // 0x10 is a success code: the QoS 2 flow continues to PUBCOMP.
  await ack(pub, 5, "pubrel", 2);
  assert.equal((await pub.expect("pubcomp")).reasonCode ?? 0, 0);

  await using sub = await connectClient(b.port, { clientId: "sub" });
  await sub.subscribeAsync("nobody/#", { qos: 0 });
  await publish(pub, 5, "nobody/here", "x", 1, 3);
  assert.equal((await pub.expect("puback")).reasonCode ?? 0, 0);
  await publish(pub, 5, "nobody/here", "x", 2, 4);
  assert.equal((await pub.expect("pubrec")).reasonCode ?? 0, 0);
});

Deno.test("outgoing packet ids are non-zero and unique among unacknowledged messages", async () => {
  // [MQTT-2.2.1-4] a new server PUBLISH with QoS > 0 gets a non-zero id not currently in use.
  await using b = await startBroker();
  await using sub = await RawClient.connect(b.port, 5);
  await sub.handshake("sub", 5);
  await subscribe(sub, 5, "ids/#", 2);
  await using pub = await connectClient(b.port, { clientId: "pub" });
  for (let i = 0; i < 6; i++) await pub.publishAsync(`ids/${i}`, "x", { qos: i % 2 ? 1 : 2 });
  const first = await publishes(sub, 6);
  const ids = first.map((p) => p.messageId as number);
  assert.ok(ids.every((id) => id > 0 && id <= 65535), `ids ${ids}`);
  assert.equal(new Set(ids).size, 6, `ids ${ids}`);

  // Complete all but the first QoS 2 message, which stays unacknowledged.
  const held = first[0];
  assert.equal(held.qos, 2);
  for (const p of first.slice(1)) {
    const id = p.messageId as number;
    if (p.qos === 1) await ack(sub, 5, "puback", id);
    else {
      await ack(sub, 5, "pubrec", id);
      assert.equal((await sub.expect("pubrel")).messageId, id);
      await ack(sub, 5, "pubcomp", id);
    }
  }
  for (let i = 0; i < 6; i++) await pub.publishAsync(`ids/n${i}`, "x", { qos: 1 });
  const next = (await publishes(sub, 6)).map((p) => p.messageId as number);
  assert.equal(new Set(next).size, 6, `ids ${next}`);
  assert.ok(!next.includes(held.messageId as number), "reused the id of an unacknowledged message");
});

for (const v of VERSIONS) {
  Deno.test(
    `${
      label(v)
    }: unacknowledged messages are resent after reconnect with DUP and their packet ids, PUBREL for a PUBREC'd QoS 2`,
    async () => {
      // [MQTT-4.4.0-1] resend unacknowledged PUBLISH and PUBREL with the original ids;
      // [MQTT-3.3.1-1] DUP is set on a redelivery.
      await using b = await startBroker();
      await using s1 = await RawClient.connect(b.port, v);
      await s1.handshake("dup-sub", v, persistent(v, true));
      await subscribe(s1, v, "r/#", 2);
      await using pub = await connectClient(b.port, { clientId: "pub" });
      await pub.publishAsync("r/1", "q1", { qos: 1 });
      await pub.publishAsync("r/2", "q2", { qos: 2 });
      await pub.publishAsync("r/3", "q2-received", { qos: 2 });
      const [p1, p2, p3] = await publishes(s1, 3);
      assert.deepEqual([p1.topic, p2.topic, p3.topic], ["r/1", "r/2", "r/3"]);
      assert.ok([p1, p2, p3].every((p) => p.dup === false));
      await ack(s1, v, "pubrec", p3.messageId as number);
      assert.equal((await s1.expect("pubrel")).messageId, p3.messageId);
      // Gone without acknowledging anything else.
      await s1[Symbol.asyncDispose]();

      await using s2 = await RawClient.connect(b.port, v);
      const connack = await s2.handshake("dup-sub", v, persistent(v, false));
      assert.equal(connack.sessionPresent, true);
      const got = [await s2.next(), await s2.next(), await s2.next()] as Fields[];
      const resent = got.filter((p) => p.cmd === "publish");
      assert.deepEqual(resent.map((p) => p.topic), ["r/1", "r/2"]);
      assert.deepEqual(resent.map((p) => p.messageId), [p1.messageId, p2.messageId]);
      assert.deepEqual(resent.map((p) => p.qos), [1, 2]);
      assert.deepEqual(resent.map((p) => p.dup), [true, true]);
      assert.deepEqual(resent.map(text), ["q1", "q2"]);
      // The PUBREC'd message is not published again, only released.
      const rel = got.filter((p) => p.cmd === "pubrel");
      assert.deepEqual(rel.map((p) => p.messageId), [p3.messageId]);

      await ack(s2, v, "puback", p1.messageId as number);
      await ack(s2, v, "pubrec", p2.messageId as number);
      assert.equal((await s2.expect("pubrel")).messageId, p2.messageId);
      await ack(s2, v, "pubcomp", p2.messageId as number);
      await ack(s2, v, "pubcomp", p3.messageId as number);
      await expectSilence(s2, 200);
      s2.close();

      // Everything was acknowledged: a further reconnect gets nothing resent.
      await using s3 = await RawClient.connect(b.port, v);
      assert.equal((await s3.handshake("dup-sub", v, persistent(v, false))).sessionPresent, true);
      await expectSilence(s3);
    },
  );

  Deno.test(
    `${
      label(v)
    }: messages published while a persistent subscriber is away arrive in order on reconnect`,
    async () => {
      // [MQTT-4.6.0-6] same topic and QoS: in the order they were published.
      await using b = await startBroker();
      await using s1 = await RawClient.connect(b.port, v);
      await s1.handshake("away", v, persistent(v, true));
      await subscribe(s1, v, "queue/#", 2);
      await s1.sendPacket({ cmd: "disconnect" }, v);
      await s1.expectClosed();
      s1.close();

      await using pub = await connectClient(b.port, { clientId: "pub" });
      for (let i = 0; i < 5; i++) await pub.publishAsync("queue/a", `m${i}`, { qos: 1 });
      for (let i = 5; i < 8; i++) await pub.publishAsync("queue/b", `m${i}`, { qos: 2 });

      await using s2 = await RawClient.connect(b.port, v);
      assert.equal((await s2.handshake("away", v, persistent(v, false))).sessionPresent, true);
      const got = await publishes(s2, 8);
      assert.deepEqual(got.map(text), ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"]);
      assert.deepEqual(got.map((p) => p.qos), [1, 1, 1, 1, 1, 2, 2, 2]);
      // Never sent before, so not duplicates.
      assert.ok(got.every((p) => p.dup === false));
      await expectSilence(s2, 200);
    },
  );
}

Deno.test("a subscriber without a persistent session gets nothing published while it was away", async () => {
  // The control case for the queueing tests above: Session Expiry 0 ends the session.
  await using b = await startBroker();
  await using s1 = await RawClient.connect(b.port, 5);
  await s1.handshake("gone", 5);
  await subscribe(s1, 5, "queue/#", 1);
  await s1.sendPacket({ cmd: "disconnect" }, 5);
  await s1.expectClosed();
  s1.close();
  await using pub = await connectClient(b.port, { clientId: "pub" });
  await pub.publishAsync("queue/a", "lost", { qos: 1 });
  await using s2 = await RawClient.connect(b.port, 5);
  assert.equal((await s2.handshake("gone", 5, { clean: false })).sessionPresent, false);
  await expectSilence(s2);
});
