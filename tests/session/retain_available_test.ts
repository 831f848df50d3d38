/**
 * A broker that keeps no retained messages (limits.max_retained_messages = 0) says so in CONNACK
 * (Retain Available 0); an MQTT 5 client that sends a retained PUBLISH anyway is disconnected
 * with 0x9A, and a retained will is refused with CONNACK 0x9A [MQTT-3.2.2-13]. A broker with
 * retained messages says nothing (absent means available).
 */
import assert from "node:assert/strict";
import { RawClient, startBroker, subscriber } from "../helpers/broker.ts";

const NO_RETAIN = { limits: { max_retained_messages: 0 } };

Deno.test("max_retained_messages = 0: CONNACK says Retain Available 0, a retained PUBLISH gets DISCONNECT 0x9A", async () => {
  await using b = await startBroker(NO_RETAIN);
  await using watcher = await subscriber(b.port, "r/#", 0, { clientId: "watcher" });
  await using c = await RawClient.connect(b.port);
  const ack = await c.handshake("no-retain");
  const props = ack.properties as Record<string, unknown> | undefined;
  assert.equal(props?.retainAvailable, false);
  await c.sendPacket({ cmd: "publish", topic: "r/x", payload: "kept?", qos: 0, retain: true });
  const d = await c.expect("disconnect");
  assert.equal(d.reasonCode, 0x9a);
  await c.expectClosed();
  await watcher.inbox.none(200);
});

Deno.test("max_retained_messages = 0: a retained will is refused with CONNACK 0x9A", async () => {
  await using b = await startBroker(NO_RETAIN);
  await using c = await RawClient.connect(b.port);
  await c.sendPacket({
    cmd: "connect",
    protocolId: "MQTT",
    protocolVersion: 5,
    clientId: "retained-will",
    clean: true,
    keepalive: 60,
    will: { topic: "w/x", payload: "gone", qos: 0, retain: true, properties: {} },
  });
  const ack = await c.expect("connack");
  assert.equal(ack.reasonCode, 0x9a);
});

Deno.test("with retained messages kept, CONNACK leaves Retain Available out (available)", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port);
  const ack = await c.handshake("retain-ok");
  const props = ack.properties as Record<string, unknown> | undefined;
  assert.equal(props?.retainAvailable, undefined);
});
