/**
 * Incoming QoS 2 packet ids are the client's choice. Ids that share their low bits (1 and
 * 32769 share every slot of a table below 65,536) must not make what a session keeps per id
 * grow with the ids rather than with their number: measured in the broker's own process, per
 * connection that holds two such ids unreleased.
 */
import assert from "node:assert/strict";
import { startBrokerProcess } from "../helpers/broker_process.ts";
import { RawClient } from "../helpers/broker.ts";

const CLIENTS = 150;

Deno.test("QoS 2 ids chosen to collide cost a session what any two ids cost", async () => {
  await using broker = await startBrokerProcess({ general: { websocket: false } });
  const port = broker.ports.tcp;
  const before = await broker.memory();
  const clients: RawClient[] = [];
  try {
    for (let i = 0; i < CLIENTS; i++) {
      const c = await RawClient.connect(port);
      clients.push(c);
      await c.handshake(`collide-${i}`);
      for (const messageId of [1, 32769]) {
        await c.sendPacket({
          cmd: "publish",
          topic: "q2/collide",
          payload: "collide!",
          qos: 2,
          messageId,
        });
        const rec = await c.expect("pubrec");
        assert.equal(rec.messageId, messageId);
      }
    }
    const after = await broker.memory();
    const perClient = (after.heapUsed - before.heapUsed) / CLIENTS;
    // A connection with its session is a few kB; a table grown to 65,536 slots is ~1 MB.
    assert.ok(perClient < 32 * 1024, `${Math.round(perClient)} B of heap per client`);
  } finally {
    for (const c of clients) c.close();
  }
});
