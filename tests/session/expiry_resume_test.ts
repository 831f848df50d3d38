/**
 * A session whose Session Expiry has passed is over, whether or not the
 * periodic sweep has noticed yet: a client that comes back after the deadline
 * gets Session Present 0 and none of the old session's messages. (After a
 * restart on a durable store this is what keeps expired sessions from being
 * resumed in the moment before the first sweep; tests/e2e/durability_restart_test.ts.)
 */
import assert from "node:assert/strict";
import { ManualClock } from "../../mod.ts";
import { connectClient, delay, RawClient, startBroker } from "../helpers/broker.ts";

Deno.test("a session past its expiry is not resumed, even before the sweep runs", async () => {
  const clock = new ManualClock();
  // The sweep would run only after a minute of clock time.
  await using b = await startBroker({ limits: { sweep_interval_ms: 60_000 } }, { clock });
  const c = await RawClient.connect(b.port, 5);
  await c.handshake("brief", 5, {
    clean: false,
    keepalive: 0,
    properties: { sessionExpiryInterval: 2 },
  });
  await c.sendPacket({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic: "t", qos: 1 }] });
  await c.expect("suback");
  await c.sendPacket({ cmd: "disconnect" });
  await c.expectClosed();
  await using pub = await connectClient(b.port, { clientId: "pub", keepalive: 0 });
  await pub.publishAsync("t", "old", { qos: 1 });
  clock.advance(3_000);
  await delay(20);
  const again = await RawClient.connect(b.port, 5);
  const ack = await again.handshake("brief", 5, {
    clean: false,
    keepalive: 0,
    properties: { sessionExpiryInterval: 2 },
  });
  assert.equal(ack.sessionPresent, false);
  await assert.rejects(again.next(200), /timed out/);
  again.close();
});
