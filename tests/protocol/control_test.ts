/** CONNACK is hand-written (every connection needs one); mqtt-packet is the oracle. */
import assert from "node:assert/strict";
import fc from "fast-check";
import mqttPacket from "mqtt-packet";
import { encodeConnack } from "../../src/protocol/control.ts";

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
