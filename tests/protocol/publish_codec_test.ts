/**
 * The hand-written PUBLISH and acknowledgement codec against mqtt-packet, the
 * independent oracle: for random packets our encoder must produce the bytes
 * mqtt-packet produces, and our decoder must recover what mqtt-packet encoded.
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
import mqttPacket from "mqtt-packet";
import { utf8 } from "../../src/protocol/bytes.ts";
import { Message } from "../../src/protocol/message.ts";
import { type ByteWriter, Outbox } from "../../src/protocol/outbox.ts";
import { encodePassthrough } from "../../src/protocol/properties.ts";
import {
  decodePublish,
  encodeAck,
  encodePublish,
  PINGRESP,
  publishForm,
  SHARED_PAYLOAD_MIN,
  toMessage,
} from "../../src/protocol/publish.ts";
import { MqttError, ReasonCode } from "../../src/protocol/reason_codes.ts";

type Version = 4 | 5;
type UserProps = Record<string, string | string[]>;

/** mqtt-packet's generate, as plain bytes (its Buffer compares unequal to Uint8Array). */
function gen(packet: Record<string, unknown>, version: Version): Uint8Array {
  return new Uint8Array(
    mqttPacket.generate(packet as unknown as mqttPacket.Packet, { protocolVersion: version }),
  );
}

/** Parses one packet with mqtt-packet. */
function parse(bytes: Uint8Array, version: Version): Record<string, unknown> {
  const parser = mqttPacket.parser({ protocolVersion: version });
  const out: Record<string, unknown>[] = [];
  parser.on("packet", (p) => out.push(p as unknown as Record<string, unknown>));
  parser.on("error", (e) => {
    throw e;
  });
  parser.parse(Buffer.from(bytes));
  assert.equal(out.length, 1, "exactly one packet");
  return out[0];
}

/** Offset of the body: after the header byte and the remaining-length varint. */
function bodyStart(bytes: Uint8Array): number {
  let i = 1;
  while (bytes[i] & 0x80) i++;
  return i + 1;
}

/** User properties in the order mqtt-packet writes them. */
function flattenUserProps(up: UserProps): [string, string][] {
  const out: [string, string][] = [];
  for (const k of Object.getOwnPropertyNames(up)) {
    const v = up[k];
    for (const x of Array.isArray(v) ? v : [v]) out.push([k, x]);
  }
  return out;
}

function isUtf8(b: Uint8Array): boolean {
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(b);
    return true;
  } catch {
    return false;
  }
}

function filled(n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + 7) & 0xff;
  return b;
}

// ---- arbitraries --------------------------------------------------------------

/** MQTT strings: any code point but U+0000 (which MQTT forbids). */
const mqttString = (maxLength: number) =>
  fc.string({ unit: "binary", maxLength }).filter((s) => !s.includes("\u0000"));

/** Topic names: non-empty, no wildcards; ASCII (incl. long, > 64 bytes) or full Unicode. */
const topicArb = fc.oneof(
  fc.stringMatching(/^[a-z0-9/$_-]{1,100}$/),
  fc.string({ unit: "binary", minLength: 1, maxLength: 30 }).filter((s) =>
    !s.includes("\u0000") && !/[+#]/.test(s)
  ),
);

/** Payloads around every remaining-length size step: 0, 127/128, 16383/16384. */
const payloadArb = fc.oneof(
  { weight: 3, arbitrary: fc.uint8Array({ maxLength: 200 }) },
  { weight: 1, arbitrary: fc.constantFrom(0, 1, 127, 128, 16383, 16384, 20000).map(filled) },
);

const userPropsArb: fc.Arbitrary<UserProps> = fc.dictionary(
  mqttString(8),
  fc.oneof(mqttString(12), fc.array(mqttString(6), { minLength: 1, maxLength: 3 })),
  { maxKeys: 3, noNullPrototype: true },
);

/** Properties a publisher sets that travel to subscribers unchanged. */
const passthroughArb = fc.record({
  payloadFormatIndicator: fc.boolean(),
  contentType: mqttString(20),
  responseTopic: topicArb,
  correlationData: fc.uint8Array({ maxLength: 40 }),
  userProperties: userPropsArb,
}, { requiredKeys: [] });

type Passthrough = typeof passthroughArb extends fc.Arbitrary<infer T> ? T : never;

const publishArb = fc.record({
  version: fc.constantFrom<Version>(4, 5),
  topic: topicArb,
  qos: fc.constantFrom<0 | 1 | 2>(0, 1, 2),
  retain: fc.boolean(),
  dup: fc.boolean(),
  packetId: fc.integer({ min: 1, max: 65535 }),
  payload: payloadArb,
  expiry: fc.option(fc.integer({ min: 0, max: 0xffffffff }), { nil: undefined }),
  subIds: fc.option(
    fc.array(fc.integer({ min: 1, max: 268435455 }), { minLength: 1, maxLength: 3 }),
    { nil: undefined },
  ),
  props: passthroughArb,
});

/** mqtt-packet's properties object for the pass-through set, in our encoder's order. */
function passthroughForMqttPacket(p: Passthrough): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  if (p.payloadFormatIndicator !== undefined) o.payloadFormatIndicator = p.payloadFormatIndicator;
  if (p.contentType !== undefined) o.contentType = p.contentType;
  if (p.responseTopic !== undefined) o.responseTopic = p.responseTopic;
  if (p.correlationData !== undefined) o.correlationData = Buffer.from(p.correlationData);
  if (p.userProperties !== undefined && Object.keys(p.userProperties).length > 0) {
    o.userProperties = p.userProperties;
  }
  return o;
}

function messageFor(topic: string, payload: Uint8Array, p: Passthrough): Message {
  const userProperties = p.userProperties ? flattenUserProps(p.userProperties) : undefined;
  const props = encodePassthrough({
    payloadFormatIndicator: p.payloadFormatIndicator === undefined
      ? undefined
      : Number(p.payloadFormatIndicator),
    contentType: p.contentType,
    responseTopic: p.responseTopic,
    correlationData: p.correlationData,
    userProperties: userProperties?.length ? userProperties : undefined,
  });
  return new Message(topic, utf8(topic), payload, 0, false, props, 0, "publisher");
}

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

// ---- acknowledgements -------------------------------------------------------------

/** A ByteWriter that records every write; the Outbox's transport side in a test. */
class RecordingSink implements ByteWriter {
  writes: Uint8Array[] = [];
  closed = false;
  private waiting: (() => void) | null = null;

  write(bytes: Uint8Array): Promise<void> {
    this.writes.push(bytes.slice());
    this.waiting?.();
    this.waiting = null;
    return Promise.resolve();
  }

  end(): void {
    this.closed = true;
  }

  close(): void {
    this.closed = true;
  }

  /** Resolves once a write has happened. */
  written(): Promise<void> {
    if (this.writes.length > 0) return Promise.resolve();
    return new Promise((r) => (this.waiting = r));
  }
}

function newOutbox(sink: ByteWriter): Outbox {
  return new Outbox(sink, {
    drained() {},
    writeFailed(e) {
      throw e;
    },
  });
}

/** Each acknowledgement with reason codes the spec allows for it. */
const ACKS = [
  [4, "puback", [0x00, 0x10, 0x80, 0x97]],
  [5, "pubrec", [0x00, 0x10, 0x80, 0x97]],
  [6, "pubrel", [0x00, 0x92]],
  [7, "pubcomp", [0x00, 0x92]],
] as const;
const PIDS = [1, 255, 256, 0x1234, 65535];

Deno.test("acknowledgements queued on the Outbox are the bytes mqtt-packet generates", async () => {
  for (const [type, cmd, codes] of ACKS) {
    for (const version of [4, 5] as const) {
      for (const rc of codes) {
        if (version === 4 && rc !== 0) continue; // 3.1.1 acks carry no reason code
        const sink = new RecordingSink();
        const outbox = newOutbox(sink);
        for (const pid of PIDS) outbox.pushAck(type, pid, rc, version === 5);
        await sink.written();
        assert.equal(sink.writes.length, 1, "acks of one turn go out in one write");
        const got = sink.writes[0];
        const parts: Uint8Array[] = [];
        for (const pid of PIDS) {
          const want = gen({ cmd, messageId: pid, reasonCode: rc }, version);
          if (rc === 0) {
            // Reason 0 without properties: the 2-byte form, identical bytes.
            parts.push(want);
          } else {
            // mqtt-packet writes an explicit empty property length (remaining
            // length 4); we send the shorter form the spec allows (remaining
            // length 3, property length implied 0; MQTT 5 section 3.4.2.2.1).
            // Same packet, different bytes: compare what a parser makes of it.
            const ours = encodeAck(type, pid, rc, true);
            assert.equal(ours.length, 5);
            const a = parse(ours, 5);
            const b = parse(want, 5);
            assert.deepEqual(
              [a.cmd, a.messageId, a.reasonCode, a.qos],
              [b.cmd, b.messageId, b.reasonCode, b.qos],
            );
            parts.push(ours);
          }
        }
        const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
        let pos = 0;
        for (const p of parts) {
          all.set(p, pos);
          pos += p.length;
        }
        assert.deepEqual(got, all, `${cmd} v${version} rc 0x${rc.toString(16)}`);
      }
    }
  }
});

Deno.test("encodeAck and Outbox.pushAck write the same bytes", async () => {
  for (const [type] of ACKS) {
    for (const v5 of [false, true]) {
      for (const rc of [0, 0x92]) {
        const sink = new RecordingSink();
        newOutbox(sink).pushAck(type, 0xbeef, rc, v5);
        await sink.written();
        assert.deepEqual(sink.writes[0], encodeAck(type, 0xbeef, rc, v5));
      }
    }
  }
});

Deno.test("PINGRESP is the packet mqtt-packet generates", () => {
  assert.deepEqual(PINGRESP, gen({ cmd: "pingresp" }, 4));
});

Deno.test("the Outbox writes each receiver's packet id into its copy and leaves the shared form alone", async () => {
  const msg = messageFor("t", utf8("p"), {});
  const form = publishForm(msg, true, 1, false, -1);
  const before = form.bytes.slice();
  const sink = new RecordingSink();
  const outbox = newOutbox(sink);
  outbox.pushPublish(form.bytes, form.length, form.pidOffset, 0x1234);
  outbox.pushPublish(form.bytes, form.length, form.pidOffset, 0x0507);
  await sink.written();
  const one = gen({ cmd: "publish", topic: "t", payload: "p", qos: 1, messageId: 0x1234 }, 5);
  const two = gen({ cmd: "publish", topic: "t", payload: "p", qos: 1, messageId: 0x0507 }, 5);
  const want = new Uint8Array(one.length + two.length);
  want.set(one);
  want.set(two, one.length);
  assert.deepEqual(sink.writes[0], want);
  assert.deepEqual(form.bytes, before, "the cached form is shared by all receivers");
});

Deno.test("a large payload is encoded once, header-only, and written after each receiver's header without a copy", async () => {
  const payload = filled(SHARED_PAYLOAD_MIN + 5);
  const msg = messageFor("big/t", payload, { contentType: "x" });
  const form = publishForm(msg, true, 1, false, 30);
  assert.equal(form.payload, msg.payload, "the form refers to the message's payload");
  const sink = new RecordingSink();
  const outbox = newOutbox(sink);
  outbox.pushAck(4, 9, 0, true);
  outbox.pushShared(form.bytes, form.length, form.pidOffset, 0x0102, form.payload!);
  outbox.pushShared(form.bytes, form.length, form.pidOffset, 0x0304, form.payload!);
  outbox.pushAck(4, 10, 0, true);
  assert.equal(outbox.pendingBytes, 8 + 2 * (form.length + payload.length));
  await sink.written();
  await new Promise((r) => setTimeout(r, 0));
  const all = new Uint8Array(sink.writes.reduce((n, w) => n + w.length, 0));
  let off = 0;
  for (const w of sink.writes) {
    all.set(w, off);
    off += w.length;
  }
  const one = {
    cmd: "publish",
    topic: "big/t",
    payload: Buffer.from(payload),
    qos: 1,
    properties: { messageExpiryInterval: 30, contentType: "x" },
  };
  const want = [
    // PUBACK with reason 0 and no properties: the short form [MQTT-3.4.2.1].
    new Uint8Array([0x40, 2, 0, 9]),
    gen({ ...one, messageId: 0x0102 }, 5),
    gen({ ...one, messageId: 0x0304 }, 5),
    new Uint8Array([0x40, 2, 0, 10]),
  ];
  const wantAll = new Uint8Array(want.reduce((n, w) => n + w.length, 0));
  off = 0;
  for (const w of want) {
    wantAll.set(w, off);
    off += w.length;
  }
  assert.deepEqual(all, wantAll);
  assert.equal(outbox.pendingBytes, 0);
  // The same through encodePublish (Subscription Identifiers, resends).
  const e = encodePublish(msg, true, 1, false, true, 7, -1, [5]);
  assert.equal(e.payload, msg.payload);
  const joined = new Uint8Array(e.length + payload.length);
  joined.set(e.bytes.subarray(0, e.length));
  joined.set(payload, e.length);
  assert.deepEqual(
    joined,
    gen({
      ...one,
      dup: true,
      messageId: 7,
      properties: { subscriptionIdentifier: 5, contentType: "x" },
    }, 5),
  );
  // The cache lets go of the payload once the current turn is over (it was checked above,
  // after awaits, only through the written bytes).
  const again = publishForm(msg, true, 1, false, 30);
  assert.equal(again.payload, msg.payload);
  await Promise.resolve();
  assert.equal(again.payload, null, "the cached form no longer holds the payload");
});
