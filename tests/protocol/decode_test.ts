/**
 * Control-packet decoders against mqtt-packet (the independent oracle) for
 * random valid packets. The malformed forms the spec tells a server to refuse
 * are in decode_malformed_test.ts.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import fc from "fast-check";
import {
  connectPreamble,
  decodeAck,
  decodeConnect,
  decodeDisconnect,
  decodeSubscribe,
  decodeUnsubscribe,
} from "../../src/protocol/decode.ts";
import type { Properties } from "../../src/protocol/properties.ts";
import { flattenUserProps, genBody, type UserProps, type Version } from "./mqtt_packet_body.ts";

/** What our decoder should make of an mqtt-packet properties object. */
function expectedProps(p: Record<string, unknown> | undefined): Properties {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(p ?? {})) {
    if (v === undefined) continue;
    if (k === "userProperties") out[k] = flattenUserProps(v as UserProps);
    else if (typeof v === "boolean") out[k] = Number(v);
    else if (v instanceof Uint8Array) out[k] = new Uint8Array(v);
    else out[k] = v;
  }
  return out as Properties;
}

// ---- arbitraries --------------------------------------------------------------

const mqttString = (maxLength: number, minLength = 0) =>
  fc.string({ unit: "binary", minLength, maxLength }).filter((s) => !s.includes("\u0000"));

const userPropsArb: fc.Arbitrary<UserProps> = fc.dictionary(
  mqttString(8),
  fc.oneof(mqttString(10), fc.array(mqttString(5), { minLength: 1, maxLength: 3 })),
  { minKeys: 1, maxKeys: 3, noNullPrototype: true },
);
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const bytesArb = (maxLength: number) => fc.uint8Array({ maxLength }).map((b) => Buffer.from(b));

const connectPropsArb = fc.record({
  sessionExpiryInterval: u32,
  receiveMaximum: fc.integer({ min: 1, max: 65535 }),
  maximumPacketSize: fc.integer({ min: 1, max: 0xffffffff }),
  topicAliasMaximum: fc.integer({ min: 0, max: 65535 }),
  requestResponseInformation: fc.boolean(),
  requestProblemInformation: fc.boolean(),
  userProperties: userPropsArb,
  authenticationMethod: mqttString(10),
  authenticationData: bytesArb(10),
}, { requiredKeys: [] }).map((p) => {
  // Authentication Data without a method is a Protocol Error; tested on its own.
  if (p.authenticationData !== undefined && p.authenticationMethod === undefined) {
    return { ...p, authenticationMethod: "m" };
  }
  return p;
});

const willPropsArb = fc.record({
  willDelayInterval: u32,
  payloadFormatIndicator: fc.boolean(),
  messageExpiryInterval: u32,
  contentType: mqttString(10),
  responseTopic: mqttString(10, 1),
  correlationData: bytesArb(10),
  userProperties: userPropsArb,
}, { requiredKeys: [] });

const connectArb = fc.record({
  version: fc.constantFrom<Version>(4, 5),
  clientId: mqttString(23),
  clean: fc.boolean(),
  keepalive: fc.integer({ min: 0, max: 65535 }),
  username: fc.option(mqttString(12), { nil: undefined }),
  password: fc.option(bytesArb(12), { nil: undefined }),
  will: fc.option(
    fc.record({
      topic: mqttString(20, 1),
      payload: bytesArb(300),
      qos: fc.constantFrom(0, 1, 2),
      retain: fc.boolean(),
      properties: willPropsArb,
    }),
    { nil: undefined },
  ),
  properties: connectPropsArb,
}).map((c) => {
  // mqtt-packet only writes a password with a user name (required by 3.1.1),
  // and refuses an empty client id without clean start.
  const clientId = c.clientId === "" && !c.clean ? "x" : c.clientId;
  return { ...c, clientId, password: c.username === undefined ? undefined : c.password };
});

Deno.test("random CONNECT packets from mqtt-packet decode to the same fields (3.1.1 and 5)", () => {
  fc.assert(
    fc.property(connectArb, (c) => {
      const v5 = c.version === 5;
      const body = genBody({
        cmd: "connect",
        protocolId: "MQTT",
        protocolVersion: c.version,
        clientId: c.clientId,
        clean: c.clean,
        keepalive: c.keepalive,
        username: c.username,
        password: c.password,
        will: c.will && { ...c.will, properties: v5 ? c.will.properties : undefined },
        properties: v5 ? c.properties : undefined,
      }, c.version);
      assert.deepEqual(connectPreamble(body, 0, body.length), { kind: "ok", level: c.version });
      const got = decodeConnect(body, 0, body.length);
      assert.deepEqual(got, {
        protocolLevel: c.version,
        cleanStart: c.clean,
        keepAlive: c.keepalive,
        clientId: c.clientId,
        username: c.username,
        password: c.password && new Uint8Array(c.password),
        will: c.will && {
          topic: c.will.topic,
          payload: new Uint8Array(c.will.payload),
          qos: c.will.qos,
          retain: c.will.retain,
          properties: v5 ? expectedProps(c.will.properties) : {},
        },
        properties: v5 ? expectedProps(c.properties) : {},
      });
    }),
    { numRuns: 300 },
  );
});

const subscribeArb = fc.record({
  version: fc.constantFrom<Version>(4, 5),
  messageId: fc.integer({ min: 1, max: 65535 }),
  subscriptions: fc.array(
    fc.record({
      topic: mqttString(30),
      qos: fc.constantFrom<0 | 1 | 2>(0, 1, 2),
      nl: fc.boolean(),
      rap: fc.boolean(),
      rh: fc.constantFrom<0 | 1 | 2>(0, 1, 2),
    }),
    { minLength: 1, maxLength: 5 },
  ),
  properties: fc.record({
    subscriptionIdentifier: fc.integer({ min: 1, max: 268435455 }),
    userProperties: userPropsArb,
  }, { requiredKeys: [] }),
});

Deno.test("random SUBSCRIBE packets from mqtt-packet decode to the same fields (3.1.1 and 5)", () => {
  fc.assert(
    fc.property(subscribeArb, (s) => {
      const v5 = s.version === 5;
      const body = genBody({
        cmd: "subscribe",
        messageId: s.messageId,
        subscriptions: s.subscriptions,
        properties: v5 ? s.properties : undefined,
      }, s.version);
      assert.deepEqual(decodeSubscribe(body, 0, body.length, s.version), {
        packetId: s.messageId,
        subscriptionId: v5 ? s.properties.subscriptionIdentifier : undefined,
        requests: s.subscriptions.map((x) => ({
          filter: x.topic,
          qos: x.qos,
          // 3.1.1 has no subscription options beyond QoS.
          noLocal: v5 && x.nl,
          retainAsPublished: v5 && x.rap,
          retainHandling: v5 ? x.rh : 0,
        })),
      });
    }),
    { numRuns: 200 },
  );
});

Deno.test("random UNSUBSCRIBE packets from mqtt-packet decode to the same fields (3.1.1 and 5)", () => {
  fc.assert(
    fc.property(
      fc.constantFrom<Version>(4, 5),
      fc.integer({ min: 1, max: 65535 }),
      fc.array(mqttString(30), { minLength: 1, maxLength: 5 }),
      fc.option(userPropsArb, { nil: undefined }),
      (version, messageId, filters, userProperties) => {
        const body = genBody({
          cmd: "unsubscribe",
          messageId,
          unsubscriptions: filters,
          properties: version === 5 && userProperties ? { userProperties } : undefined,
        }, version);
        assert.deepEqual(decodeUnsubscribe(body, 0, body.length, version), {
          packetId: messageId,
          filters,
        });
      },
    ),
    { numRuns: 200 },
  );
});

/** Reason codes a client may put in DISCONNECT (MQTT 5 section 3.14.2.1). */
const CLIENT_DISCONNECT_CODES = [
  0x00,
  0x04,
  0x80,
  0x81,
  0x82,
  0x83,
  0x87,
  0x90,
  0x93,
  0x94,
  0x95,
  0x96,
  0x97,
  0x98,
  0x99,
];

Deno.test("random DISCONNECT packets from mqtt-packet decode to the same fields (3.1.1 and 5)", () => {
  assert.deepEqual(decodeDisconnect(genBody({ cmd: "disconnect" }, 4), 0, 0, 4), {
    reasonCode: 0,
  });
  fc.assert(
    fc.property(
      fc.constantFrom(...CLIENT_DISCONNECT_CODES),
      fc.record({
        sessionExpiryInterval: u32,
        reasonString: mqttString(20),
        userProperties: userPropsArb,
      }, { requiredKeys: [] }),
      (reasonCode, properties) => {
        const body = genBody({ cmd: "disconnect", reasonCode, properties }, 5);
        assert.deepEqual(decodeDisconnect(body, 0, body.length, 5), {
          reasonCode,
          sessionExpiryInterval: properties.sessionExpiryInterval,
        });
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("random PUBACK/PUBREC/PUBREL/PUBCOMP packets from mqtt-packet decode to the same fields", () => {
  const codes: Record<string, number[]> = {
    puback: [0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
    pubrec: [0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
    pubrel: [0x00, 0x92],
    pubcomp: [0x00, 0x92],
  };
  fc.assert(
    fc.property(
      fc.constantFrom("puback", "pubrec", "pubrel", "pubcomp"),
      fc.constantFrom<Version>(4, 5),
      fc.integer({ min: 1, max: 65535 }),
      fc.nat(),
      fc.option(
        fc.record({ reasonString: mqttString(20), userProperties: userPropsArb }, {
          requiredKeys: [],
        }),
        { nil: undefined },
      ),
      (cmd, version, messageId, pick, properties) => {
        const rc = version === 5 ? codes[cmd][pick % codes[cmd].length] : 0;
        const body = genBody({
          cmd,
          messageId,
          reasonCode: rc,
          properties: version === 5 ? properties : undefined,
        }, version);
        assert.deepEqual(decodeAck(body, 0, body.length, version), {
          packetId: messageId,
          reasonCode: rc,
        });
      },
    ),
    { numRuns: 200 },
  );
});
