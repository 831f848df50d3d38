/**
 * A message queued for many offline sessions counts once against limits.max_queued_bytes_total,
 * also after a restart that restores the queues from the SQLite store: the store keeps it once,
 * and so must the restored queues, or the total the broker comes back with is the message's size
 * times the sessions that wait for it, and nothing more is queued for anyone until they drain.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { RawClient } from "../helpers/broker.ts";
import { startBrokerProcess } from "../helpers/broker_process.ts";

const MIB = 1024 * 1024;
const SESSIONS = 20;
const persistent = { clean: false, properties: { sessionExpiryInterval: 3600 } };

async function publish(port: number, label: string, size: number): Promise<void> {
  await using pub = await RawClient.connect(port, 5);
  await pub.handshake(`pub-${label}`);
  const payload = Buffer.alloc(size, 0x2e);
  payload.write(label);
  await pub.sendPacket({ cmd: "publish", topic: "fan", qos: 1, messageId: 1, payload });
  await pub.expect("puback");
}

Deno.test("queues restored from the store count a message they share once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-queue-total-" });
  const config = {
    general: { websocket: false },
    storage: { enabled: true, dir },
    limits: { max_queued_bytes_total: 2 * MIB, max_packet_size: 2 * MIB },
  };
  try {
    {
      await using broker = await startBrokerProcess(config);
      const port = broker.ports.tcp;
      for (let i = 0; i < SESSIONS; i++) {
        await using s = await RawClient.connect(port, 5);
        await s.handshake(`fan-${i}`, 5, persistent);
        await s.sendPacket({
          cmd: "subscribe",
          messageId: 1,
          subscriptions: [{ topic: "fan", qos: 1 }],
        });
        await s.expect("suback");
      }
      await publish(port, "first", MIB);
      await broker.memory();
      assert.equal(broker.metrics.queuedMessages, SESSIONS);
      assert.ok(broker.metrics.queuedBytes < 2 * MIB, `${broker.metrics.queuedBytes} bytes`);
    }
    await using broker = await startBrokerProcess(config);
    const port = broker.ports.tcp;
    await broker.memory();
    const restored = broker.metrics.queuedBytes;
    assert.equal(broker.metrics.queuedMessages, SESSIONS);
    // Before: each restored queue entry had a message of its own, 20 MiB against 2 MiB.
    assert.ok(restored >= MIB && restored < 2 * MIB, `restored queues hold ${restored} bytes`);
    // There is room for another 512 KiB message in every queue.
    await publish(port, "second", 512 * 1024);
    await broker.memory();
    assert.equal(broker.metrics.droppedQueueTotal, 0);
    for (let i = 0; i < SESSIONS; i += 7) {
      await using s = await RawClient.connect(port, 5);
      await s.handshake(`fan-${i}`, 5, persistent);
      for (const label of ["first", "second"]) {
        const p = await s.expect("publish") as { messageId: number; payload: Uint8Array };
        assert.equal(new TextDecoder().decode(p.payload.subarray(0, label.length)), label);
        await s.sendPacket({ cmd: "puback", messageId: p.messageId });
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
