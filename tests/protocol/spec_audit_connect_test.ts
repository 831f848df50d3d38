/**
 * MQTT 5.0 conformance audit, connection side: the CONNECT packet's variable header and payload
 * (sections 3.1.2 and 3.1.3 of the specification, with the 3.2.2 and 4.12 statements its
 * properties bring), and the MQTT 3.1.1 statements about it that differ: the server
 * statements no other test covered, each checked over a real socket. Raw bytes where a normal
 * client would refuse to send the bad input. Statement ids are the specification's (5.0 unless
 * marked 3.1.1); what the server does with a CONNECT (3.1.4, CONNACK, session state, WebSocket)
 * is in spec_audit_connack_test, the delivery side in spec_audit_delivery_test.
 */
import assert from "node:assert/strict";
import { RawClient, startBroker, subscriber } from "../helpers/broker.ts";
import { bystanders, concatBytes, str } from "../helpers/wire.ts";
import {
  CLEAN,
  connectBytes,
  indexOf,
  PASSWORD,
  PINGREQ,
  readUntil,
  SUBSCRIBE_A,
  USERNAME,
  WILL,
  WILL_RETAIN,
  willFields,
} from "./spec_audit_connect_bytes.ts";

const enc = new TextEncoder();

/**
 * Sends `bytes` as the first packet and expects the refusal the version owes a CONNECT that
 * does not conform to section 3.1: MQTT 5 a CONNACK with `code` then a close [MQTT-3.1.4-1],
 * MQTT 3.1.1 a close without CONNACK (3.1.1 [MQTT-3.1.4-1]).
 */
async function assertConnectRefused(port: number, bytes: Uint8Array, level: 4 | 5, code = 0x81) {
  await using c = await RawClient.connect(port, level);
  await c.send(bytes);
  if (level === 5) {
    const ack = await c.expect("connack");
    assert.equal(ack.reasonCode, code, `CONNACK 0x${(ack.reasonCode as number).toString(16)}`);
    assert.equal(ack.sessionPresent, false);
  }
  assert.equal(await c.next(), null, "still open after the refusal");
}

// ---- 3.1.2 CONNECT variable header ------------------------------------------------------

Deno.test("[MQTT-3.1.2-9] a CONNECT with the Will Flag set and no Will Topic and Message is malformed: MQTT 5 CONNACK 0x81, 3.1.1 a close without CONNACK", async () => {
  await using b = await startBroker();
  await using others = await bystanders(b.port);
  // The payload ends after the client id: Will Properties, Topic and Payload are missing.
  await assertConnectRefused(b.port, connectBytes({ flags: CLEAN | WILL, payload: str("w") }), 5);
  // Will properties present, topic and message missing.
  await assertConnectRefused(
    b.port,
    connectBytes({ flags: CLEAN | WILL, payload: [...str("w"), 0] }),
    5,
  );
  await assertConnectRefused(
    b.port,
    connectBytes({ level: 4, flags: CLEAN | WILL, payload: str("w") }),
    4,
  );
  await others.assertServing();
});

for (
  const [ids, what, flags, payload] of [
    ["MQTT-3.1.2-11", "Will QoS 1 without the Will Flag", CLEAN | 0x08, str("w")],
    ["MQTT-3.1.2-13", "Will Retain without the Will Flag", CLEAN | WILL_RETAIN, str("w")],
    ["MQTT-3.1.2-12", "Will QoS 3", CLEAN | WILL | 0x18, [...str("w")]],
  ] as const
) {
  Deno.test(`[${ids}] a CONNECT with ${what} is malformed: MQTT 5 CONNACK 0x81, 3.1.1 a close without CONNACK`, async () => {
    await using b = await startBroker();
    await using watcher = await subscriber(b.port, "will/#", 0, { clientId: "watch" });
    for (const level of [5, 4] as const) {
      const p = flags & WILL ? [...payload, ...willFields("will/t", "x", level === 5)] : payload;
      await assertConnectRefused(b.port, connectBytes({ level, flags, payload: [...p] }), level);
    }
    // Nothing was accepted, so there is no will to publish either [MQTT-3.1.2-12].
    await watcher.inbox.none(200);
  });
}

Deno.test("[MQTT-3.1.2-16..19] the User Name and Password Flags must match the payload: a field the flags leave out, or one they announce and that is missing, is malformed", async () => {
  await using b = await startBroker();
  await using others = await bystanders(b.port);
  const cases: [string, number, number[]][] = [
    ["a user name with the User Name Flag 0", CLEAN, [...str("u"), ...str("alice")]],
    ["the User Name Flag 1 and no user name", CLEAN | USERNAME, str("u")],
    ["a password with the Password Flag 0", CLEAN | USERNAME, [
      ...str("u"),
      ...str("alice"),
      ...str("secret"),
    ]],
    ["the Password Flag 1 and no password", CLEAN | USERNAME | PASSWORD, [
      ...str("u"),
      ...str("alice"),
    ]],
  ];
  for (const [what, flags, payload] of cases) {
    for (const level of [5, 4] as const) {
      await assertConnectRefused(b.port, connectBytes({ level, flags, payload }), level)
        .catch((e) => {
          throw new Error(`${what} (level ${level}): ${e.message}`);
        });
    }
  }
  await others.assertServing();
});

Deno.test("3.1.2.9: MQTT 5 allows a password without a user name (accepted); 3.1.1 [MQTT-3.1.2-22] does not (closed without CONNACK)", async () => {
  await using b = await startBroker();
  const payload = [...str("pw-only"), ...str("secret")];
  await using c = await RawClient.connect(b.port, 5);
  await c.send(connectBytes({ flags: CLEAN | PASSWORD, payload }));
  assert.equal((await c.expect("connack")).reasonCode, 0);
  await assertConnectRefused(
    b.port,
    connectBytes({ level: 4, flags: CLEAN | PASSWORD, payload }),
    4,
  );
});

Deno.test("[MQTT-3.1.2-10] a will is removed once published: neither resuming its session nor ending it publishes it again", async () => {
  await using b = await startBroker();
  await using watcher = await subscriber(b.port, "will/once", 1, { clientId: "watch" });
  const c = await RawClient.connect(b.port, 5);
  await c.handshake("once", 5, {
    clean: true,
    properties: { sessionExpiryInterval: 60 },
    will: { topic: "will/once", payload: "gone", qos: 1, retain: false },
  });
  c.close(); // no DISCONNECT: the will goes out at once (no Will Delay Interval)
  await c[Symbol.asyncDispose]();
  assert.equal((await watcher.inbox.next()).payload, "gone");
  // Resume the session (no will this time) and leave it with "disconnect with will".
  await using again = await RawClient.connect(b.port, 5);
  const ack = await again.handshake("once", 5, {
    clean: false,
    properties: { sessionExpiryInterval: 60 },
  });
  assert.equal(ack.sessionPresent, true);
  await again.sendPacket({ cmd: "disconnect", reasonCode: 0x04 });
  await again.expectClosed();
  // End the session with Clean Start 1.
  await using last = await RawClient.connect(b.port, 5);
  await last.handshake("once", 5, { clean: true });
  await watcher.inbox.none(300);
});

Deno.test("[MQTT-3.1.2-28, MQTT-3.2.2-20, MQTT-4.12.0-6] CONNACK carries no Response Information, no User Property and no Authentication Method, and no AUTH packet follows", async () => {
  await using b = await startBroker();
  for (const requestResponseInformation of [false, true]) {
    await using c = await RawClient.connect(b.port, 5);
    const ack = await c.handshake(`ri-${requestResponseInformation}`, 5, {
      properties: { requestResponseInformation, requestProblemInformation: true },
    });
    const props = (ack.properties ?? {}) as Record<string, unknown>;
    assert.equal(props.responseInformation, undefined);
    assert.equal(props.userProperties, undefined);
    assert.equal(props.authenticationMethod, undefined);
    assert.equal(props.authenticationData, undefined);
    await c.send(PINGREQ);
    assert.equal((await c.next())?.cmd, "pingresp", "something came before PINGRESP");
  }
});

Deno.test("[MQTT-3.1.2-29] with Request Problem Information 0, refusing PUBACK, PUBREC and SUBACK carry no Reason String or User Property", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("rpi0", 5, { properties: { requestProblemInformation: false } });
  // A client may not publish to "$" topics here: 0x87.
  await c.sendPacket({ cmd: "publish", topic: "$x/t", qos: 1, messageId: 1, payload: "x" });
  const puback = await c.expect("puback");
  assert.equal(puback.reasonCode, 0x87);
  assert.equal(puback.properties, undefined, JSON.stringify(puback.properties));
  await c.sendPacket({ cmd: "publish", topic: "$x/t", qos: 2, messageId: 2, payload: "x" });
  const pubrec = await c.expect("pubrec");
  assert.equal(pubrec.reasonCode, 0x87);
  assert.equal(pubrec.properties, undefined, JSON.stringify(pubrec.properties));
  // An invalid filter ("#" not last): 0x8F in the SUBACK.
  await c.send(SUBSCRIBE_A("a/#/b", 3));
  const suback = await c.expect("suback");
  assert.ok((suback.granted as number[])[0] >= 0x80);
  assert.equal(suback.properties, undefined, JSON.stringify(suback.properties));
});

Deno.test("3.1.2.11: CONNECT properties out of range or given twice are Protocol Errors (CONNACK 0x82), one CONNECT may not carry is malformed (0x81); each is closed", async () => {
  await using b = await startBroker();
  await using others = await bystanders(b.port);
  const cases: [string, number[], number][] = [
    ["Receive Maximum 0", [0x21, 0, 0], 0x82],
    ["Maximum Packet Size 0", [0x27, 0, 0, 0, 0], 0x82],
    ["Request Problem Information 2", [0x17, 2], 0x82],
    ["Request Response Information 2", [0x19, 2], 0x82],
    ["Session Expiry Interval twice", [0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2], 0x82],
    ["Topic Alias Maximum twice", [0x22, 0, 1, 0x22, 0, 2], 0x82],
    ["Authentication Data without a Method", [0x16, ...str("x")], 0x82],
    ["a Will Delay Interval among the CONNECT properties", [0x18, 0, 0, 0, 1], 0x81],
    ["a Payload Format Indicator", [0x01, 1], 0x81],
  ];
  for (const [what, props, code] of cases) {
    await assertConnectRefused(b.port, connectBytes({ props, payload: str("props") }), 5, code)
      .catch((e) => {
        throw new Error(`${what}: ${e.message}`);
      });
  }
  await others.assertServing();
});

// ---- 3.1.3 CONNECT payload ---------------------------------------------------------------

Deno.test("[MQTT-3.1.3-3] a CONNECT without a Client Identifier is malformed: MQTT 5 CONNACK 0x81, 3.1.1 a close without CONNACK", async () => {
  await using b = await startBroker();
  await assertConnectRefused(b.port, connectBytes({ payload: [] }), 5);
  await assertConnectRefused(b.port, connectBytes({ level: 4, payload: [] }), 4);
  // A length that runs past the packet.
  await assertConnectRefused(b.port, connectBytes({ payload: [0, 9, 0x61] }), 5);
});

for (
  const [id, field, build] of [
    ["MQTT-3.1.3-4", "Client Identifier", (bad: Uint8Array, v5: boolean) => ({
      flags: CLEAN,
      payload: str(bad),
      v5,
    })],
    ["MQTT-3.1.3-11", "Will Topic", (bad: Uint8Array, v5: boolean) => ({
      flags: CLEAN | WILL,
      payload: [...str("w"), ...willFields(bad, "x", v5)],
      v5,
    })],
    ["MQTT-3.1.3-12", "User Name", (bad: Uint8Array, v5: boolean) => ({
      flags: CLEAN | USERNAME,
      payload: [...str("u"), ...str(bad)],
      v5,
    })],
  ] as const
) {
  Deno.test(`[${id}] a ${field} that is not a well-formed UTF-8 string (or holds U+0000) is malformed: MQTT 5 CONNACK 0x81, 3.1.1 a close without CONNACK`, async () => {
    await using b = await startBroker();
    await using watcher = await subscriber(b.port, "#", 0, { clientId: "watch" });
    const bad = [
      new Uint8Array([0x61, 0xc3, 0x28]), // a lone lead byte
      new Uint8Array([0x61, 0xed, 0xa0, 0x80]), // U+D800, a surrogate
      new Uint8Array([0x61, 0x00]), // U+0000
    ];
    for (const bytes of bad) {
      for (const level of [5, 4] as const) {
        const f = build(bytes, level === 5);
        await assertConnectRefused(
          b.port,
          connectBytes({ level, flags: f.flags, payload: [...f.payload] }),
          level,
        );
      }
    }
    await watcher.inbox.none(200);
  });
}

Deno.test("[MQTT-3.1.3-5] (also 3.1.1) Client Identifiers of 1 and of 23 characters from 0-9, a-z, A-Z are accepted", async () => {
  await using b = await startBroker();
  const ids = ["Z", "0123456789abcdefghijkLM", "zyxwvutsrqponmNOPQRSTUV", "9"];
  for (const level of [5, 4] as const) {
    for (const id of ids) {
      assert.equal(enc.encode(id).length <= 23, true);
      await using c = await RawClient.connect(b.port, level);
      const ack = await c.handshake(id, level);
      if (level === 5) {
        const props = (ack.properties ?? {}) as Record<string, unknown>;
        assert.equal(props.assignedClientIdentifier, undefined);
      }
    }
  }
});

Deno.test("[MQTT-3.1.3-10] the will is published with its User Properties in their order, a name given twice included", async () => {
  await using b = await startBroker();
  // A raw subscriber: the byte order of the properties is what is checked.
  const sub = await Deno.connect({ hostname: "127.0.0.1", port: b.port });
  try {
    await sub.write(concatBytes([
      connectBytes({ payload: str("order-sub") }),
      SUBSCRIBE_A("will/order"),
    ]));
    const userProps = [
      [0x26, ...str("b"), ...str("1")],
      [0x26, ...str("a"), ...str("2")],
      [0x26, ...str("b"), ...str("3")],
    ].flat();
    await readUntil(sub, new Uint8Array([0x90])); // the SUBACK
    await using w = await RawClient.connect(b.port, 5);
    await w.send(connectBytes({
      flags: CLEAN | WILL,
      payload: [...str("order-will"), ...willFields("will/order", "bye", true, userProps)],
    }));
    assert.equal((await w.expect("connack")).reasonCode, 0);
    w.close();
    // Everything the subscriber gets until the will's payload: the properties come before it.
    const got = await readUntil(sub, enc.encode("bye"));
    assert.ok(
      indexOf(got, new Uint8Array(userProps)) >= 0,
      "the will's User Properties are not there in their order",
    );
  } finally {
    sub.close();
  }
});
