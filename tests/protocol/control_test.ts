/** The server-to-client control packets are hand-written; mqtt-packet is the oracle. */
import assert from "node:assert/strict";
import fc from "fast-check";
import mqttPacket from "mqtt-packet";
import {
  encodeConnack,
  encodeDisconnect,
  encodeSuback,
  encodeUnsuback,
} from "../../src/protocol/control.ts";

// mqtt-packet writes properties in the order of the object's keys; the arbitrary builds them in
// the order our encoder writes, so the bytes must be identical.
const props = fc.record({
  sessionExpiryInterval: fc.integer({ min: 0, max: 0xffffffff }),
  receiveMaximum: fc.integer({ min: 1, max: 65535 }),
  retainAvailable: fc.boolean(),
  maximumPacketSize: fc.integer({ min: 1, max: 268435455 }),
  assignedClientIdentifier: fc.string({ maxLength: 40 }),
  topicAliasMaximum: fc.integer({ min: 0, max: 65535 }),
  reasonString: fc.string({ maxLength: 200 }),
  wildcardSubscriptionAvailable: fc.boolean(),
  subscriptionIdentifiersAvailable: fc.boolean(),
  sharedSubscriptionAvailable: fc.boolean(),
  serverKeepAlive: fc.integer({ min: 0, max: 65535 }),
}, { requiredKeys: [] });

const reasons = fc.constantFrom(0x00, 0x80, 0x81, 0x82, 0x84, 0x85, 0x86, 0x87, 0x8c, 0x97);

Deno.test("CONNACK for MQTT 5 is byte for byte what mqtt-packet generates", () => {
  fc.assert(
    fc.property(fc.boolean(), reasons, props, (sessionPresent, reasonCode, properties) => {
      const ours = encodeConnack(5, sessionPresent, reasonCode, properties);
      const ref = mqttPacket.generate(
        { cmd: "connack", sessionPresent, reasonCode, properties } as unknown as mqttPacket.Packet,
        { protocolVersion: 5 },
      );
      assert.deepEqual(ours, new Uint8Array(ref));
    }),
    { numRuns: 500 },
  );
});

Deno.test("CONNACK for 3.1.1 maps reason codes to return codes", () => {
  const cases: [number, number][] = [[0, 0], [0x84, 1], [0x85, 2], [0x89, 3], [0x86, 4], [0x87, 5]];
  for (const [reason, rc] of cases) {
    for (const sessionPresent of [false, true]) {
      const ref = mqttPacket.generate(
        { cmd: "connack", sessionPresent, returnCode: rc } as unknown as mqttPacket.Packet,
        { protocolVersion: 4 },
      );
      assert.deepEqual(encodeConnack(4, sessionPresent, reason), new Uint8Array(ref));
    }
  }
});

Deno.test("CONNACK drops its reason string to fit the client's Maximum Packet Size", () => {
  const long = encodeConnack(5, false, 0x87, { reasonString: "x".repeat(100) });
  assert.ok(long.length > 100);
  const fitted = encodeConnack(5, false, 0x87, { reasonString: "x".repeat(100) }, 64);
  assert.deepEqual(fitted, encodeConnack(5, false, 0x87, {}));
});

const packetIds = fc.integer({ min: 1, max: 65535 });
const subackCodes = fc.array(fc.constantFrom(0, 1, 2, 0x80, 0x83, 0x87, 0x8f, 0x91, 0x97, 0x9e), {
  minLength: 1,
  maxLength: 300,
});

function reference(packet: Record<string, unknown>, protocolVersion: 4 | 5): Uint8Array {
  return new Uint8Array(
    mqttPacket.generate(packet as unknown as mqttPacket.Packet, { protocolVersion }),
  );
}

Deno.test("SUBACK is byte for byte what mqtt-packet generates, at both levels", () => {
  fc.assert(
    fc.property(packetIds, subackCodes, (id, codes) => {
      assert.deepEqual(
        encodeSuback(5, id, codes),
        reference({ cmd: "suback", messageId: id, granted: codes }, 5),
      );
      const v3 = codes.map((c) => c >= 0x80 ? 0x80 : c);
      assert.deepEqual(
        encodeSuback(4, id, codes),
        reference({ cmd: "suback", messageId: id, granted: v3 }, 4),
      );
    }),
    { numRuns: 300 },
  );
});

Deno.test("UNSUBACK is byte for byte what mqtt-packet generates; 3.1.1 carries no codes", () => {
  const unsubackCodes = fc.array(fc.constantFrom(0, 0x11, 0x80, 0x83, 0x87, 0x8f, 0x91), {
    minLength: 1,
    maxLength: 300,
  });
  fc.assert(
    fc.property(packetIds, unsubackCodes, (id, codes) => {
      assert.deepEqual(
        encodeUnsuback(5, id, codes),
        reference({ cmd: "unsuback", messageId: id, granted: codes }, 5),
      );
      assert.deepEqual(
        encodeUnsuback(4, id, codes),
        reference({ cmd: "unsuback", messageId: id }, 4),
      );
    }),
    { numRuns: 300 },
  );
});

Deno.test("DISCONNECT is byte for byte what mqtt-packet generates", () => {
  fc.assert(
    fc.property(
      fc.constantFrom(0, 0x04, 0x80, 0x81, 0x82, 0x87, 0x89, 0x8b, 0x8d, 0x8e, 0x93, 0x95, 0x97),
      fc.option(fc.string({ minLength: 1, maxLength: 300 }), { nil: undefined }),
      (reasonCode, reasonString) => {
        const properties = reasonString === undefined ? undefined : { reasonString };
        assert.deepEqual(
          encodeDisconnect(reasonCode, reasonString),
          reference({ cmd: "disconnect", reasonCode, properties }, 5),
        );
      },
    ),
    { numRuns: 500 },
  );
});

Deno.test("DISCONNECT drops its reason string to fit the client's Maximum Packet Size", () => {
  const full = encodeDisconnect(0x8b, "y".repeat(200));
  // Header, 2-byte remaining length, reason code, 2-byte property length, the string property.
  assert.equal(full.length, 1 + 2 + 1 + 2 + 3 + 200);
  assert.deepEqual(encodeDisconnect(0x8b, "y".repeat(200), full.length), full);
  const bare = encodeDisconnect(0x8b, "y".repeat(200), full.length - 1);
  assert.deepEqual(bare, Uint8Array.of(0xe0, 2, 0x8b, 0));
});
