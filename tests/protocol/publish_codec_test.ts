/**
 * The hand-written PUBLISH codec against mqtt-packet, the independent oracle:
 * for random packets our encoder must produce the bytes mqtt-packet produces,
 * and our decoder must recover what mqtt-packet encoded. The acknowledgements
 * and what the Outbox writes are in outbox_bytes_test.ts; the generators and
 * the oracle's helpers in publish_fixtures.ts.
 *
 * Property order: mqtt-packet writes properties in the insertion order of its
 * `properties` object (user properties in Object.getOwnPropertyNames order of
 * their dictionary). Our encoder writes expiry, subscription ids, then the
 * pass-through block in the order it holds. The tests build the mqtt-packet
 * object in exactly that order, so byte equality is the right check; where
 * the decoder is tested, the order is shuffled on purpose, because a client
 * may send properties in any order and pass-through bytes must keep it.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import fc from "fast-check";
import { utf8 } from "../../src/protocol/bytes.ts";
import {
  decodePublish,
  encodePublish,
  publishForm,
  toMessage,
} from "../../src/protocol/publish.ts";
import { MqttError, ReasonCode } from "../../src/protocol/reason_codes.ts";
import {
  bodyStart,
  gen,
  isUtf8,
  messageFor,
  passthroughForMqttPacket,
  publishArb,
} from "./publish_fixtures.ts";

// ---- encoder --------------------------------------------------------------------

Deno.test("encodePublish produces the same bytes as mqtt-packet for random PUBLISH packets", () => {
  fc.assert(
    fc.property(publishArb, (c) => {
      const v5 = c.version === 5;
      const msg = messageFor(c.topic, c.payload, c.props);
      const expiry = c.expiry ?? -1;
      const enc = encodePublish(
        msg,
        v5,
        c.qos,
        c.retain,
        c.dup,
        c.packetId,
        expiry,
        c.subIds ?? null,
      );
      const properties: Record<string, unknown> = {};
      if (c.expiry !== undefined) properties.messageExpiryInterval = c.expiry;
      if (c.subIds !== undefined) properties.subscriptionIdentifier = c.subIds;
      Object.assign(properties, passthroughForMqttPacket(c.props));
      const want = gen({
        cmd: "publish",
        topic: c.topic,
        payload: Buffer.from(c.payload),
        qos: c.qos,
        retain: c.retain,
        dup: c.dup,
        messageId: c.qos > 0 ? c.packetId : undefined,
        // 3.1.1 has no properties: the message's v5 properties must not leak into it.
        properties: v5 ? properties : undefined,
      }, c.version);
      assert.deepEqual(enc.bytes, want);
      assert.equal(enc.expiry, expiry);
      if (c.qos > 0) {
        const pid = (enc.bytes[enc.pidOffset] << 8) | enc.bytes[enc.pidOffset + 1];
        assert.equal(pid, c.packetId, "pidOffset points at the packet identifier");
      } else {
        assert.equal(enc.pidOffset, -1);
      }
    }),
    { numRuns: 300 },
  );
});

Deno.test("a PUBLISH form is encoded once per message and form, and again when the expiry changes", () => {
  const msg = messageFor("a/b", utf8("hello"), { contentType: "text/plain" });
  const bytesOf = (f: { bytes: Uint8Array; length: number }) => f.bytes.slice(0, f.length);
  const f1 = publishForm(msg, true, 1, false, 60);
  assert.deepEqual(bytesOf(f1), encodePublish(msg, true, 1, false, false, 0, 60, null).bytes);
  // Served from the slot, not re-encoded: a mark written into the slot survives.
  const last = f1.length - 1;
  f1.bytes[last] ^= 0xff;
  assert.equal(publishForm(msg, true, 1, false, 60).bytes[last], utf8("hello")[4] ^ 0xff);
  const f2 = publishForm(msg, true, 1, false, 59);
  assert.deepEqual(bytesOf(f2), encodePublish(msg, true, 1, false, false, 0, 59, null).bytes);
  // Other protocol, QoS or retain flag: distinct forms, each right.
  const v4 = bytesOf(publishForm(msg, false, 1, false, 59));
  assert.deepEqual(
    v4,
    gen({ cmd: "publish", topic: "a/b", payload: "hello", qos: 1, messageId: 0 }, 4),
  );
  assert.equal(publishForm(msg, false, 1, false, 58).expiry, -1, "3.1.1 forms carry no expiry");
  const retained = publishForm(msg, true, 0, true, -1);
  assert.equal(retained.bytes[0], 0x31);
  assert.deepEqual(
    bytesOf(publishForm(msg, true, 1, false, 59)),
    encodePublish(msg, true, 1, false, false, 0, 59, null).bytes,
  );
  // Another message takes over the slot.
  const other = messageFor("a/c", utf8("bye"), {});
  assert.deepEqual(
    bytesOf(publishForm(other, true, 1, false, -1)),
    encodePublish(other, true, 1, false, false, 0, -1, null).bytes,
  );
});

// ---- decoder --------------------------------------------------------------------

const PASS_KEYS = [
  "payloadFormatIndicator",
  "messageExpiryInterval",
  "contentType",
  "responseTopic",
  "correlationData",
  "topicAlias",
  "userProperties",
] as const;

const incomingArb = fc.record({
  base: publishArb,
  topicAlias: fc.option(fc.integer({ min: 1, max: 65535 }), { nil: undefined }),
  order: fc.shuffledSubarray([...PASS_KEYS], {
    minLength: PASS_KEYS.length,
    maxLength: PASS_KEYS.length,
  }),
});

Deno.test("decodePublish and toMessage recover every field of PUBLISH packets generated by mqtt-packet", () => {
  fc.assert(
    fc.property(incomingArb, ({ base: c, topicAlias, order }) => {
      const v5 = c.version === 5;
      const values: Record<string, unknown> = {
        ...passthroughForMqttPacket(c.props),
        messageExpiryInterval: c.expiry,
        topicAlias,
      };
      // Properties in a random order: the client decides the order.
      const properties: Record<string, unknown> = {};
      for (const k of order) if (values[k] !== undefined) properties[k] = values[k];
      const dup = c.qos > 0 && c.dup; // DUP on QoS 0 is malformed; tested separately
      const packet = {
        cmd: "publish",
        topic: c.topic,
        payload: Buffer.from(c.payload),
        qos: c.qos,
        retain: c.retain,
        dup,
        messageId: c.qos > 0 ? c.packetId : undefined,
        properties: v5 ? properties : undefined,
      };
      const bytes = gen(packet, c.version);
      const start = bodyStart(bytes);
      const p = decodePublish(bytes, start, bytes.length, bytes[0] & 0x0f, v5);
      assert.equal(p.qos, c.qos);
      assert.equal(p.dup, dup);
      assert.equal(p.retain, c.retain);
      assert.equal(p.packetId, c.qos > 0 ? c.packetId : 0);
      assert.equal(p.topic, c.topic);
      assert.equal(p.topicAlias, v5 ? topicAlias ?? 0 : 0);
      assert.equal(p.expiry, v5 ? c.expiry ?? -1 : -1);
      const pfi = v5 ? c.props.payloadFormatIndicator : undefined;
      assert.equal(
        p.payloadFormat,
        pfi === undefined ? -1 : !pfi ? 0 : isUtf8(c.payload) ? 1 : -2,
      );

      // The pass-through block mqtt-packet writes for the same properties minus
      // alias and expiry, in the same order: what subscribers must receive.
      const kept: Record<string, unknown> = {};
      for (const k of order) {
        if (k !== "topicAlias" && k !== "messageExpiryInterval" && values[k] !== undefined) {
          kept[k] = values[k];
        }
      }
      const ref = gen({ cmd: "publish", topic: c.topic, qos: 0, properties: kept }, 5);
      let pos = bodyStart(ref) + 2 + utf8(c.topic).length;
      while (ref[pos] & 0x80) pos++;
      const wantProps = ref.slice(pos + 1);

      const now = 1_700_000_000_000;
      const msg = toMessage(bytes, p, p.topic, utf8(p.topic), "client-1", now).own();
      bytes.fill(0xee); // the read buffer is reused: an owned message must not alias it
      assert.equal(msg.topic, c.topic);
      assert.deepEqual(msg.topicBytes, utf8(c.topic));
      assert.deepEqual(msg.payload, c.payload);
      assert.equal(msg.qos, c.qos);
      assert.equal(msg.retain, c.retain);
      assert.equal(msg.origin, "client-1");
      assert.equal(msg.expiresAt, v5 && c.expiry !== undefined ? now + c.expiry * 1000 : 0);
      assert.deepEqual(msg.props, v5 && wantProps.length > 0 ? wantProps : null);
    }),
    { numRuns: 300 },
  );
});

Deno.test("a PUBLISH that uses a topic alias takes the topic bytes it is given", () => {
  const bytes = gen({
    cmd: "publish",
    topic: "",
    payload: "x",
    qos: 0,
    properties: { topicAlias: 3 },
  }, 5);
  const p = decodePublish(bytes, bodyStart(bytes), bytes.length, 0, true);
  assert.equal(p.topic, "");
  assert.equal(p.topicAlias, 3);
  const msg = toMessage(bytes, p, "x/y", utf8("x/y"), "c", 0);
  assert.equal(msg.topic, "x/y");
  assert.deepEqual(msg.topicBytes, utf8("x/y"));
  assert.equal(msg.props, null, "the alias itself is not forwarded");
});

/** Builds a v5 PUBLISH body by hand: topic, optional packet id, raw property bytes, payload. */
function rawBody(topic: number[], pid: number[] | null, props: number[], payload: number[] = []) {
  return Uint8Array.from([
    topic.length >> 8,
    topic.length & 0xff,
    ...topic,
    ...(pid ?? []),
    props.length,
    ...props,
    ...payload,
  ]);
}

function assertDecodeError(body: Uint8Array, flags: number, v5: boolean, code: number): void {
  assert.throws(() => decodePublish(body, 0, body.length, flags, v5), (e: unknown) => {
    assert.ok(e instanceof MqttError, `expected MqttError, got ${e}`);
    assert.equal(e.code, code, `got 0x${e.code.toString(16)}: ${e.message}`);
    return true;
  });
}

const T = [0x61]; // topic "a"

Deno.test("malformed PUBLISH packets are refused with the right reason code", () => {
  // [MQTT-3.3.1-4] both QoS bits set.
  assertDecodeError(rawBody(T, [0, 1], []), 0x06, true, ReasonCode.MalformedPacket);
  // [MQTT-3.3.1-2] DUP must be 0 for QoS 0.
  assertDecodeError(rawBody(T, null, []), 0x08, true, ReasonCode.MalformedPacket);
  // [MQTT-2.2.1-3] packet identifier 0 on QoS > 0.
  assertDecodeError(rawBody(T, [0, 0], []), 0x02, true, ReasonCode.MalformedPacket);
  // [MQTT-1.5.4-2] U+0000 in the topic; [MQTT-1.5.4-1] ill-formed UTF-8 in the topic.
  assertDecodeError(rawBody([0x61, 0x00], null, []), 0, true, ReasonCode.MalformedPacket);
  assertDecodeError(rawBody([0xc3, 0x28], null, []), 0, true, ReasonCode.MalformedPacket);
  // A long non-ASCII topic (the TextDecoder path) with U+0000 or a UTF-16 surrogate.
  const long = [...utf8("é".repeat(40))];
  assertDecodeError(rawBody([...long, 0x00], null, []), 0, true, ReasonCode.MalformedPacket);
  assertDecodeError(rawBody([...long, 0xed, 0xa0, 0x80], null, []), 0, true, 0x81);
  // Topic length past the end of the packet.
  assertDecodeError(Uint8Array.of(0x00, 0x09, 0x61), 0, false, ReasonCode.MalformedPacket);
  // [MQTT-3.3.4-6] a client must not send a Subscription Identifier.
  assertDecodeError(rawBody(T, null, [0x0b, 0x01]), 0, true, ReasonCode.ProtocolError);
  // A property that does not belong in PUBLISH (Session Expiry Interval).
  assertDecodeError(rawBody(T, null, [0x11, 0, 0, 0, 1]), 0, true, ReasonCode.MalformedPacket);
  // Single-valued properties repeated: Protocol Error.
  const ct = [0x03, 0x00, 0x01, 0x78];
  assertDecodeError(rawBody(T, null, [...ct, ...ct]), 0, true, ReasonCode.ProtocolError);
  assertDecodeError(
    rawBody(T, null, [0x23, 0, 1, 0x23, 0, 2]),
    0,
    true,
    ReasonCode.ProtocolError,
  );
  assertDecodeError(rawBody(T, null, [0x01, 1, 0x01, 1]), 0, true, ReasonCode.ProtocolError);
  // [MQTT-3.3.2-14] the Response Topic must be a topic name, not a filter.
  assertDecodeError(rawBody(T, null, [0x08, 0, 3, 0x61, 0x2f, 0x23]), 0, true, 0x82);
  // A property whose value runs past the property block.
  assertDecodeError(rawBody(T, null, [0x02, 0, 0]), 0, true, ReasonCode.MalformedPacket);
  // A property block longer than the packet.
  assertDecodeError(Uint8Array.of(0, 1, 0x61, 0x05, 0x01), 0, true, ReasonCode.MalformedPacket);
});

Deno.test("repeated user properties are allowed and kept in order", () => {
  const up = [0x26, 0, 1, 0x6b, 0, 1, 0x31, 0x26, 0, 1, 0x6b, 0, 1, 0x32];
  const body = rawBody(T, null, up, [0x70]);
  const p = decodePublish(body, 0, body.length, 0, true);
  const msg = toMessage(body, p, p.topic, utf8(p.topic), "c", 0);
  assert.deepEqual(msg.props, Uint8Array.from(up));
  assert.deepEqual(msg.payload, Uint8Array.of(0x70));
});

Deno.test("a payload declared UTF-8 that is not is flagged for Payload Format Invalid", () => {
  // [MQTT-3.3.2-4] the receiver may check a payload marked as UTF-8.
  const bad = rawBody(T, null, [0x01, 0x01], [0xff, 0xfe]);
  assert.equal(decodePublish(bad, 0, bad.length, 0, true).payloadFormat, -2);
  const good = rawBody(T, null, [0x01, 0x01], [...utf8("żółw")]);
  assert.equal(decodePublish(good, 0, good.length, 0, true).payloadFormat, 1);
  // Indicator 0 (bytes): the payload is not checked.
  const bytes = rawBody(T, null, [0x01, 0x00], [0xff]);
  assert.equal(decodePublish(bytes, 0, bytes.length, 0, true).payloadFormat, 0);
});
