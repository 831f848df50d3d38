/**
 * Timing rules driven by an injected clock instead of real sleeps: keep
 * alive, Will Delay, Session Expiry and Message Expiry each fire exactly when
 * the clock passes their deadline (one real-socket test per rule stays in
 * tests/session/ with the system clock).
 */
import assert from "node:assert/strict";
import { ManualClock } from "../../mod.ts";
import { connectClient, delay, RawClient, startBroker, subscriber } from "../helpers/broker.ts";

/** Lets the broker run its reactions to a clock step (sockets, microtasks). */
const settle = () => delay(30);

Deno.test("keep alive: DISCONNECT 0x8D only once 1.5 x keep alive has passed on the clock", async () => {
  const clock = new ManualClock();
  await using b = await startBroker({}, { clock });
  const c = await RawClient.connect(b.port, 5);
  await c.handshake("sleepy", 5, { keepalive: 100 });
  clock.advance(149_000);
  await settle();
  assert.equal(c.closed, false, "closed before 1.5 x keep alive");
  clock.advance(2_000);
  const d = await c.expect("disconnect");
  assert.equal(d.reasonCode, 0x8d);
  await c.expectClosed();
});

Deno.test("Will Delay: the will is published when the delay has passed, not before", async () => {
  const clock = new ManualClock();
  await using b = await startBroker({}, { clock });
  await using watcher = await subscriber(b.port, "wills/#", 1, {
    clientId: "watcher",
    keepalive: 0,
  });
  const w = await RawClient.connect(b.port, 5);
  await w.handshake("mortal", 5, {
    keepalive: 0,
    properties: { sessionExpiryInterval: 3600 },
    will: {
      topic: "wills/mortal",
      payload: "bye",
      qos: 1,
      retain: false,
      properties: { willDelayInterval: 600 },
    },
  });
  await w.send([0xe0, 0x01, 0x04]);
  await w.expectClosed();
  clock.advance(599_000);
  await watcher.inbox.none(50);
  clock.advance(2_000);
  assert.equal((await watcher.inbox.next()).payload, "bye");
});

Deno.test("Session Expiry: a session ends when its interval has passed on the clock", async () => {
  const clock = new ManualClock();
  await using b = await startBroker({}, { clock });
  const props = { properties: { sessionExpiryInterval: 3600 }, keepalive: 0, clean: false };
  const c = await RawClient.connect(b.port, 5);
  await c.handshake("temp", 5, props);
  await c.sendPacket({ cmd: "disconnect" });
  await c.expectClosed();
  clock.advance(3_599_000);
  await settle();
  const again = await RawClient.connect(b.port, 5);
  assert.equal((await again.handshake("temp", 5, props)).sessionPresent, true);
  await again.sendPacket({ cmd: "disconnect" });
  await again.expectClosed();
  clock.advance(3_601_000);
  await settle();
  const late = await RawClient.connect(b.port, 5);
  assert.equal((await late.handshake("temp", 5, props)).sessionPresent, false);
  await late.sendPacket({ cmd: "disconnect" });
});

Deno.test("Message Expiry: a queued message expires by the clock and its remaining interval is sent", async () => {
  const clock = new ManualClock();
  await using b = await startBroker({}, { clock });
  const props = { properties: { sessionExpiryInterval: 3600 }, keepalive: 0, clean: false };
  const s = await RawClient.connect(b.port, 5);
  await s.handshake("reader", 5, props);
  await s.sendPacket({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic: "e/#", qos: 1 }] });
  await s.expect("suback");
  await s.sendPacket({ cmd: "disconnect" });
  await s.expectClosed();
  await using pub = await connectClient(b.port, { clientId: "pub", keepalive: 0 });
  await pub.publishAsync("e/short", "short", { qos: 1, properties: { messageExpiryInterval: 10 } });
  await pub.publishAsync("e/long", "long", { qos: 1, properties: { messageExpiryInterval: 100 } });
  clock.advance(30_000);
  const r = await RawClient.connect(b.port, 5);
  await r.handshake("reader", 5, props);
  const m = await r.expect("publish");
  assert.equal(m.topic, "e/long");
  assert.equal((m.properties as { messageExpiryInterval: number }).messageExpiryInterval, 70);
  await r.sendPacket({ cmd: "disconnect" });
});
