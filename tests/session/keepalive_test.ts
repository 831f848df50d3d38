/**
 * Keep alive seen from real sockets: the 1.5x rule, PINGREQ keeping a client
 * alive, Server Keep Alive from `[general] timeout` and `limits.max_keepalive`.
 * The broker checks timeouts every 500 ms, so a 1 s keep alive closes a silent
 * client between 1.5 s and about 2 s; bounds below leave room for a busy machine.
 */
import assert from "node:assert/strict";
import { delay, RawClient, startBroker, subscriber } from "../helpers/broker.ts";

/** Lower bound for a 1 s keep alive: 1.5 s less clock slack. */
const EARLIEST_MS = 1450;
/** Upper bound: 1.5 s + one sweep + generous scheduling delay. */
const LATEST_MS = 3500;

/**
 * Waits until ~250 ms after the broker started, i.e. between two of its 500 ms
 * sweeps, before the timed client connects. Connecting right on a sweep's beat
 * would let a broker enforcing 1.0 x keep alive close at ~1.48 s and pass.
 */
async function offBeat(startedAt: number): Promise<void> {
  const wait = startedAt + 250 - Date.now();
  if (wait > 0) await delay(wait);
}

function properties(p: Record<string, unknown>): Record<string, unknown> {
  return (p.properties ?? {}) as Record<string, unknown>;
}

Deno.test("a silent MQTT 5 client gets DISCONNECT 0x8D after 1.5 x keep alive, not before", async () => {
  await using b = await startBroker();
  const started = Date.now();
  await using idle = await RawClient.connect(b.port, 5);
  await idle.handshake("no-keepalive", 5, { keepalive: 0 });
  await using c = await RawClient.connect(b.port, 5);
  await offBeat(started);
  await c.handshake("silent", 5, { keepalive: 1 });
  const t0 = Date.now();
  // [MQTT-3.1.2-22]: close when nothing arrived within 1.5 x Keep Alive.
  const d = await c.expect("disconnect", LATEST_MS);
  const waited = Date.now() - t0;
  assert.equal(d.reasonCode, 0x8d);
  assert.ok(waited >= EARLIEST_MS, `disconnected after ${waited} ms, before 1.5 x keep alive`);
  await c.expectClosed();
  // Keep Alive 0 turns the mechanism off: the other silent client is still there.
  await idle.send([0xc0, 0x00]);
  await idle.expect("pingresp");
});

Deno.test("a silent 3.1.1 client is closed without DISCONNECT after 1.5 x keep alive, and its will is published", async () => {
  await using b = await startBroker();
  const started = Date.now();
  await using watcher = await subscriber(b.port, "will/silent", 1, { clientId: "will-watcher" });
  await using c = await RawClient.connect(b.port, 4);
  await offBeat(started);
  await c.handshake("silent311", 4, {
    keepalive: 1,
    will: { topic: "will/silent", payload: "gone", qos: 1, retain: false },
  });
  const t0 = Date.now();
  // 3.1.1 [MQTT-3.1.2-24]: no DISCONNECT exists for a server to send.
  assert.equal(await c.next(LATEST_MS), null);
  const waited = Date.now() - t0;
  assert.ok(waited >= EARLIEST_MS, `closed after ${waited} ms, before 1.5 x keep alive`);
  // "As if the network had failed": the will goes out.
  const will = await watcher.inbox.next();
  assert.equal(will.payload, "gone");
});

Deno.test("a client that sends PINGREQ within its keep alive stays connected", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("pinger", 5, { keepalive: 1 });
  const t0 = Date.now();
  // Well past 1.5 x keep alive, one PINGREQ every 0.7 s.
  while (Date.now() - t0 < 2600) {
    await new Promise((r) => setTimeout(r, 700));
    await c.send([0xc0, 0x00]);
    // [MQTT-3.12.4-1]: every PINGREQ is answered.
    await c.expect("pingresp");
  }
  assert.equal(c.closed, false);
});

Deno.test("[general] timeout is sent as Server Keep Alive and enforced", async () => {
  await using b = await startBroker({ general: { timeout: 1 } });
  const started = Date.now();
  await using c = await RawClient.connect(b.port, 5);
  await offBeat(started);
  // The client asks for 60 s; the server imposes 1 s [MQTT-3.2.2-21].
  const ack = await c.handshake("told", 5, { keepalive: 60 });
  assert.equal(properties(ack).serverKeepAlive, 1);
  const t0 = Date.now();
  const d = await c.expect("disconnect", LATEST_MS);
  const waited = Date.now() - t0;
  assert.equal(d.reasonCode, 0x8d);
  assert.ok(waited >= EARLIEST_MS, `disconnected after ${waited} ms`);
  await c.expectClosed();
});

Deno.test("limits.max_keepalive caps larger and zero keep alives via Server Keep Alive, and is enforced", async () => {
  await using b = await startBroker({ limits: { max_keepalive: 1 } });
  const started = Date.now();
  await using within = await RawClient.connect(b.port, 5);
  // A keep alive within the cap is the client's own: no Server Keep Alive [MQTT-3.2.2-22].
  const ackWithin = await within.handshake("within", 5, { keepalive: 1 });
  assert.equal(properties(ackWithin).serverKeepAlive, undefined);

  await using zero = await RawClient.connect(b.port, 5);
  // 0 would mean "never time out", which is above any cap.
  const ackZero = await zero.handshake("zero", 5, { keepalive: 0 });
  assert.equal(properties(ackZero).serverKeepAlive, 1);

  await using big = await RawClient.connect(b.port, 5);
  await offBeat(started);
  const ackBig = await big.handshake("big", 5, { keepalive: 600 });
  assert.equal(properties(ackBig).serverKeepAlive, 1);
  const t0 = Date.now();
  const d = await big.expect("disconnect", LATEST_MS);
  const waited = Date.now() - t0;
  assert.equal(d.reasonCode, 0x8d);
  assert.ok(waited >= EARLIEST_MS, `disconnected after ${waited} ms`);
  // The capped keep-alive-0 client is held to the same 1 s.
  assert.equal((await zero.expect("disconnect", LATEST_MS)).reasonCode, 0x8d);
});

Deno.test("a 3.1.1 client asking for more than limits.max_keepalive is refused with return code 2", async () => {
  await using b = await startBroker({ limits: { max_keepalive: 30 } });
  // 3.1.1 has no Server Keep Alive, so the broker cannot lower the value: it refuses instead.
  for (const keepalive of [60, 0]) {
    await using c = await RawClient.connect(b.port, 4);
    await c.sendPacket({
      cmd: "connect",
      protocolId: "MQTT",
      protocolVersion: 4,
      clientId: `ka${keepalive}`,
      clean: true,
      keepalive,
    }, 4);
    const ack = await c.expect("connack");
    assert.equal(ack.returnCode, 2, `keep alive ${keepalive}`);
    assert.equal(await c.next(), null);
  }
  await using ok = await RawClient.connect(b.port, 4);
  await ok.handshake("ka30", 4, { keepalive: 30 });
});
