/**
 * What the PUBLISH codec tests (publish_codec_test.ts, outbox_bytes_test.ts) build on:
 * mqtt-packet as the independent oracle (`gen`, `parse`), random PUBLISH packets and the
 * properties that pass through a broker unchanged, and the `Message` our encoder takes for them.
 * mqtt-packet's properties object is built in our encoder's property order (see
 * publish_codec_test.ts), so the bytes compare equal.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import fc from "fast-check";
import mqttPacket from "mqtt-packet";
import { utf8 } from "../../src/protocol/bytes.ts";
import { Message } from "../../src/protocol/message.ts";
import { encodePassthrough } from "../../src/protocol/properties.ts";
import { flattenUserProps, type UserProps } from "./mqtt_packet_body.ts";

type Version = 4 | 5;

/** mqtt-packet's generate, as plain bytes (its Buffer compares unequal to Uint8Array). */
export function gen(packet: Record<string, unknown>, version: Version): Uint8Array {
  return new Uint8Array(
    mqttPacket.generate(packet as unknown as mqttPacket.Packet, { protocolVersion: version }),
  );
}

/** Parses one packet with mqtt-packet. */
export function parse(bytes: Uint8Array, version: Version): Record<string, unknown> {
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
export function bodyStart(bytes: Uint8Array): number {
  let i = 1;
  while (bytes[i] & 0x80) i++;
  return i + 1;
}

export function isUtf8(b: Uint8Array): boolean {
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(b);
    return true;
  } catch {
    return false;
  }
}

export function filled(n: number): Uint8Array {
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

export const publishArb = fc.record({
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
export function passthroughForMqttPacket(p: Passthrough): Record<string, unknown> {
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

export function messageFor(topic: string, payload: Uint8Array, p: Passthrough): Message {
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
