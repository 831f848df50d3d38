import assert from "node:assert/strict";
import { connectClient, RawClient, startBroker, subscriber } from "../helpers/broker.ts";

Deno.test("QoS 1 message published with MQTT.js reaches a subscriber", async () => {
  await using b = await startBroker();
  await using sub = await subscriber(b.port, "a/+", 1, { clientId: "sub" });
  await using pub = await connectClient(b.port, { clientId: "pub" });
  await pub.publishAsync("a/b", "hello", { qos: 1 });
  const m = await sub.inbox.next();
  assert.equal(m.topic, "a/b");
  assert.equal(m.payload, "hello");
  assert.equal(m.packet.qos, 1);
});

Deno.test("a raw client gets CONNACK and PINGRESP", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port);
  await c.handshake("raw");
  await c.send([0xc0, 0x00]);
  await c.expect("pingresp");
});
