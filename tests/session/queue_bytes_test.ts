/**
 * `limits.max_queued_bytes` counts what a queued message holds besides its payload: topic and
 * properties. Messages with tiny payloads and large user properties queued for an offline
 * session stop at the bound, and the broker's memory with them (read from its own process).
 */
import assert from "node:assert/strict";
import { RawClient } from "../helpers/broker.ts";
import { mib, startBrokerProcess } from "../helpers/broker_process.ts";

const MIB = 1024 * 1024;

Deno.test("user properties count against max_queued_bytes of an offline session", async () => {
  await using broker = await startBrokerProcess({
    general: { websocket: false },
    limits: { max_queued_bytes: 4 * MIB },
  });
  const port = broker.ports.tcp;
  {
    await using s = await RawClient.connect(port, 5);
    await s.handshake("offline", 5, { clean: false, properties: { sessionExpiryInterval: 3600 } });
    await s.sendPacket({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic: "p", qos: 1 }] });
    await s.expect("suback");
  }
  await using pub = await RawClient.connect(port, 5);
  await pub.handshake("publisher");
  const before = await broker.memory();
  // 300 QoS 1 messages of 1 byte of payload and 180 KB of user properties (53 MiB in all).
  for (let i = 0; i < 300; i++) {
    const userProperties = {
      a: `${i}`.padEnd(60_000, "a"),
      b: "b".repeat(60_000),
      c: "c".repeat(60_000),
    };
    await pub.sendPacket({
      cmd: "publish",
      topic: "p",
      qos: 1,
      messageId: (i % 60000) + 1,
      payload: "x",
      properties: { userProperties },
    });
    await pub.expect("puback");
  }
  const after = await broker.memory();
  const heap = after.heapUsed - before.heapUsed;
  const held = after.heapUsed + after.external - before.heapUsed - before.external;
  // Before: all 300 queued (payload bytes only), +52 MiB held by the offline session.
  assert.ok(broker.metrics.droppedQueueFull >= 250, `${broker.metrics.droppedQueueFull} dropped`);
  assert.ok(held < 16 * MIB, `heap and external grew by ${mib(held)} (heap ${mib(heap)})`);
});
