/**
 * MQTT 5.0 conformance audit, PUBLISH side (sections 3.3 to 3.7, 3.12, 3.14 and 4.7 of the
 * specification): the server-applicable normative statements no other test covered, each checked
 * over a real socket. Raw bytes where a normal client would refuse to send the bad input.
 * The statement ids are the specification's; the subscribe side is in spec_audit_subscribe_test.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  collect,
  connectClient,
  expectSilence,
  type Inbox,
  type Packet,
  RawClient,
  receivedBefore,
  startBroker,
  subscriber,
} from "../helpers/broker.ts";
import { assertRefused, frame, publishBytes, str } from "../helpers/wire.ts";

type Fields = Packet & Record<string, unknown>;

const DUP = 0x08;

/** A UTF-8 string property (identifier, two-byte length, bytes as given). */
function stringProp(id: number, s: string | Uint8Array): number[] {
  return [id, ...str(s)];
}

function text(p: Fields): string {
  return new TextDecoder().decode(p.payload as Uint8Array);
}

// ---- 3.3.1 fixed header --------------------------------------------------------------------

Deno.test("[MQTT-3.3.1-3] the DUP flag of a forwarded PUBLISH is the server's own: a first delivery has DUP 0 even when the publisher set DUP; [MQTT-3.3.1-2] QoS 0 deliveries have DUP 0", async () => {
  await using b = await startBroker();
  await using s1 = await RawClient.connect(b.port, 5);
  await s1.handshake("dup-s1");
  await s1.subscribe("dup/#", 1);
  await using s0 = await RawClient.connect(b.port, 4);
  await s0.handshake("dup-s0", 4);
  await s0.subscribe("dup/#", 0, 4);
  await using pub = await RawClient.connect(b.port, 5);
  await pub.handshake("dup-pub");
  // A publisher resending (DUP 1) a QoS 1 and a QoS 2 message the server never saw.
  await pub.send(publishBytes({ topic: "dup/1", qos: 1, packetId: 7, flags: DUP, payload: "a" }));
  assert.equal((await pub.expect("puback")).messageId, 7);
  await pub.send(publishBytes({ topic: "dup/2", qos: 2, packetId: 8, flags: DUP, payload: "b" }));
  assert.equal((await pub.expect("pubrec")).messageId, 8);
  for (const [c, qos] of [[s1, 1], [s0, 0]] as const) {
    for (const payload of ["a", "b"]) {
      const p = await c.expect("publish");
      assert.equal(text(p), payload);
      assert.equal(p.qos, qos);
      assert.equal(p.dup, false, `first delivery of ${payload} with DUP set`);
      if (p.qos === 1) await c.sendPacket({ cmd: "puback", messageId: p.messageId });
    }
  }
});

Deno.test("[MQTT-3.3.1-8] a PUBLISH with RETAIN 0 neither replaces nor removes the retained message, not even with an empty payload", async () => {
  await using b = await startBroker();
  await using pub = await connectClient(b.port, { clientId: "r-pub" });
  await pub.publishAsync("keep/t", "kept", { qos: 1, retain: true });
  await pub.publishAsync("keep/t", "live", { qos: 1, retain: false });
  await pub.publishAsync("keep/t", "", { qos: 1, retain: false });
  await using sub = await subscriber(b.port, "keep/t", 1, { clientId: "r-sub" });
  const m = await sub.inbox.next();
  assert.equal(m.payload, "kept");
  assert.equal(m.packet.retain, true);
  await sub.inbox.none(200);
});

// ---- 3.3.2 variable header ----------------------------------------------------------------

Deno.test("[MQTT-4.7.3-1] a PUBLISH with an empty Topic Name and no Topic Alias is refused: MQTT 5 DISCONNECT 0x82, 3.1.1 a close", async () => {
  await assertRefused(publishBytes({ topic: "" }), 0x82);
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 4);
  await c.handshake("empty311", 4);
  await c.send(publishBytes({ topic: "", v5: false }));
  assert.equal(await c.next(), null);
});

for (
  const [what, value, code] of [
    ["a multi-level wildcard", "reply/#", 0x82],
    ["a single-level wildcard", "reply/+/x", 0x82],
    ["ill-formed UTF-8", new Uint8Array([0x72, 0xc3, 0x28]), 0x81],
    ["U+0000", new Uint8Array([0x72, 0x00]), 0x81],
  ] as const
) {
  Deno.test(`[MQTT-3.3.2-13, MQTT-3.3.2-14] a PUBLISH whose Response Topic has ${what} gets DISCONNECT 0x${code.toString(16)}`, async () => {
    await assertRefused(publishBytes({ topic: "req", props: stringProp(0x08, value) }), code);
  });
}

for (
  const [what, value] of [
    ["ill-formed UTF-8", new Uint8Array([0x74, 0xc3, 0x28])],
    ["U+0000", new Uint8Array([0x74, 0x00, 0x74])],
  ] as const
) {
  Deno.test(`[MQTT-3.3.2-19] a PUBLISH whose Content Type has ${what} gets DISCONNECT 0x81`, async () => {
    await assertRefused(publishBytes({ topic: "ct", props: stringProp(0x03, value) }), 0x81);
  });
}

// ---- 3.3.4 actions --------------------------------------------------------------------------

Deno.test("[MQTT-3.3.4-5] a message sent as two PUBLISH packets (a shared and a plain subscription overlap) carries in each the identifier of its own subscription", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("two-copies");
  await c.subscribe("ov/#", 1, 5, { subscriptionIdentifier: 11 });
  await c.subscribe("$share/g/ov/+", 1, 5, { subscriptionIdentifier: 22 });
  await using pub = await connectClient(b.port, { clientId: "ov-pub" });
  await pub.publishAsync("ov/x", "m", { qos: 1 });
  const ids: number[][] = [];
  for (let i = 0; i < 2; i++) {
    const p = await c.expect("publish");
    assert.equal(text(p), "m");
    const v = (p.properties as { subscriptionIdentifier?: number | number[] } | undefined)
      ?.subscriptionIdentifier;
    ids.push(v === undefined ? [] : Array.isArray(v) ? v : [v]);
    await c.sendPacket({ cmd: "puback", messageId: p.messageId });
  }
  assert.deepEqual(ids.sort((a, b) => a[0] - b[0]), [[11], [22]]);
  await expectSilence(c, 150);
});

Deno.test("[MQTT-3.3.4-10] with the client's Receive Maximum used up, PINGRESP, SUBACK, UNSUBACK, PUBACK, PUBREC and PUBCOMP still go out at once", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("full-window", 5, { properties: { receiveMaximum: 1 } });
  await c.subscribe("win/#", 1);
  await using pub = await connectClient(b.port, { clientId: "win-pub" });
  await pub.publishAsync("win/a", "held-1", { qos: 1 });
  await pub.publishAsync("win/a", "held-2", { qos: 1 });
  const first = await c.expect("publish");
  assert.equal(text(first), "held-1");
  await expectSilence(c, 150); // held-2 waits for the window
  await c.send([0xc0, 0x00]);
  await c.expect("pingresp");
  await c.sendPacket({ cmd: "subscribe", messageId: 30, subscriptions: [{ topic: "x", qos: 0 }] });
  assert.equal((await c.expect("suback")).messageId, 30);
  await c.sendPacket({ cmd: "unsubscribe", messageId: 31, unsubscriptions: ["x"] });
  assert.equal((await c.expect("unsuback")).messageId, 31);
  await c.send(publishBytes({ topic: "elsewhere", qos: 1, packetId: 40 }));
  assert.equal((await c.expect("puback")).messageId, 40);
  await c.send(publishBytes({ topic: "elsewhere", qos: 2, packetId: 41 }));
  assert.equal((await c.expect("pubrec")).messageId, 41);
  await c.sendPacket({ cmd: "pubrel", messageId: 41 });
  assert.equal((await c.expect("pubcomp")).messageId, 41);
  // Only now does the window open for the held message.
  await c.sendPacket({ cmd: "puback", messageId: first.messageId });
  assert.equal(text(await c.expect("publish")), "held-2");
});

Deno.test("[MQTT-3.3.2-4, MQTT-3.3.2-15..18, MQTT-3.3.2-20] properties reach a subscriber unaltered also from the retained store and from an offline queue", async () => {
  await using b = await startBroker();
  // A persistent subscriber that is away when the message comes.
  const away = await connectClient(b.port, {
    clientId: "props-away",
    clean: false,
    properties: { sessionExpiryInterval: 60 },
  });
  await away.subscribeAsync("props/#", { qos: 1 });
  await away.endAsync();
  const properties = {
    payloadFormatIndicator: true,
    contentType: "text/x-\u00e9",
    responseTopic: "reply/\u00e9",
    correlationData: Buffer.from([0, 255, 1]),
    userProperties: { b: ["2", "1"], a: "0" },
  };
  await using pub = await connectClient(b.port, { clientId: "props-pub" });
  await pub.publishAsync("props/t", "p", { qos: 1, retain: true, properties });
  const check = (m: { packet: { properties?: Record<string, unknown> } }, where: string) => {
    const got = m.packet.properties ?? {};
    assert.equal(got.payloadFormatIndicator, true, where);
    assert.equal(got.contentType, properties.contentType, where);
    assert.equal(got.responseTopic, properties.responseTopic, where);
    assert.deepEqual([...(got.correlationData as Uint8Array)], [0, 255, 1], where);
    assert.deepEqual({ ...got.userProperties as object }, properties.userProperties, where);
  };
  await using fresh = await subscriber(b.port, "props/#", 1, { clientId: "props-new" });
  check(await fresh.inbox.next(), "retained");
  let inbox: Inbox | null = null;
  await using _back = await connectClient(b.port, {
    clientId: "props-away",
    clean: false,
    properties: { sessionExpiryInterval: 60 },
  }, (c) => inbox = collect(c));
  check(await inbox!.next(), "queued");
});

Deno.test("[MQTT-3.3.2-7, MQTT-3.3.2-11] server-to-client Topic Aliases start afresh on a new connection: a resend and the next message carry the topic name", async () => {
  await using b = await startBroker();
  const session = { clean: false, properties: { sessionExpiryInterval: 60, topicAliasMaximum: 2 } };
  const c = await RawClient.connect(b.port, 5);
  await c.handshake("alias-again", 5, session);
  await c.subscribe("aliased/#", 1);
  await using pub = await connectClient(b.port, { clientId: "alias-pub" });
  await pub.publishAsync("aliased/topic", "one", { qos: 1 });
  await pub.publishAsync("aliased/topic", "two", { qos: 1 });
  const one = await c.expect("publish");
  const two = await c.expect("publish");
  const alias = (one.properties as { topicAlias?: number } | undefined)?.topicAlias;
  assert.ok(alias !== undefined && alias >= 1 && alias <= 2, `alias ${alias}`);
  assert.equal(two.topic, "", "the second one uses the alias");
  await c.sendPacket({ cmd: "puback", messageId: one.messageId });
  await c[Symbol.asyncDispose](); // "two" was never acknowledged
  await using again = await RawClient.connect(b.port, 5);
  await again.handshake("alias-again", 5, session);
  const resent = await again.expect("publish");
  assert.equal(text(resent), "two");
  assert.equal(resent.topic, "aliased/topic");
  await again.sendPacket({ cmd: "puback", messageId: resent.messageId });
  await pub.publishAsync("aliased/topic", "three", { qos: 1 });
  const three = await again.expect("publish");
  assert.equal(three.topic, "aliased/topic", "an alias of the old connection was used");
});

// ---- 3.5 to 3.7 acknowledgements ---------------------------------------------------------

Deno.test("[MQTT-3.6.2-1] a PUBREC for a packet id the server never used is answered with PUBREL 0x92 (Packet Identifier not found)", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("stray-pubrec");
  await c.sendPacket({ cmd: "pubrec", messageId: 4321, reasonCode: 0 });
  const rel = await c.expect("pubrel");
  assert.equal(rel.messageId, 4321);
  assert.equal(rel.reasonCode, 0x92);
  // A failing PUBREC ends a flow on its own: nothing to release.
  await c.sendPacket({ cmd: "pubrec", messageId: 4322, reasonCode: 0x80 });
  await expectSilence(c, 150);
});

Deno.test("[MQTT-3.4.2-1, MQTT-3.5.2-1, MQTT-3.7.2-1] the server's PUBACK, PUBREC and PUBCOMP use their own packets' reason codes", async () => {
  // PUBACK/PUBREC: 0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99; PUBCOMP: 0x00, 0x92.
  const ACK_CODES = new Set([0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]);
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("codes");
  const invalidUtf8 = frame(0x32, [...str("pfi"), 0, 4, 2, 0x01, 1, 0xc3, 0x28]);
  const sent: [number, Uint8Array, string][] = [
    [1, publishBytes({ topic: "nobody", qos: 1, packetId: 1 }), "puback"],
    [2, publishBytes({ topic: "$not/yours", qos: 1, packetId: 2 }), "puback"],
    [3, publishBytes({ topic: "nobody", qos: 2, packetId: 3 }), "pubrec"],
    [4, invalidUtf8, "puback"], // Payload Format Indicator 1, payload not UTF-8
  ];
  const seen: number[] = [];
  for (const [id, bytes, cmd] of sent) {
    await c.send(bytes);
    const a = await c.expect(cmd);
    assert.equal(a.messageId, id);
    seen.push((a.reasonCode as number | undefined) ?? 0);
  }
  assert.deepEqual(seen, [0x10, 0x87, 0x10, 0x99]);
  for (const code of seen) assert.ok(ACK_CODES.has(code), `0x${code.toString(16)}`);
  await c.sendPacket({ cmd: "pubrel", messageId: 3 });
  assert.equal((await c.expect("pubcomp")).reasonCode ?? 0, 0);
  await c.sendPacket({ cmd: "pubrel", messageId: 999 });
  assert.equal((await c.expect("pubcomp")).reasonCode, 0x92);
});

Deno.test("3.4.2.1, 3.5.2.1, 3.7.2.1: acknowledgements from the client in their short forms and with success codes other than 0 complete their flows", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("short-acks", 5, { properties: { receiveMaximum: 1 } });
  await c.subscribe("sa/#", 2);
  await using pub = await connectClient(b.port, { clientId: "sa-pub" });
  for (const m of ["q1-a", "q1-b"]) await pub.publishAsync("sa/1", m, { qos: 1 });
  for (const m of ["q2-a", "q2-b"]) await pub.publishAsync("sa/2", m, { qos: 2 });
  // Receive Maximum 1: each message only comes once the one before is acknowledged.
  const a = await c.expect("publish");
  await c.send([0x40, 0x03, (a.messageId as number) >> 8, (a.messageId as number) & 0xff, 0x00]);
  const bb = await c.expect("publish");
  await c.sendPacket({ cmd: "puback", messageId: bb.messageId, reasonCode: 0x10 });
  const q2a = await c.expect("publish");
  assert.equal(text(q2a), "q2-a");
  const id = q2a.messageId as number;
  await c.send([0x50, 0x03, id >> 8, id & 0xff, 0x10]); // PUBREC 0x10, no properties
  assert.equal((await c.expect("pubrel")).messageId, id);
  await c.send([0x70, 0x03, id >> 8, id & 0xff, 0x00]); // PUBCOMP, no property length
  assert.equal(text(await c.expect("publish")), "q2-b");
});

// ---- 3.14 DISCONNECT --------------------------------------------------------------------------

Deno.test("[MQTT-3.14.4-1, MQTT-3.14.4-2] a DISCONNECT sent while deliveries are queued is the last packet on the connection", async () => {
  await using b = await startBroker({ limits: { max_outgoing_bytes: 64 * 1024 } });
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("busy");
  await c.subscribe("burst/#", 1);
  await using pub = await connectClient(b.port, { clientId: "burst-pub" });
  const payload = "p".repeat(2048);
  for (let i = 0; i < 300; i++) pub.publish("burst/x", payload, { qos: i % 2 as 0 | 1 });
  // Wait until deliveries flow, then break a rule while more are queued.
  await c.expect("publish");
  await c.send(publishBytes({ topic: "a/#" })); // [MQTT-3.3.2-2]: DISCONNECT 0x90
  const after: string[] = [];
  let disconnect: Fields | null = null;
  for (;;) {
    const p = await c.next(5000) as Fields | null;
    if (p === null) break;
    if (disconnect !== null) after.push(p.cmd);
    else if (p.cmd === "disconnect") disconnect = p;
  }
  assert.ok(disconnect !== null, "no DISCONNECT");
  assert.equal(disconnect.reasonCode, 0x90);
  assert.deepEqual(after, [], "packets after DISCONNECT");
});

Deno.test("[MQTT-3.14.2-2] a DISCONNECT from the server never carries a Session Expiry Interval", async () => {
  await using b = await startBroker();
  // A protocol error, from a client whose session outlives the connection.
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("sei", 5, { clean: false, properties: { sessionExpiryInterval: 300 } });
  await c.send(publishBytes({ topic: "a/+" }));
  const d1 = await c.expect("disconnect");
  assert.equal(d1.reasonCode, 0x90);
  assert.equal(
    (d1.properties as Record<string, unknown> | undefined)?.sessionExpiryInterval,
    undefined,
  );
  // A takeover.
  await using old = await RawClient.connect(b.port, 5);
  await old.handshake("sei", 5, { clean: false, properties: { sessionExpiryInterval: 300 } });
  await using fresh = await RawClient.connect(b.port, 5);
  await fresh.handshake("sei", 5, { clean: false, properties: { sessionExpiryInterval: 300 } });
  const d2 = await old.expect("disconnect");
  assert.equal(d2.reasonCode, 0x8e);
  assert.equal(
    (d2.properties as Record<string, unknown> | undefined)?.sessionExpiryInterval,
    undefined,
  );
});

Deno.test("[MQTT-3.14.2-3] the server's DISCONNECT leaves its Reason String out when it would exceed the client's Maximum Packet Size", async () => {
  await using b = await startBroker();
  for (const [max, withReason] of [[16, false], [1024, true]] as const) {
    await using c = await RawClient.connect(b.port, 5);
    await c.handshake(`mps-${max}`, 5, { properties: { maximumPacketSize: max } });
    await c.send(publishBytes({ topic: "a/#" }));
    const d = await c.expect("disconnect");
    assert.equal(d.reasonCode, 0x90);
    // Fixed header (2 bytes) plus the remaining length mqtt-packet decoded.
    assert.ok(2 + (d.length as number) <= max, `DISCONNECT of ${2 + (d.length as number)} bytes`);
    const reason = (d.properties as Record<string, unknown> | undefined)?.reasonString;
    assert.equal(reason !== undefined, withReason, `reason string ${JSON.stringify(reason)}`);
  }
});

Deno.test("[MQTT-3.14.1-1] a DISCONNECT with reserved flag bits set gets DISCONNECT 0x81, and the will is published", async () => {
  await using b = await startBroker();
  await using watcher = await subscriber(b.port, "will/#", 0, { clientId: "will-watch" });
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("bad-disconnect", 5, {
    will: { topic: "will/bad", payload: "gone", qos: 0, retain: false },
  });
  await c.send([0xe1, 0x00]);
  const d = await c.expect("disconnect");
  assert.equal(d.reasonCode, 0x81);
  assert.equal(await c.next(), null);
  const w = await watcher.inbox.next();
  assert.equal(w.topic, "will/bad");
  assert.equal(w.payload, "gone");
});

// ---- 3.15 AUTH ------------------------------------------------------------------------------

Deno.test("[MQTT-3.15.1-1] an AUTH with reserved flag bits set is malformed: DISCONNECT 0x81", async () => {
  await assertRefused(new Uint8Array([0xf1, 0x02, 0x18, 0x00]), 0x81);
});

// ---- 4.7 topic names --------------------------------------------------------------------------

Deno.test("[MQTT-4.7.3-4] matching does no normalisation: Unicode forms, case, spaces and empty levels are distinct", async () => {
  const nfc = "caf\u00e9";
  const nfd = "cafe\u0301";
  await using b = await startBroker();
  await using sub = await connectClient(b.port, { clientId: "norm-sub" });
  const inbox = collect(sub);
  await sub.subscribeAsync([nfc, "Case/t", "sp ace", "lvl", "end"], { qos: 1 });
  await using pub = await connectClient(b.port, { clientId: "norm-pub" });
  for (const t of [nfd, nfc, "case/t", "Case/t", "sp  ace", " sp ace", "sp ace", "lvl/", "/lvl"]) {
    await pub.publishAsync(t, t, { qos: 1 });
  }
  await pub.publishAsync("lvl", "lvl", { qos: 1 });
  await pub.publishAsync("end", "", { qos: 1 });
  const got = (await receivedBefore(inbox)).map((m) => m.topic);
  assert.deepEqual(got, [nfc, "Case/t", "sp ace", "lvl"]);
});
