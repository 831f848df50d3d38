/**
 * Protocol errors after CONNECT, sent as raw bytes: each must end the offending
 * connection with the reason code the spec names (MQTT 5 DISCONNECT, or a plain
 * close for 3.1.1) while every other client keeps being served.
 */
import assert from "node:assert/strict";
import { RawClient, startBroker, subscriber } from "../helpers/broker.ts";
import { bystanders, frame, publishBytes, type PublishFields, str } from "../helpers/wire.ts";

const enc = new TextEncoder();

/** Topic Alias property (0x23) with a two-byte value. */
function topicAlias(n: number): number[] {
  return [0x23, n >> 8, n & 0xff];
}

/** The broker sent DISCONNECT with `code` and then closed the connection. */
async function assertDisconnected(c: RawClient, code: number): Promise<void> {
  const d = await c.expect("disconnect");
  assert.equal(
    d.reasonCode,
    code,
    `DISCONNECT 0x${(d.reasonCode as number).toString(16)}, want 0x${code.toString(16)}`,
  );
  assert.equal(await c.next(), null, "connection still open after DISCONNECT");
}

/**
 * Connects a raw MQTT 5 client, sends `bytes` after CONNACK and expects
 * DISCONNECT `code` and a close, while bystanders keep exchanging messages.
 */
async function assertProtocolError(
  overrides: Parameters<typeof startBroker>[0],
  bytes: Uint8Array,
  code: number,
): Promise<void> {
  await using b = await startBroker(overrides);
  await using others = await bystanders(b.port);
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("offender");
  await c.send(bytes);
  await assertDisconnected(c, code);
  await others.assertServing();
}

// ---- CONNECT, AUTH ---------------------------------------------------------

Deno.test("a second CONNECT gets DISCONNECT 0x82 and is closed", async () => {
  // [MQTT-3.1.0-2].
  const connect = frame(0x10, [...str("MQTT"), 5, 0x02, 0, 60, 0, ...str("offender")]);
  await assertProtocolError({}, connect, 0x82);
});

Deno.test("an AUTH packet without an Authentication Method in CONNECT gets DISCONNECT 0x82", async () => {
  // Section 4.12: AUTH is only allowed after CONNECT named an Authentication Method.
  await assertProtocolError({}, frame(0xf0, [0x18, 0]), 0x82);
});

// ---- framing ----------------------------------------------------------------

Deno.test("a packet larger than limits.max_packet_size gets DISCONNECT 0x95 while one at the limit is accepted", async () => {
  await using b = await startBroker({ limits: { max_packet_size: 128 } });
  await using others = await bystanders(b.port);
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("big");
  // QoS 1 PUBLISH: 1 + 1 (length) + 2+3 (topic) + 2 (id) + 1 (props) + payload.
  const atLimit = publishBytes({ topic: "big", qos: 1, packetId: 1, payload: "a".repeat(118) });
  assert.equal(atLimit.length, 128);
  await c.send(atLimit);
  const ack = await c.expect("puback");
  assert.equal(ack.messageId, 1);
  assert.ok(((ack.reasonCode as number | undefined) ?? 0) < 0x80);
  // Section 3.1.2.11 (Maximum Packet Size in CONNACK): a larger packet is answered with 0x95.
  await c.send(publishBytes({ topic: "big", qos: 1, packetId: 2, payload: "a".repeat(119) }));
  await assertDisconnected(c, 0x95);
  await others.assertServing();
});

Deno.test("a remaining length longer than four bytes gets DISCONNECT 0x81", async () => {
  // [MQTT-1.5.5-1]: a Variable Byte Integer has at most four bytes.
  await assertProtocolError({}, new Uint8Array([0x30, 0xff, 0xff, 0xff, 0xff, 0x01]), 0x81);
});

Deno.test("a remaining length that cuts a field short gets DISCONNECT 0x81", async () => {
  // SUBSCRIBE whose filter claims 10 bytes but the packet ends after 3.
  const bytes = frame(0x82, [0, 1, 0, 0, 10, ...enc.encode("a/b")]);
  await assertProtocolError({}, bytes, 0x81);
});

// ---- PUBLISH ----------------------------------------------------------------

Deno.test("a PUBLISH with QoS 3 gets DISCONNECT 0x81", async () => {
  // [MQTT-3.3.1-4].
  await assertProtocolError({}, publishBytes({ topic: "t", qos: 3, packetId: 1 }), 0x81);
});

Deno.test("a PUBLISH whose topic is ill-formed UTF-8 gets DISCONNECT 0x81", async () => {
  // [MQTT-1.5.4-1]: 0xC3 0x28 is not a valid sequence.
  const bad = new Uint8Array([0x61, 0xc3, 0x28]);
  await assertProtocolError({}, publishBytes({ topic: bad }), 0x81);
});

Deno.test("a PUBLISH whose topic contains U+0000 gets DISCONNECT 0x81", async () => {
  // [MQTT-1.5.4-2], [MQTT-4.7.3-2].
  const nul = new Uint8Array([0x61, 0x00, 0x62]);
  await assertProtocolError({}, publishBytes({ topic: nul }), 0x81);
});

Deno.test("a PUBLISH to a topic with wildcards gets DISCONNECT 0x90", async () => {
  // [MQTT-3.3.2-2].
  for (const topic of ["a/+/c", "a/#"]) {
    await assertProtocolError({}, publishBytes({ topic }), 0x90);
  }
});

Deno.test("Topic Alias 0 gets DISCONNECT 0x94", async () => {
  // [MQTT-3.3.2-8]: a Topic Alias of 0 is not permitted.
  await assertProtocolError(
    { limits: { topic_alias_maximum: 3 } },
    publishBytes({ topic: "t", props: topicAlias(0) }),
    0x94,
  );
});

Deno.test("a Topic Alias above Topic Alias Maximum gets DISCONNECT 0x94, one at the maximum works", async () => {
  await using b = await startBroker({ limits: { topic_alias_maximum: 3 } });
  await using others = await bystanders(b.port);
  await using sub = await subscriber(b.port, "alias/t", 0, { clientId: "alias-sub" });
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("alias");
  // [MQTT-3.3.2-12]: every alias from 1 to the maximum is accepted.
  await c.send(publishBytes({ topic: "alias/t", props: topicAlias(3), payload: "set" }));
  await c.send(publishBytes({ topic: "", props: topicAlias(3), payload: "used" }));
  assert.equal((await sub.inbox.next()).payload, "set");
  const used = await sub.inbox.next();
  assert.equal(used.topic, "alias/t");
  assert.equal(used.payload, "used");
  // [MQTT-3.3.2-9]: 4 is above the maximum of 3.
  await c.send(publishBytes({ topic: "alias/t", props: topicAlias(4) }));
  await assertDisconnected(c, 0x94);
  await others.assertServing();
});

Deno.test("an empty topic with an alias that was never defined gets DISCONNECT 0x82", async () => {
  // Section 3.3.2.3.4: using an alias without a mapping is a Protocol Error.
  await assertProtocolError(
    { limits: { topic_alias_maximum: 3 } },
    publishBytes({ topic: "", props: topicAlias(2) }),
    0x82,
  );
});

Deno.test("a PUBLISH carrying a Subscription Identifier gets DISCONNECT 0x82", async () => {
  // [MQTT-3.3.4-6].
  await assertProtocolError({}, publishBytes({ topic: "t", props: [0x0b, 0x05] }), 0x82);
});

Deno.test("more unacknowledged QoS 2 PUBLISH than Receive Maximum gets DISCONNECT 0x93", async () => {
  await using b = await startBroker({ limits: { receive_maximum: 2 } });
  await using others = await bystanders(b.port);
  await using c = await RawClient.connect(b.port, 5);
  const ack = await c.handshake("flood");
  assert.equal((ack.properties as Record<string, unknown>).receiveMaximum, 2);
  await c.send(publishBytes({ topic: "rm", qos: 2, packetId: 1 }));
  assert.equal((await c.expect("pubrec")).messageId, 1);
  await c.send(publishBytes({ topic: "rm", qos: 2, packetId: 2 }));
  assert.equal((await c.expect("pubrec")).messageId, 2);
  // Completing one flow frees a slot: the window counts unacknowledged messages only.
  await c.sendPacket({ cmd: "pubrel", messageId: 1 });
  assert.equal((await c.expect("pubcomp")).messageId, 1);
  await c.send(publishBytes({ topic: "rm", qos: 2, packetId: 3 }));
  assert.equal((await c.expect("pubrec")).messageId, 3);
  // Ids 2 and 3 are still open: a third one is over the limit [MQTT-3.3.4-7].
  await c.send(publishBytes({ topic: "rm", qos: 2, packetId: 4 }));
  await assertDisconnected(c, 0x93);
  await others.assertServing();
});

// ---- SUBSCRIBE, PUBREL ------------------------------------------------------

Deno.test("a SUBSCRIBE with wrong reserved header flags gets DISCONNECT 0x81", async () => {
  // [MQTT-3.8.1-1]: the flags must be 0010.
  const body = [0, 1, 0, ...str("a/b"), 0x01];
  await assertProtocolError({}, frame(0x80, body), 0x81);
});

Deno.test("a SUBSCRIBE without topic filters gets DISCONNECT 0x82", async () => {
  // [MQTT-3.8.3-2]: at least one filter.
  await assertProtocolError({}, frame(0x82, [0, 1, 0]), 0x82);
});

Deno.test("a PUBREL with wrong reserved header flags gets DISCONNECT 0x81", async () => {
  // [MQTT-3.6.1-1]: the flags must be 0010.
  await assertProtocolError({}, frame(0x60, [0, 1]), 0x81);
});

// ---- MQTT 3.1.1 ---------------------------------------------------------------

Deno.test("3.1.1 protocol errors close the connection without any packet", async (t) => {
  await using b = await startBroker({ limits: { max_packet_size: 128 } });
  await using others = await bystanders(b.port);
  const v4 = (f: PublishFields) => publishBytes({ ...f, v5: false });
  const cases: [string, Uint8Array][] = [
    ["second CONNECT", frame(0x10, [...str("MQTT"), 4, 0x02, 0, 60, ...str("offender")])],
    ["PUBLISH QoS 3", v4({ topic: "t", qos: 3, packetId: 1 })],
    ["PUBLISH to a wildcard topic", v4({ topic: "a/#" })],
    ["PUBLISH with ill-formed UTF-8 topic", v4({ topic: new Uint8Array([0xc3, 0x28]) })],
    ["packet over max_packet_size", v4({ topic: "t", payload: "a".repeat(200) })],
    ["SUBSCRIBE with flags 0000", frame(0x80, [0, 1, ...str("a"), 0])],
    ["SUBSCRIBE without filters", frame(0x82, [0, 1])],
    ["PUBREL with flags 0000", frame(0x60, [0, 1])],
    ["AUTH, which 3.1.1 does not have", frame(0xf0, [])],
    ["remaining length over four bytes", new Uint8Array([0x30, 0xff, 0xff, 0xff, 0xff, 0x01])],
  ];
  for (const [name, bytes] of cases) {
    await t.step(name, async () => {
      await using c = await RawClient.connect(b.port, 4);
      await c.handshake("offender311", 4);
      await c.send(bytes);
      // 3.1.1 has no DISCONNECT from the server: the only signal is the close.
      assert.equal(await c.next(), null);
      await others.assertServing();
    });
  }
});
