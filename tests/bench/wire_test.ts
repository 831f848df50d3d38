// The generator's hand encoding, checked against an independent codec (mqtt-packet).

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import mqtt from "mqtt-packet";
import {
  encodeAck,
  encodeConnect,
  encodePublishBatch,
  encodeSubscribe,
  FrameReader,
  PacketType,
  parseConnack,
  patchPublish,
  type ProtocolLevel,
  publishPacketId,
  publishPayloadAt,
  subackCodes,
} from "./wire.ts";

// deno-lint-ignore no-explicit-any
type Parsed = any;

function parseAll(bytes: Uint8Array, version: ProtocolLevel): Parsed[] {
  const parser = mqtt.parser({ protocolVersion: version });
  const packets: Parsed[] = [];
  const errors: Error[] = [];
  parser.on("packet", (p: Parsed) => packets.push(p));
  parser.on("error", (e: Error) => errors.push(e));
  parser.parse(bytes as unknown as Parameters<typeof parser.parse>[0]);
  assert.deepEqual(errors, []);
  return packets;
}

for (const version of [4, 5] as const) {
  Deno.test(`v${version}: CONNECT and SUBSCRIBE decode as sent`, () => {
    const [connect] = parseAll(encodeConnect(version, "bench-client", 60), version);
    assert.equal(connect.cmd, "connect");
    assert.equal(connect.protocolVersion, version);
    assert.equal(connect.clientId, "bench-client");
    assert.equal(connect.keepalive, 60);
    assert.equal(connect.clean, true);
    const [subscribe] = parseAll(encodeSubscribe(version, 7, "bench/#", 2), version);
    assert.equal(subscribe.cmd, "subscribe");
    assert.equal(subscribe.messageId, 7);
    assert.deepEqual(subscribe.subscriptions.map((s: Parsed) => [s.topic, s.qos]), [[
      "bench/#",
      2,
    ]]);
  });

  Deno.test(`v${version}: a persistent-session CONNECT has Clean Start 0 and the expiry`, () => {
    const [connect] = parseAll(encodeConnect(version, "durable", 30, 3600), version);
    assert.equal(connect.clientId, "durable");
    assert.equal(connect.clean, false);
    if (version === 5) assert.equal(connect.properties.sessionExpiryInterval, 3600);
  });

  Deno.test(`v${version}: a patched PUBLISH batch decodes as N messages with their ids and payloads`, () => {
    const batch = encodePublishBatch(version, "bench/pair/3", 1, 64, 5, 3);
    for (let i = 0; i < 5; i++) patchPublish(batch, i, 100 + i, 1000 + i, 12.5 + i);
    const packets = parseAll(batch.buf.subarray(0, 3 * batch.packetBytes), version);
    assert.equal(packets.length, 3);
    packets.forEach((p: Parsed, i: number) => {
      assert.equal(p.cmd, "publish");
      assert.equal(p.topic, "bench/pair/3");
      assert.equal(p.qos, 1);
      assert.equal(p.messageId, 100 + i);
      assert.equal(p.payload.length, 64);
      const view = new DataView(p.payload.buffer, p.payload.byteOffset, p.payload.length);
      assert.equal(view.getUint32(0), 3);
      assert.equal(view.getUint32(4), 1000 + i);
      assert.equal(view.getFloat64(8), 12.5 + i);
    });
  });

  Deno.test(`v${version}: acks decode with the right type and id`, () => {
    const cases = [
      [PacketType.PUBACK, "puback"],
      [PacketType.PUBREC, "pubrec"],
      [PacketType.PUBREL, "pubrel"],
      [PacketType.PUBCOMP, "pubcomp"],
    ] as const;
    for (const [type, cmd] of cases) {
      const [packet] = parseAll(encodeAck(type, 0xbeef), version);
      assert.equal(packet.cmd, cmd);
      assert.equal(packet.messageId, 0xbeef);
    }
  });

  Deno.test(`v${version}: FrameReader splits packets cut at every byte boundary`, () => {
    const stream = new Uint8Array([
      ...mqtt.generate(
        {
          cmd: "publish",
          topic: "a/b",
          payload: Buffer.alloc(300),
          qos: 2,
          messageId: 9,
        } as Parsed,
        {
          protocolVersion: version,
        },
      ),
      ...mqtt.generate({ cmd: "pubrel", messageId: 77 } as Parsed, { protocolVersion: version }),
      ...mqtt.generate({ cmd: "pingresp" } as Parsed, { protocolVersion: version }),
    ]);
    for (let cut = 1; cut < stream.length; cut++) {
      const reader = new FrameReader();
      const seen: string[] = [];
      const onPacket = (
        type: number,
        flags: number,
        buf: Uint8Array,
        body: number,
        end: number,
      ) => {
        if (type === PacketType.PUBLISH) {
          const qos = (flags >> 1) & 3;
          const payloadAt = publishPayloadAt(buf, body, qos, version);
          seen.push(`publish q${qos} id${publishPacketId(buf, body)} payload${end - payloadAt}`);
        } else seen.push(`${type}:${end - body}`);
      };
      const first = stream.slice(0, cut);
      const second = stream.slice(cut);
      reader.push(first, first.length, onPacket);
      reader.push(second, second.length, onPacket);
      // mqtt-packet writes a v5 PUBREL with reason code and empty properties: 4 body bytes.
      const pubrel = version === 5 ? "6:4" : "6:2";
      assert.deepEqual(seen, ["publish q2 id9 payload300", pubrel, "13:0"], `cut at ${cut}`);
    }
  });

  Deno.test(`v${version}: SUBACK return codes are read past the properties`, () => {
    const suback = mqtt.generate(
      {
        cmd: "suback",
        messageId: 1,
        granted: [1, 0x80],
        properties: version === 5 ? { reasonString: "why" } : undefined,
      } as Parsed,
      { protocolVersion: version },
    );
    const reader = new FrameReader();
    let codes: number[] = [];
    reader.push(
      suback,
      suback.length,
      (_t, _f, buf, body, end) => codes = subackCodes(buf, body, end, version),
    );
    assert.deepEqual(codes, [1, 0x80]);
  });
}

Deno.test("v5: CONNACK Receive Maximum is found among other properties", () => {
  const connack = mqtt.generate(
    {
      cmd: "connack",
      reasonCode: 0,
      sessionPresent: false,
      properties: {
        sessionExpiryInterval: 10,
        assignedClientIdentifier: "x",
        receiveMaximum: 321,
        topicAliasMaximum: 10,
        userProperties: { a: "b" },
        maximumPacketSize: 1000,
      },
    } as Parsed,
    { protocolVersion: 5 },
  );
  const reader = new FrameReader();
  let info: ReturnType<typeof parseConnack> | undefined;
  reader.push(
    connack,
    connack.length,
    (_t, _f, buf, body, end) => info = parseConnack(buf, body, end, 5),
  );
  assert.deepEqual(info, { reasonCode: 0, receiveMaximum: 321 });
});

Deno.test("v5: CONNACK without Receive Maximum leaves it undefined; 3.1.1 reads the return code", () => {
  const v5 = mqtt.generate({ cmd: "connack", reasonCode: 0x87, sessionPresent: false } as Parsed, {
    protocolVersion: 5,
  });
  const v4 = mqtt.generate({ cmd: "connack", returnCode: 5, sessionPresent: false } as Parsed, {
    protocolVersion: 4,
  });
  const reader = new FrameReader();
  const infos: ReturnType<typeof parseConnack>[] = [];
  reader.push(
    v5,
    v5.length,
    (_t, _f, buf, body, end) => infos.push(parseConnack(buf, body, end, 5)),
  );
  reader.push(
    v4,
    v4.length,
    (_t, _f, buf, body, end) => infos.push(parseConnack(buf, body, end, 4)),
  );
  assert.deepEqual(infos, [{ reasonCode: 0x87, receiveMaximum: undefined }, { reasonCode: 5 }]);
});

Deno.test("payloads shorter than the bench header are refused", () => {
  assert.throws(() => encodePublishBatch(5, "t", 0, 15, 1, 0), RangeError);
});
