/**
 * Control-packet decoders against hand-built bytes for every malformed form
 * the spec tells a server to refuse, with the reason code it must use. The
 * random valid packets, against mqtt-packet, are in decode_test.ts.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { utf8 } from "../../src/protocol/bytes.ts";
import {
  checkFixedHeader,
  connectPreamble,
  decodeConnect,
  decodeDisconnect,
  decodeSubscribe,
  decodeUnsubscribe,
  type ProtocolLevel,
} from "../../src/protocol/decode.ts";
import { MqttError, ReasonCode } from "../../src/protocol/reason_codes.ts";
import { genBody, type Version } from "./mqtt_packet_body.ts";

function assertCode(fn: () => unknown, code: number, what: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof MqttError, `${what}: expected MqttError, got ${e}`);
    assert.equal(e.code, code, `${what}: got 0x${e.code.toString(16)} (${e.message})`);
    return true;
  }, what);
}

// ---- malformed CONNECT -----------------------------------------------------------

const FLAGS_AT = 7; // after "\0\4MQTT" and the protocol level

/** A valid CONNECT body from mqtt-packet, for mutation. */
function connectBody(version: Version, extra: Record<string, unknown> = {}): Uint8Array {
  return genBody({
    cmd: "connect",
    protocolId: "MQTT",
    protocolVersion: version,
    clientId: "c",
    clean: true,
    keepalive: 30,
    ...extra,
  }, version);
}

/** A v5 CONNECT body built by hand: flags, raw property bytes, then the payload bytes. */
function rawConnect(flags: number, props: number[], payload: number[] = [0, 1, 0x63]) {
  return Uint8Array.from([
    0,
    4,
    0x4d,
    0x51,
    0x54,
    0x54,
    5,
    flags,
    0,
    30,
    props.length,
    ...props,
    ...payload,
  ]);
}

function str(s: string): number[] {
  const b = utf8(s);
  return [b.length >> 8, b.length & 0xff, ...b];
}

function decodeC(body: Uint8Array) {
  return decodeConnect(body, 0, body.length);
}

Deno.test("CONNECT with the reserved flag set is a malformed packet", () => {
  // [MQTT-3.1.2-3]
  for (const v of [4, 5] as const) {
    const b = connectBody(v);
    b[FLAGS_AT] |= 0x01;
    assertCode(() => decodeC(b), ReasonCode.MalformedPacket, `v${v}`);
  }
});

Deno.test("CONNECT with Will QoS 3 is a malformed packet", () => {
  // [MQTT-3.1.2-12]
  for (const v of [4, 5] as const) {
    const b = connectBody(v, { will: { topic: "w", payload: Buffer.from("x"), qos: 1 } });
    b[FLAGS_AT] |= 0x18;
    assertCode(() => decodeC(b), ReasonCode.MalformedPacket, `v${v}`);
  }
});

Deno.test("CONNECT with Will QoS or Will Retain but no Will Flag is a malformed packet", () => {
  // [MQTT-3.1.2-11] Will QoS must be 0 and [MQTT-3.1.2-13] Will Retain 0 without a will.
  for (const v of [4, 5] as const) {
    for (const bit of [0x08, 0x10, 0x20]) {
      const b = connectBody(v);
      b[FLAGS_AT] |= bit;
      assertCode(() => decodeC(b), ReasonCode.MalformedPacket, `v${v} bit ${bit}`);
    }
  }
});

Deno.test("a 3.1.1 CONNECT with a password but no user name is malformed; MQTT 5 allows it", () => {
  // [MQTT-3.1.2-22] (3.1.1): no password without a user name. MQTT 5 dropped the rule.
  const v4 = Uint8Array.from([...connectBody(4), 0, 2, 0x70, 0x77]);
  v4[FLAGS_AT] |= 0x40;
  assertCode(() => decodeC(v4), ReasonCode.MalformedPacket, "3.1.1");
  const v5 = Uint8Array.from([...connectBody(5), 0, 2, 0x70, 0x77]);
  v5[FLAGS_AT] |= 0x40;
  const got = decodeC(v5);
  assert.equal(got.username, undefined);
  assert.deepEqual(got.password, Uint8Array.of(0x70, 0x77));
});

Deno.test("CONNECT with trailing or missing bytes is a malformed packet", () => {
  for (const v of [4, 5] as const) {
    const b = connectBody(v, { username: "u" });
    assertCode(() => decodeC(Uint8Array.from([...b, 0])), ReasonCode.MalformedPacket, "trailing");
    assertCode(() => decodeC(b.subarray(0, b.length - 1)), ReasonCode.MalformedPacket, "short");
  }
});

Deno.test("CONNECT properties: duplicates are protocol errors, misplaced ones malformed", () => {
  const sei = [0x11, 0, 0, 0, 10];
  assert.equal(decodeC(rawConnect(0x02, sei)).properties.sessionExpiryInterval, 10);
  // Single-valued property twice: Protocol Error (MQTT 5 section 3.1.2.11).
  assertCode(() => decodeC(rawConnect(0x02, [...sei, ...sei])), 0x82, "Session Expiry twice");
  assertCode(
    () => decodeC(rawConnect(0x02, [0x21, 0, 5, 0x21, 0, 6])),
    ReasonCode.ProtocolError,
    "Receive Maximum twice",
  );
  // User properties may repeat.
  const up = [0x26, ...str("k"), ...str("a"), 0x26, ...str("k"), ...str("b")];
  assert.deepEqual(decodeC(rawConnect(0x02, up)).properties.userProperties, [["k", "a"], [
    "k",
    "b",
  ]]);
  // An identifier not valid for CONNECT (Topic Alias, Subscription Identifier,
  // an unknown one) is a Malformed Packet (MQTT 5 section 2.2.2.2).
  assertCode(() => decodeC(rawConnect(0x02, [0x23, 0, 1])), 0x81, "Topic Alias in CONNECT");
  assertCode(() => decodeC(rawConnect(0x02, [0x0b, 1])), 0x81, "Subscription Identifier");
  assertCode(() => decodeC(rawConnect(0x02, [0x7f, 0])), 0x81, "unknown property");
  // Property length past the end of the packet.
  assertCode(
    () => decodeC(Uint8Array.from([0, 4, 0x4d, 0x51, 0x54, 0x54, 5, 2, 0, 30, 40, 0x11])),
    ReasonCode.MalformedPacket,
    "property length overrun",
  );
});

Deno.test("CONNECT property values out of range are protocol errors", () => {
  // Receive Maximum 0 and Maximum Packet Size 0 are Protocol Errors (3.1.2.11.3, 3.1.2.11.4).
  assertCode(() => decodeC(rawConnect(0x02, [0x21, 0, 0])), 0x82, "Receive Maximum 0");
  assertCode(() => decodeC(rawConnect(0x02, [0x27, 0, 0, 0, 0])), 0x82, "Maximum Packet Size 0");
  // Request Problem / Response Information other than 0 or 1 (3.1.2.11.6, 3.1.2.11.7).
  assertCode(() => decodeC(rawConnect(0x02, [0x17, 2])), 0x82, "Request Problem Information 2");
  assertCode(() => decodeC(rawConnect(0x02, [0x19, 2])), 0x82, "Request Response Information 2");
  // Authentication Data without an Authentication Method (3.1.2.11.10).
  assertCode(() => decodeC(rawConnect(0x02, [0x16, 0, 1, 9])), 0x82, "auth data, no method");
});

Deno.test("Will properties: duplicates are protocol errors, CONNECT-only ones malformed", () => {
  const will = (props: number[]) => [props.length, ...props, ...str("w/t"), 0, 1, 0x78];
  const ok = decodeC(rawConnect(0x06, [], [...str("c"), ...will([0x18, 0, 0, 0, 5])]));
  assert.equal(ok.will?.properties.willDelayInterval, 5);
  assert.equal(ok.will?.topic, "w/t");
  const ct = [0x03, ...str("a")];
  assertCode(
    () => decodeC(rawConnect(0x06, [], [...str("c"), ...will([...ct, ...ct])])),
    ReasonCode.ProtocolError,
    "Content Type twice",
  );
  assertCode(
    () => decodeC(rawConnect(0x06, [], [...str("c"), ...will([0x11, 0, 0, 0, 1])])),
    ReasonCode.MalformedPacket,
    "Session Expiry in will properties",
  );
});

Deno.test("strings that are not well-formed UTF-8 or contain U+0000 make CONNECT malformed", () => {
  // [MQTT-1.5.4-1] ill-formed UTF-8 (incl. encoded surrogates), [MQTT-1.5.4-2] U+0000.
  const badStrings: [string, number[]][] = [
    ["invalid byte", [0, 2, 0xc3, 0x28]],
    ["surrogate", [0, 3, 0xed, 0xa0, 0x80]],
    ["overlong", [0, 2, 0xc0, 0x80]],
    ["U+0000", [0, 3, 0x61, 0x00, 0x62]],
    ["U+0000 in a long non-ASCII string", [...str("ü".repeat(40) + "\u0000")]],
  ];
  for (const [what, s] of badStrings) {
    assertCode(() => decodeC(rawConnect(0x02, [], s)), 0x81, `client id: ${what}`);
    assertCode(
      () => decodeC(rawConnect(0x82, [], [...str("c"), ...s])),
      ReasonCode.MalformedPacket,
      `user name: ${what}`,
    );
    assertCode(
      () => decodeC(rawConnect(0x02, [0x26, ...s, ...str("v")])),
      ReasonCode.MalformedPacket,
      `user property: ${what}`,
    );
    assertCode(
      () => decodeC(rawConnect(0x06, [], [...str("c"), 0, ...s, 0, 0])),
      ReasonCode.MalformedPacket,
      `will topic: ${what}`,
    );
  }
  // A well-formed non-ASCII client id is fine.
  assert.equal(decodeC(rawConnect(0x02, [], str("żółw-🐢"))).clientId, "żółw-🐢");
});

Deno.test("the CONNECT preamble tells MQTT versions apart", () => {
  const pre = (name: string, level: number) => {
    const b = Uint8Array.from([...str(name), level, 2, 0, 0]);
    return connectPreamble(b, 0, b.length);
  };
  assert.deepEqual(pre("MQTT", 4), { kind: "ok", level: 4 });
  assert.deepEqual(pre("MQTT", 5), { kind: "ok", level: 5 });
  assert.deepEqual(pre("MQIsdp", 3), { kind: "ok", level: 3 });
  // [MQTT-3.1.2-2] an unsupported level is answered with 0x84 / return code 1.
  assert.deepEqual(pre("MQTT", 6), { kind: "bad-level", level: 6 });
  assert.deepEqual(pre("MQTT", 3), { kind: "bad-level", level: 3 });
  // [MQTT-3.1.2-1] not MQTT at all.
  assert.deepEqual(pre("HTTP", 4), { kind: "bad-name" });
  assertCode(() => connectPreamble(Uint8Array.of(0, 4, 0x4d), 0, 3), 0x81, "truncated");
});

// ---- malformed SUBSCRIBE / UNSUBSCRIBE / DISCONNECT -------------------------------

function sub(level: ProtocolLevel, bytes: number[]) {
  const b = Uint8Array.from(bytes);
  return decodeSubscribe(b, 0, b.length, level);
}

const F = str("a/b");

Deno.test("SUBSCRIBE without topic filters is a protocol error", () => {
  // [MQTT-3.8.3-2] at least one filter; MQTT 5 section 3.8.3: no payload is a Protocol Error.
  assertCode(() => sub(5, [0, 1, 0]), ReasonCode.ProtocolError, "v5");
  assertCode(() => sub(4, [0, 1]), ReasonCode.ProtocolError, "3.1.1");
});

Deno.test("SUBSCRIBE with Retain Handling 3 is a protocol error", () => {
  // MQTT 5 section 3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3".
  assertCode(() => sub(5, [0, 1, 0, ...F, 0x30]), ReasonCode.ProtocolError, "rh 3");
  assert.equal(sub(5, [0, 1, 0, ...F, 0x20]).requests[0].retainHandling, 2);
});

Deno.test("SUBSCRIBE with reserved subscription option bits set is malformed", () => {
  // [MQTT-3.8.3-5] (MQTT 5): bits 6 and 7 are reserved.
  for (const bit of [0x40, 0x80]) {
    assertCode(() => sub(5, [0, 1, 0, ...F, bit]), 0x81, `v5 bit 0x${bit.toString(16)}`);
  }
  // [MQTT-3.8.3-4] (3.1.1): the upper 6 bits of the requested QoS byte are reserved.
  for (const bit of [0x04, 0x08, 0x10, 0x20, 0x40, 0x80]) {
    assertCode(() => sub(4, [0, 1, ...F, bit]), 0x81, `3.1.1 bit 0x${bit.toString(16)}`);
  }
  // The same bits are options in MQTT 5, not errors.
  const r = sub(5, [0, 1, 0, ...F, 0x0e])
    .requests[0];
  assert.deepEqual([r.qos, r.noLocal, r.retainAsPublished], [2, true, true]);
});

Deno.test("SUBSCRIBE with QoS 3 is refused: protocol error in MQTT 5, malformed in 3.1.1", () => {
  // MQTT 5 section 3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3".
  assertCode(() => sub(5, [0, 1, 0, ...F, 0x03]), ReasonCode.ProtocolError, "v5");
  // [MQTT-3.8.3-4] (3.1.1): QoS other than 0, 1, 2 is malformed.
  assertCode(() => sub(4, [0, 1, ...F, 0x03]), ReasonCode.MalformedPacket, "3.1.1");
});

Deno.test("SUBSCRIBE properties, packet identifier and strings are validated", () => {
  // [MQTT-2.2.1-3] packet identifier 0.
  assertCode(() => sub(5, [0, 0, 0, ...F, 1]), ReasonCode.MalformedPacket, "packet id 0");
  // Subscription Identifier 0 or twice: Protocol Error (MQTT 5 section 3.8.2.1.2).
  assertCode(() => sub(5, [0, 1, 2, 0x0b, 0, ...F, 1]), 0x82, "subscription id 0");
  assertCode(() => sub(5, [0, 1, 4, 0x0b, 1, 0x0b, 2, ...F, 1]), 0x82, "subscription id twice");
  assert.equal(sub(5, [0, 1, 3, 0x0b, 0x80, 0x01, ...F, 1]).subscriptionId, 128);
  // Session Expiry Interval does not belong in SUBSCRIBE.
  assertCode(() => sub(5, [0, 1, 5, 0x11, 0, 0, 0, 1, ...F, 1]), 0x81, "misplaced property");
  // Filters must be well-formed UTF-8 without U+0000.
  assertCode(() => sub(5, [0, 1, 0, 0, 2, 0xc3, 0x28, 1]), 0x81, "bad UTF-8 filter");
  assertCode(() => sub(4, [0, 1, 0, 2, 0x61, 0x00, 1]), 0x81, "U+0000 in filter");
  // A filter without its options byte.
  assertCode(() => sub(5, [0, 1, 0, ...F]), ReasonCode.MalformedPacket, "missing options");
});

Deno.test("UNSUBSCRIBE without filters is a protocol error; bad properties and strings are refused", () => {
  const unsub = (level: ProtocolLevel, bytes: number[]) => {
    const b = Uint8Array.from(bytes);
    return decodeUnsubscribe(b, 0, b.length, level);
  };
  // [MQTT-3.10.3-2] at least one filter.
  assertCode(() => unsub(5, [0, 1, 0]), ReasonCode.ProtocolError, "v5 no filters");
  assertCode(() => unsub(4, [0, 1]), ReasonCode.ProtocolError, "3.1.1 no filters");
  assertCode(() => unsub(5, [0, 0, 0, ...F]), ReasonCode.MalformedPacket, "packet id 0");
  // Only User Property is allowed in UNSUBSCRIBE.
  assertCode(() => unsub(5, [0, 1, 2, 0x0b, 1, ...F]), 0x81, "Subscription Identifier");
  assertCode(() => unsub(5, [0, 1, 0, 0, 2, 0xc3, 0x28]), 0x81, "bad UTF-8 filter");
  assertCode(() => unsub(5, [0, 1, 0, 0, 5, 0x61]), ReasonCode.MalformedPacket, "filter overrun");
});

Deno.test("DISCONNECT: a 3.1.1 body, duplicates, misplaced properties and trailing bytes are refused", () => {
  const disc = (level: ProtocolLevel, bytes: number[]) => {
    const b = Uint8Array.from(bytes);
    return decodeDisconnect(b, 0, b.length, level);
  };
  // [MQTT-3.14.1-1] (3.1.1) DISCONNECT has no variable header.
  assertCode(() => disc(4, [0]), ReasonCode.MalformedPacket, "3.1.1 with a body");
  assert.deepEqual(disc(5, []), { reasonCode: 0 }, "no body means reason 0");
  assert.deepEqual(disc(5, [0x04]), { reasonCode: 4, sessionExpiryInterval: undefined });
  const sei = [0x11, 0, 0, 0, 9];
  assertCode(() => disc(5, [0, 10, ...sei, ...sei]), ReasonCode.ProtocolError, "duplicate");
  assertCode(() => disc(5, [0, 3, 0x21, 0, 1]), ReasonCode.MalformedPacket, "Receive Maximum");
  assertCode(() => disc(5, [0, 5, ...sei, 0]), ReasonCode.MalformedPacket, "trailing byte");
});

// ---- fixed header ------------------------------------------------------------------

Deno.test("reserved fixed-header flags must have their defined values", () => {
  // [MQTT-2.1.3-1]: SUBSCRIBE, UNSUBSCRIBE and PUBREL use 0010; the others 0000.
  const bad: [number, number, string][] = [
    [8, 0x00, "SUBSCRIBE 0000"],
    [8, 0x03, "SUBSCRIBE 0011"],
    [10, 0x00, "UNSUBSCRIBE 0000"],
    [6, 0x00, "PUBREL 0000"],
    [1, 0x01, "CONNECT 0001"],
    [4, 0x02, "PUBACK 0010"],
    [5, 0x08, "PUBREC 1000"],
    [7, 0x02, "PUBCOMP 0010"],
    [12, 0x01, "PINGREQ 0001"],
    [14, 0x02, "DISCONNECT 0010"],
    [15, 0x01, "AUTH 0001"],
  ];
  for (const [type, flags, what] of bad) {
    assertCode(() => checkFixedHeader(type, flags, 5), ReasonCode.MalformedPacket, what);
  }
  for (const [type, flags] of [[8, 2], [10, 2], [6, 2], [1, 0], [4, 0], [12, 0], [14, 0]]) {
    checkFixedHeader(type, flags, 5);
  }
  // PUBLISH flags carry DUP/QoS/RETAIN; only QoS 3 is malformed [MQTT-3.3.1-4].
  checkFixedHeader(3, 0x0d, 5);
  assertCode(() => checkFixedHeader(3, 0x06, 5), ReasonCode.MalformedPacket, "PUBLISH QoS 3");
});

Deno.test("packet types a client never sends are refused", () => {
  // Type 0 is reserved (malformed); server-to-client types are protocol errors.
  assertCode(() => checkFixedHeader(0, 0, 5), ReasonCode.MalformedPacket, "type 0");
  for (const type of [2, 9, 11, 13]) {
    assertCode(() => checkFixedHeader(type, 0, 5), ReasonCode.ProtocolError, `type ${type}`);
  }
  // AUTH exists only in MQTT 5.
  assertCode(() => checkFixedHeader(15, 0, 4), ReasonCode.MalformedPacket, "AUTH in 3.1.1");
  checkFixedHeader(15, 0, 5);
});
