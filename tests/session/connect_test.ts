/**
 * CONNECT handling seen from real clients: the connect timeout, protocol name
 * and level checks, client identifier rules, what CONNACK advertises (and that
 * it is true), authentication methods and the connection limit.
 */
import assert from "node:assert/strict";
import { collect, connectClient, delay, RawClient, startBroker } from "../helpers/broker.ts";
import { bystanders, frame, str, varint } from "../helpers/wire.ts";

interface ConnectFields {
  name?: string;
  level?: number;
  flags?: number;
  keepAlive?: number;
  clientId?: string;
  /** Raw MQTT 5 property bytes; ignored below level 5. */
  props?: number[];
}

/** CONNECT bytes built by hand, so fields mqtt-packet refuses to encode can be sent. */
function connectBytes(f: ConnectFields = {}): Uint8Array {
  const level = f.level ?? 5;
  const ka = f.keepAlive ?? 60;
  const props = level >= 5 ? [...varint(f.props?.length ?? 0), ...(f.props ?? [])] : [];
  return frame(0x10, [
    ...str(f.name ?? "MQTT"),
    level,
    f.flags ?? 0x02,
    ka >> 8,
    ka & 0xff,
    ...props,
    ...str(f.clientId ?? "raw"),
  ]);
}

Deno.test("a connection that sends no CONNECT within limits.connect_timeout is closed", async () => {
  await using b = await startBroker({ limits: { connect_timeout: 1 } });
  await using silent = await RawClient.connect(b.port);
  const t0 = Date.now();
  await using prompt = await RawClient.connect(b.port);
  await prompt.handshake("prompt");
  // The broker owes nothing to a peer that never spoke MQTT: it just closes.
  assert.equal(await silent.next(4000), null);
  const waited = Date.now() - t0;
  assert.ok(waited >= 900, `closed after ${waited} ms, before the 1 s connect timeout`);
  // A client that sent CONNECT in time is not touched by the connect timeout.
  await delay(600);
  await prompt.send([0xc0, 0x00]);
  await prompt.expect("pingresp");
});

Deno.test("a first packet other than CONNECT closes the connection unanswered", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port);
  // PINGREQ before CONNECT [MQTT-3.1.0-1].
  await c.send([0xc0, 0x00]);
  assert.equal(await c.next(), null);
});

for (
  const [what, bytes] of [
    ["an HTTP request", new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n")],
    ["a TLS ClientHello", new Uint8Array([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])],
    ["a CONNECT header with reserved flags set", new Uint8Array([0x1f, 0x7f, 0x00])],
  ] as const
) {
  Deno.test(`${what} before CONNECT is closed at once, not held for connect_timeout`, async () => {
    // These bytes claim a longer packet than they carry: waiting for the rest would hold the
    // connection (and its buffer) for the whole connect timeout.
    await using b = await startBroker({ limits: { connect_timeout: 60 } });
    await using c = await RawClient.connect(b.port);
    await c.send(bytes);
    assert.equal(await c.next(3000), null);
    assert.equal(b.broker.core.connectionCount, 0);
  });
}

Deno.test("an unknown MQTT 5+ protocol version gets CONNACK 0x84 and is closed", async () => {
  await using b = await startBroker();
  await using others = await bystanders(b.port);
  await using c = await RawClient.connect(b.port, 5);
  // [MQTT-3.1.2-2]: protocol version 6 does not exist.
  await c.send(connectBytes({ level: 6 }));
  const ack = await c.expect("connack");
  assert.equal(ack.reasonCode, 0x84);
  assert.equal(ack.sessionPresent, false);
  assert.equal(await c.next(), null);
  await others.assertServing();
});

Deno.test("an unknown 3.1.1-era protocol level gets return code 1 and is closed", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 4);
  // 3.1.1 [MQTT-3.1.2-2]: level 2 is not a level this broker speaks.
  await c.send(connectBytes({ level: 2 }));
  const ack = await c.expect("connack");
  assert.equal(ack.returnCode, 1);
  assert.equal(await c.next(), null);
});

Deno.test("a CONNECT with a wrong protocol name is closed without CONNACK", async () => {
  await using b = await startBroker();
  await using others = await bystanders(b.port);
  for (const level of [4, 5]) {
    await using c = await RawClient.connect(b.port, level as 4 | 5);
    // [MQTT-3.1.2-1]: not "MQTT", so not this protocol at all.
    await c.send(connectBytes({ name: "MQTX", level }));
    assert.equal(await c.next(), null, `level ${level}`);
  }
  await others.assertServing();
});

Deno.test("an MQTT 5 CONNECT with the reserved flag set gets CONNACK 0x81 and is closed", async () => {
  await using b = await startBroker();
  await using others = await bystanders(b.port);
  await using c = await RawClient.connect(b.port, 5);
  // [MQTT-3.1.2-3]: bit 0 of the Connect Flags is reserved.
  await c.send(connectBytes({ flags: 0x03 }));
  const ack = await c.expect("connack");
  assert.equal(ack.reasonCode, 0x81);
  // An error in CONNECT is answered by CONNACK, never DISCONNECT [MQTT-3.14.0-1].
  assert.equal(await c.next(), null);
  await others.assertServing();
});

Deno.test("a 3.1.1 CONNECT with the reserved flag set is closed without CONNACK", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 4);
  // 3.1.1 [MQTT-3.1.2-3], [MQTT-3.1.4-1]: close without sending a CONNACK.
  await c.send(connectBytes({ level: 4, flags: 0x03 }));
  assert.equal(await c.next(), null);
});

Deno.test("an MQTT 5 client with an empty client id gets a unique Assigned Client Identifier it can resume with", async () => {
  await using b = await startBroker();
  await using first = await RawClient.connect(b.port, 5);
  // [MQTT-3.1.3-6], [MQTT-3.1.3-7]: assign a unique id and return it in CONNACK.
  const ack = await first.handshake("", 5, { properties: { sessionExpiryInterval: 60 } });
  const props = ack.properties as Record<string, unknown> | undefined;
  const assigned = props?.assignedClientIdentifier;
  assert.equal(typeof assigned, "string");
  assert.ok((assigned as string).length > 0);

  await using second = await RawClient.connect(b.port, 5);
  const ack2 = await second.handshake("", 5);
  const other = (ack2.properties as Record<string, unknown>).assignedClientIdentifier;
  assert.notEqual(other, assigned, "two clients got the same assigned id");

  await first.sendPacket({
    cmd: "subscribe",
    messageId: 1,
    subscriptions: [{ topic: "assigned/t", qos: 1 }],
  });
  assert.deepEqual((await first.expect("suback")).granted, [1]);
  await first.sendPacket({ cmd: "disconnect", reasonCode: 0 });
  assert.equal(await first.next(), null);

  // The session was filed under the assigned id: resuming it finds the subscription.
  await using again = await RawClient.connect(b.port, 5);
  const ack3 = await again.handshake(assigned as string, 5, {
    clean: false,
    properties: { sessionExpiryInterval: 60 },
  });
  assert.equal(ack3.sessionPresent, true);
  await using pub = await connectClient(b.port, { clientId: "assigned-pub" });
  await pub.publishAsync("assigned/t", "for the assigned id", { qos: 1 });
  const msg = await again.expect("publish");
  assert.equal(msg.topic, "assigned/t");
  assert.equal(String(msg.payload), "for the assigned id");
});

Deno.test("a 3.1.1 client with an empty client id and clean session 0 gets return code 2 and is closed", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 4);
  // 3.1.1 [MQTT-3.1.3-8].
  await c.send(connectBytes({ level: 4, flags: 0x00, clientId: "" }));
  const ack = await c.expect("connack");
  assert.equal(ack.returnCode, 2);
  assert.equal(ack.sessionPresent, false);
  assert.equal(await c.next(), null);
});

Deno.test("a 3.1.1 client with an empty client id and clean session 1 is accepted and served", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 4);
  // 3.1.1 [MQTT-3.1.3-6]: the server assigns an id internally (3.1.1 cannot tell the client).
  await c.send(connectBytes({ level: 4, flags: 0x02, clientId: "" }));
  const ack = await c.expect("connack");
  assert.equal(ack.returnCode, 0);
  await c.sendPacket({
    cmd: "subscribe",
    messageId: 7,
    subscriptions: [{ topic: "anon/+", qos: 0 }],
  }, 4);
  assert.deepEqual((await c.expect("suback")).granted, [0]);
  await using pub = await connectClient(b.port, { clientId: "anon-pub", protocolVersion: 4 });
  await pub.publishAsync("anon/x", "hi", { qos: 0 });
  const msg = await c.expect("publish");
  assert.equal(msg.topic, "anon/x");
});

Deno.test("CONNACK advertises the configured limits and no Maximum QoS", async () => {
  await using b = await startBroker({
    limits: { receive_maximum: 7, max_packet_size: 4096, topic_alias_maximum: 3 },
  });
  await using c = await RawClient.connect(b.port, 5);
  const ack = await c.handshake("props");
  const p = ack.properties as Record<string, unknown>;
  assert.equal(p.receiveMaximum, 7);
  assert.equal(p.maximumPacketSize, 4096);
  assert.equal(p.topicAliasMaximum, 3);
  // Absent means "available"; when present they must say so.
  for (
    const k of [
      "retainAvailable",
      "wildcardSubscriptionAvailable",
      "subscriptionIdentifiersAvailable",
      "sharedSubscriptionAvailable",
    ]
  ) {
    assert.ok(p[k] === undefined || p[k] === true, `${k} = ${p[k]}`);
  }
  // No Maximum QoS means QoS 2 is supported [MQTT-3.2.2-9].
  assert.equal(p.maximumQoS, undefined);
});

Deno.test("QoS 2 is accepted and delivered, as the absent Maximum QoS promises", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("qos2");
  await c.sendPacket({
    cmd: "subscribe",
    messageId: 1,
    subscriptions: [{ topic: "q2/t", qos: 2 }],
  });
  assert.deepEqual((await c.expect("suback")).granted, [2]);
  await c.sendPacket({
    cmd: "publish",
    topic: "q2/t",
    payload: "exactly once",
    qos: 2,
    messageId: 9,
  });
  // A broker without QoS 2 would refuse with 0x9B (QoS not supported) or close.
  // The delivery to our own subscription may come before or after the acknowledgements.
  const seen = new Map<string, Record<string, unknown>>();
  const take = async (cmd: string) => {
    while (!seen.has(cmd)) {
      const p = await c.next();
      assert.ok(p !== null, `connection closed while waiting for ${cmd}`);
      seen.set(p.cmd, p as unknown as Record<string, unknown>);
    }
    return seen.get(cmd)!;
  };
  const rec = await take("pubrec");
  assert.equal(rec.messageId, 9);
  assert.ok(((rec.reasonCode as number | undefined) ?? 0) < 0x80, `PUBREC ${rec.reasonCode}`);
  await c.sendPacket({ cmd: "pubrel", messageId: 9 });
  assert.equal((await take("pubcomp")).messageId, 9);
  const pub = await take("publish");
  assert.equal(pub.qos, 2);
  assert.equal(String(pub.payload), "exactly once");
});

Deno.test("retained messages, wildcards, shared subscriptions and subscription ids work as advertised", async () => {
  await using b = await startBroker();
  await using pub = await connectClient(b.port, { clientId: "feat-pub" });
  await pub.publishAsync("feat/retained", "kept", { qos: 1, retain: true });

  await using sub = await connectClient(b.port, { clientId: "feat-sub" });
  const inbox = collect(sub);
  // Retain Available: a later subscriber gets the retained message.
  await sub.subscribeAsync("feat/retained", { qos: 1 });
  const kept = await inbox.next();
  assert.equal(kept.payload, "kept");
  assert.equal(kept.packet.retain, true);

  // Wildcard, Shared Subscription and Subscription Identifier Available, all at once.
  await sub.subscribeAsync("$share/g/feat/+/x", {
    qos: 1,
    properties: { subscriptionIdentifier: 42 },
  });
  await pub.publishAsync("feat/a/x", "shared", { qos: 1 });
  const m = await inbox.next();
  assert.equal(m.topic, "feat/a/x");
  assert.equal(m.payload, "shared");
  const ids = m.packet.properties?.subscriptionIdentifier;
  assert.deepEqual(Array.isArray(ids) ? ids : [ids], [42]);
});

/** An MQTT 5 CONNECT asking for SCRAM-SHA-1 (not offered: only SCRAM-SHA-512 is). */
function sendScramConnect(
  c: RawClient,
  clientId: string,
  properties: Record<string, unknown> = {},
): Promise<void> {
  return c.sendConnect(clientId, 5, {
    properties: { authenticationMethod: "SCRAM-SHA-1", ...properties },
  });
}

Deno.test("a CONNECT with an Authentication Method gets CONNACK 0x8C and is closed", async () => {
  await using b = await startBroker();
  await using others = await bystanders(b.port);
  await using c = await RawClient.connect(b.port, 5);
  await sendScramConnect(c, "scram");
  // No extended authentication is supported: refuse, then close [MQTT-3.2.2-7].
  const ack = await c.expect("connack");
  assert.equal(ack.reasonCode, 0x8c);
  assert.equal(await c.next(), null);
  await others.assertServing();
});

Deno.test("limits.max_connections refuses further clients with 0x97 (MQTT 5) and 3 (3.1.1)", async () => {
  await using b = await startBroker({ limits: { max_connections: 2 } });
  const others = await bystanders(b.port);
  try {
    await using v5 = await RawClient.connect(b.port, 5);
    await v5.send(connectBytes({ clientId: "third-v5" }));
    const ack5 = await v5.expect("connack");
    assert.equal(ack5.reasonCode, 0x97);
    assert.equal(await v5.next(), null);

    await using v4 = await RawClient.connect(b.port, 4);
    await v4.send(connectBytes({ level: 4, clientId: "third-v4" }));
    const ack4 = await v4.expect("connack");
    assert.equal(ack4.returnCode, 3);
    assert.equal(await v4.next(), null);

    await others.assertServing();
  } finally {
    await others[Symbol.asyncDispose]();
  }
  // The limit counts live connections: once the bystanders left, a client gets in.
  let accepted = false;
  for (let i = 0; i < 20 && !accepted; i++) {
    await using c = await RawClient.connect(b.port, 5);
    await c.send(connectBytes({ clientId: "later" }));
    const ack = await c.expect("connack");
    accepted = ack.reasonCode === 0;
    if (!accepted) await delay(50);
  }
  assert.ok(accepted, "no client was accepted after the others disconnected");
});

Deno.test("a client with a Maximum Packet Size of 20 gets a CONNACK that fits [MQTT-3.1.2-24]", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 5);
  const ack = await c.handshake("tiny", 5, { properties: { maximumPacketSize: 20 } });
  assert.ok(2 + (ack.length as number) <= 20, `CONNACK is ${2 + (ack.length as number)} bytes`);
});

Deno.test("a refusing CONNACK leaves its Reason String out when it would not fit the client's Maximum Packet Size [MQTT-3.2.2-19]", async () => {
  await using b = await startBroker();
  const refusedWith = async (properties: Record<string, unknown>) => {
    await using c = await RawClient.connect(b.port, 5);
    await sendScramConnect(c, "refused", properties);
    const ack = await c.expect("connack");
    assert.equal(ack.reasonCode, 0x8c);
    return ack;
  };
  // Without a limit the client is told why.
  const told = await refusedWith({});
  assert.match(
    String((told.properties as Record<string, unknown>)?.reasonString),
    /authentication/,
  );
  // With room for 20 bytes only (an accepted CONNACK's 16 would fit; below that the client is
  // refused with 0x95 first): the bare CONNACK (5 bytes).
  const bare = await refusedWith({ maximumPacketSize: 20 });
  assert.equal((bare.properties as Record<string, unknown> | undefined)?.reasonString, undefined);
  assert.ok(2 + (bare.length as number) <= 20, `CONNACK is ${2 + (bare.length as number)} bytes`);
});

Deno.test("a CONNECT refused while its properties are read gets no Reason String: the client's Maximum Packet Size is not known yet [MQTT-3.2.2-19]", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 5);
  // Receive Maximum 0 (a Protocol Error, section 3.1.2.11.3) before Maximum
  // Packet Size 10: decoding stops at the first, so the limit in the second is never read.
  const props = [0x21, 0x00, 0x00, 0x27, 0x00, 0x00, 0x00, 0x0a];
  const body = [0, 4, 0x4d, 0x51, 0x54, 0x54, 5, 0x02, 0, 0, props.length, ...props, 0, 1, 0x78];
  await c.send([0x10, body.length, ...body]);
  const ack = await c.expect("connack");
  assert.equal(ack.reasonCode, 0x82);
  assert.equal((ack.properties as Record<string, unknown> | undefined)?.reasonString, undefined);
  assert.ok(2 + (ack.length as number) <= 10, `CONNACK is ${2 + (ack.length as number)} bytes`);
});

Deno.test("each broker's CONNACK carries its own limits, Session Present and what it tells one client", async () => {
  // Accepted CONNACKs that say nothing about the client are encoded once per broker's limits and
  // shared: two brokers in one process, each connected to twice, must still answer with their own.
  await using a = await startBroker({
    limits: { receive_maximum: 7, max_session_expiry_interval: 100, topic_alias_maximum: 3 },
  });
  await using b = await startBroker({ limits: { receive_maximum: 9, topic_alias_maximum: 2 } });
  for (const [broker, receiveMaximum] of [[a, 7], [b, 9], [a, 7], [b, 9]] as const) {
    await using c = await RawClient.connect(broker.port, 5);
    const ack = await c.handshake(`shared-${receiveMaximum}`);
    const p = ack.properties as Record<string, unknown>;
    assert.equal(p.receiveMaximum, receiveMaximum);
    assert.equal(p.topicAliasMaximum, broker === b ? 2 : 3);
    assert.equal(ack.sessionPresent, false);
    assert.equal(p.sessionExpiryInterval, undefined);
    assert.equal(p.assignedClientIdentifier, undefined);
  }
  // Resuming: the shared form with Session Present 1.
  await using keep = await RawClient.connect(a.port, 5);
  await keep.handshake("kept", 5, { clean: false, properties: { sessionExpiryInterval: 60 } });
  await keep.sendPacket({ cmd: "disconnect", reasonCode: 0 });
  assert.equal(await keep.next(), null);
  await using back = await RawClient.connect(a.port, 5);
  const resumed = await back.handshake("kept", 5, {
    clean: false,
    properties: { sessionExpiryInterval: 60 },
  });
  assert.equal(resumed.sessionPresent, true);
  assert.equal((resumed.properties as Record<string, unknown>).receiveMaximum, 7);
  // An expiry above the broker's maximum is capped, and the client is told (3.2.2.3.2):
  // its own CONNACK, not the shared one.
  await using capped = await RawClient.connect(a.port, 5);
  const cappedAck = await capped.handshake("capped", 5, {
    properties: { sessionExpiryInterval: 5000 },
  });
  const cp = cappedAck.properties as Record<string, unknown>;
  assert.equal(cp.sessionExpiryInterval, 100);
  assert.equal(cp.receiveMaximum, 7);
  // The next plain client gets the shared form again, without the capped client's expiry.
  await using plain = await RawClient.connect(a.port, 5);
  const plainAck = await plain.handshake("plain");
  assert.equal((plainAck.properties as Record<string, unknown>).sessionExpiryInterval, undefined);
});
