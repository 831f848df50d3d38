/**
 * Messages in flight to a receiver are copied into shared arena chunks while they wait for
 * their acknowledgement (Message.ownBriefly): a receiver that never acknowledges must not keep
 * those chunks alive, each one holding other clients' long-gone messages. By the next keep-alive
 * sweep its unacknowledged messages have buffers of their own. Measured in the broker's own
 * process: each stuck message is made to land in a chunk of its own (other traffic fills the
 * chunk between them), so kept chunks would cost 16 KiB per stuck message. Then the stuck client
 * reconnects and gets exactly those messages again.
 */
import assert from "node:assert/strict";
import { mib, startBrokerProcess } from "../helpers/broker_process.ts";
import { connectClient, type Packet, RawClient } from "../helpers/broker.ts";

/** Below the default max_inflight_messages (32): all of them in flight at once. */
const STUCK = 30;
/** Filler between two stuck messages: more than one arena chunk (16 KiB) of small payloads. */
const FILLER = 20;
const FILLER_BYTES = 1000;

Deno.test("a receiver that never acknowledges keeps its messages, not the arena chunks they were in", async () => {
  await using broker = await startBrokerProcess({
    general: { websocket: false },
    limits: { sweep_interval_ms: 100 },
  });
  const port = broker.ports.tcp;
  const stuck = await RawClient.connect(port);
  await stuck.handshake("stuck", 5, { clean: true, properties: { sessionExpiryInterval: 300 } });
  await stuck.sendPacket({
    cmd: "subscribe",
    messageId: 1,
    subscriptions: [{ topic: "s/#", qos: 1 }],
  });
  await stuck.expect("suback");
  await using sink = await connectClient(port, { clientId: "sink" });
  await sink.subscribeAsync("f/#", { qos: 1 });
  await using pub = await connectClient(port, { clientId: "pub" });
  // Settle what starting up allocated before the baseline.
  await pub.publishAsync("f/warm", "x".repeat(FILLER_BYTES), { qos: 1 });
  const before = await broker.memory();

  const filler = "f".repeat(FILLER_BYTES);
  for (let i = 0; i < STUCK; i++) {
    await pub.publishAsync("s/x", `stuck-${i}`, { qos: 1 });
    await Promise.all(
      Array.from({ length: FILLER }, () => pub.publishAsync("f/x", filler, { qos: 1 })),
    );
  }
  const got: string[] = [];
  while (got.length < STUCK) {
    const p = await stuck.expect("publish") as Packet & { payload: Uint8Array };
    got.push(new TextDecoder().decode(p.payload));
  }
  // Several sweeps (100 ms apart), and the sink's acknowledgements, have come by now.
  await new Promise((r) => setTimeout(r, 500));
  const after = await broker.memory();
  const grown = after.external - before.external;
  console.log(`external memory grew ${grown} B for ${STUCK} stuck messages`);
  // Kept chunks: 30 x 16 KiB = 480 KiB. Own buffers: 30 small payloads.
  assert.ok(
    grown < 160 * 1024,
    `external memory grew by ${mib(grown)} for ${STUCK} stuck messages`,
  );

  // The copies are the messages: the stuck client reconnects and gets them again, with DUP.
  stuck.close();
  const again = await RawClient.connect(port);
  try {
    const ack = await again.handshake("stuck", 5, {
      clean: false,
      properties: { sessionExpiryInterval: 300 },
    });
    assert.equal(ack.sessionPresent, true);
    const resent: string[] = [];
    while (resent.length < STUCK) {
      const p = await again.expect("publish") as Packet & { payload: Uint8Array; dup: boolean };
      assert.equal(p.dup, true);
      resent.push(new TextDecoder().decode(p.payload));
    }
    assert.deepEqual(resent, got);
    assert.deepEqual(got, Array.from({ length: STUCK }, (_, i) => `stuck-${i}`));
  } finally {
    again.close();
  }
});
