/**
 * Hostile review of limits.max_publish_rate and max_read_rate: what a throttled client can do to
 * the broker (memory held for it, its will, its session, the throttled gauge) over real sockets.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import mqttPacket from "mqtt-packet";
import { hashPassword } from "../../src/auth/passwords.ts";
import type { Connection } from "../../src/session/connection.ts";
import type { Broker } from "../../src/broker.ts";
import { delay, RawClient, startBroker, subscriber } from "../helpers/broker.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-rate-attack-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

function packet(p: Record<string, unknown>): Uint8Array {
  return new Uint8Array(
    mqttPacket.generate(p as unknown as mqttPacket.Packet, { protocolVersion: 5 }),
  );
}

/** `count` QoS `qos` PUBLISH packets on `topic`, payload `size` bytes starting with the index. */
function publishes(topic: string, count: number, size: number, qos: 0 | 1 | 2 = 0): Uint8Array {
  const parts: Uint8Array[] = [];
  for (let i = 0; i < count; i++) {
    const payload = Buffer.alloc(size, 0x2e);
    payload.write(String(i));
    parts.push(packet({ cmd: "publish", topic, payload, qos, messageId: i + 1 }));
  }
  return new Uint8Array(Buffer.concat(parts));
}

/** The broker's connection for `clientId`. */
function connectionOf(broker: Broker, clientId: string): Connection | undefined {
  for (const c of broker.core.connectionList()) if (c.clientId === clientId) return c;
  return undefined;
}

/** Bytes the connection's rate limit holds for it (its deferred buffer). */
function deferredBytes(c: Connection | undefined): number {
  const rate = c?.rate as unknown as { deferred: Uint8Array | null } | null | undefined;
  return rate?.deferred?.length ?? 0;
}

async function until(what: string, ok: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(10);
  }
}

const WILL = { topic: "will/t", payload: Buffer.from("will"), qos: 0, retain: false };

Deno.test("attack: a throttled client sends publishes, then DISCONNECT 0x00 and closes its socket: every publish arrives, the DISCONNECT is handled after them (no will), the gauge returns to 0", async () => {
  await using b = await startBroker({ limits: { max_publish_rate: 20, sweep_interval_ms: 50 } });
  await using sub = await subscriber(b.port, ["flood/#", "will/#"], 0, { clientId: "sub" });
  const got: string[] = [];
  sub.on("message", (t, p) => got.push(t === "will/t" ? "WILL" : p.toString().replace(/\.+$/, "")));
  const c = await RawClient.connect(b.port, 5);
  await c.handshake("thr", 5, { will: WILL });
  await c.send(publishes("flood/x", 50, 512));
  await c.send(packet({ cmd: "disconnect", reasonCode: 0 }));
  c.close();
  await until("50 messages", () => got.length >= 50, 6000);
  await delay(300);
  assert.deepEqual(got, Array.from({ length: 50 }, (_, i) => String(i)));
  await until("the gauge at 0", () => b.broker.metrics.clientsThrottled === 0);
  assert.equal(connectionOf(b.broker, "thr"), undefined);
});

Deno.test("attack: a throttled client's DISCONNECT 0x04 (with will) publishes the will after its publishes", async () => {
  await using b = await startBroker({ limits: { max_publish_rate: 20, sweep_interval_ms: 50 } });
  await using sub = await subscriber(b.port, ["flood/#", "will/#"], 0, { clientId: "sub" });
  const got: string[] = [];
  sub.on("message", (t, p) => got.push(t === "will/t" ? "WILL" : p.toString().replace(/\.+$/, "")));
  const c = await RawClient.connect(b.port, 5);
  await c.handshake("thr4", 5, { will: WILL });
  await c.send(publishes("flood/x", 40, 256));
  await c.send(packet({ cmd: "disconnect", reasonCode: 4 }));
  c.close();
  await until("41 messages", () => got.length >= 41, 6000);
  assert.deepEqual(got, [...Array.from({ length: 40 }, (_, i) => String(i)), "WILL"]);
  assert.equal(b.broker.metrics.clientsThrottled, 0);
});

Deno.test("attack: a throttled client taken over by a new connection with its client id: the old one's deferred bytes are dropped with it, the gauge returns to 0, the new one is not throttled by the old one's debt", async () => {
  await using b = await startBroker({ limits: { max_publish_rate: 10, sweep_interval_ms: 50 } });
  await using sub = await subscriber(b.port, "t/#", 0, { clientId: "sub" });
  const got: string[] = [];
  sub.on("message", (t) => got.push(t));
  const old = await RawClient.connect(b.port, 5);
  await old.handshake("same");
  await old.send(publishes("t/old", 200, 256));
  await until("the old one held", () => b.broker.metrics.clientsThrottled === 1);
  assert.ok(deferredBytes(connectionOf(b.broker, "same")) > 0);
  await using fresh = await RawClient.connect(b.port, 5);
  await fresh.handshake("same");
  assert.equal((await old.expect("disconnect")).reasonCode, 0x8e);
  assert.equal(b.broker.metrics.clientsThrottled, 0);
  await fresh.send(publishes("t/new", 5, 16));
  await until("the new one's 5", () => got.filter((t) => t === "t/new").length === 5, 2000);
  const oldCount = got.filter((t) => t === "t/old").length;
  await delay(500);
  assert.equal(got.filter((t) => t === "t/old").length, oldCount, "nothing of the old one after");
  old.close();
});

Deno.test("attack: a throttled client that keeps sending (TCP, 1 KiB publishes, rate 1/s) for 2 s: what the broker holds for it stays under one read's worth", async () => {
  await using b = await startBroker({ limits: { max_publish_rate: 1, sweep_interval_ms: 50 } });
  const c = await RawClient.connect(b.port, 5);
  await c.handshake("hog");
  const conn = connectionOf(b.broker, "hog");
  const chunk = publishes("hog/x", 64, 1024);
  let sent = 0;
  let max = 0;
  const stop = Date.now() + 2000;
  // Writes block once the socket buffers fill (the broker does not read): send without awaiting.
  const sending = (async () => {
    while (Date.now() < stop) {
      await c.send(chunk).catch(() => {});
      sent += chunk.length;
    }
  })();
  while (Date.now() < stop) {
    max = Math.max(max, deferredBytes(conn));
    await delay(20);
  }
  console.log(`sent ${sent} bytes, the broker held at most ${max} deferred`);
  assert.ok(max <= 256 * 1024, `held ${max} bytes`);
  // Closing does not end it here: see the ignored test below.
  c.close();
  await sending.catch(() => {});
});

Deno.test("attack: a throttled WebSocket client sending publishes one byte per frame for 2 s: what the broker holds for it stays bounded", async () => {
  await using b = await startBroker({
    general: { websocket: true },
    limits: { max_publish_rate: 1, sweep_interval_ms: 50 },
  });
  const wsPort = b.broker.addresses.find((a) => a.kind === "ws")!.port;
  const ws = new WebSocket(`ws://127.0.0.1:${wsPort}/mqtt`, "mqtt");
  ws.binaryType = "arraybuffer";
  const opened = Promise.withResolvers<void>();
  ws.onopen = () => opened.resolve();
  ws.onerror = (e) => opened.reject(new Error(String((e as ErrorEvent).message)));
  const connack = Promise.withResolvers<void>();
  ws.onmessage = () => connack.resolve();
  await opened.promise;
  ws.send(
    packet({
      cmd: "connect",
      protocolId: "MQTT",
      protocolVersion: 5,
      clientId: "wsh",
      clean: true,
      keepalive: 60,
    }),
  );
  await connack.promise;
  const conn = connectionOf(b.broker, "wsh");
  const bytes = publishes("ws/x", 2000, 32);
  let max = 0;
  let i = 0;
  const stop = Date.now() + 2000;
  while (Date.now() < stop) {
    // Keep the client's own buffer from growing without bound: send while it drains.
    for (let k = 0; k < 2000 && ws.bufferedAmount < 1 << 20; k++) {
      ws.send(bytes.subarray(i % bytes.length, (i % bytes.length) + 1));
      i++;
    }
    max = Math.max(max, deferredBytes(conn));
    await delay(5);
  }
  console.log(`sent ${i} one-byte frames, the broker held at most ${max} deferred`);
  assert.ok(max <= 256 * 1024, `held ${max} bytes`);
  // The close handshake would wait behind the debt (the broker reads nothing meanwhile): the
  // broker's stop ends it.
  ws.close();
});

Deno.test("attack: keep alive while throttled: a debt longer than 1.5 x keep alive does not disconnect, a client silent after its debt is paid is, and the gauge returns to 0", async () => {
  await using b = await startBroker({ limits: { max_read_rate: 2000, sweep_interval_ms: 50 } });
  await using sub = await subscriber(b.port, "ka/#", 0, { clientId: "sub" });
  const got: string[] = [];
  sub.on("message", (t) => got.push(t));
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("ka", 5, { keepalive: 1 });
  // Two packets of 3,000 bytes in one read (a read passes the byte bucket whole): 4,000 bytes
  // of debt, held 2 s, longer than the keep alive's 1.5 s.
  await c.send(publishes("ka/x", 2, 3000));
  await until("the hold", () => b.broker.metrics.clientsThrottled === 1, 2000);
  const start = Date.now();
  await until("the release", () => b.broker.metrics.clientsThrottled === 0, 6000);
  const held = Date.now() - start;
  assert.ok(held >= 1500, `held ${held} ms`);
  assert.equal(got.length, 2);
  assert.ok(connectionOf(b.broker, "ka")?.connected, "not disconnected while held");
  // Silent from here on: keep alive 1 s, so closed within about 1.5 s plus a sweep.
  assert.equal((await c.expect("disconnect", 4000)).reasonCode, 0x8d);
  assert.equal(b.broker.metrics.clientsThrottled, 0);
});

Deno.test("attack: QoS 2 while throttled: every PUBLISH gets its PUBREC, every PUBREL its PUBCOMP, each message is delivered once", async () => {
  await using b = await startBroker({ limits: { max_publish_rate: 10, sweep_interval_ms: 50 } });
  await using sub = await subscriber(b.port, "q2/#", 2, { clientId: "sub" });
  const got: string[] = [];
  sub.on("message", (_t, p) => got.push(p.toString().replace(/\.+$/, "")));
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("q2");
  const n = 30;
  await c.send(publishes("q2/x", n, 64, 2));
  const recs = new Set<number>();
  const comps = new Set<number>();
  while (comps.size < n) {
    const p = await c.next(5000) as Record<string, unknown> | null;
    assert.ok(p !== null, `${recs.size} PUBREC, ${comps.size} PUBCOMP`);
    if (p.cmd === "pubrec") {
      recs.add(p.messageId as number);
      // Sent at once, behind the publishes the broker has not read yet.
      await c.sendPacket({ cmd: "pubrel", messageId: p.messageId });
    } else if (p.cmd === "pubcomp") comps.add(p.messageId as number);
  }
  await until("all delivered", () => got.length >= n, 3000);
  await delay(200);
  assert.deepEqual(got, Array.from({ length: n }, (_, i) => String(i)));
  assert.equal(recs.size, n);
});

Deno.test("attack: a throttled client whose password is removed (reload) is disconnected with 0x87 at once, and the gauge returns to 0", async () => {
  const file = join(dir, "passwords");
  await Deno.writeTextFile(file, `eve:${await hashPassword("eve-secret", 1000)}\n`);
  await using b = await startBroker({
    auth: { password_file: file },
    limits: { max_publish_rate: 1, sweep_interval_ms: 50 },
  });
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("eve-1", 5, { username: "eve", password: Buffer.from("eve-secret") });
  await c.send(publishes("eve/x", 100, 64));
  await until("the hold", () => b.broker.metrics.clientsThrottled === 1, 2000);
  await Deno.writeTextFile(file, "");
  await b.broker.reload();
  assert.equal((await c.expect("disconnect")).reasonCode, 0x87);
  assert.equal(b.broker.metrics.clientsThrottled, 0);
  assert.equal(deferredBytes(connectionOf(b.broker, "eve-1")), 0);
});

Deno.test({
  name:
    "attack: a client that dies while deep in debt (here: closes its socket) is not noticed until the debt is paid, unless limits.max_throttled_seconds ends it: then its will comes and the gauge is 0",
  // While held, the transport stops reading the socket, so neither the peer's FIN nor a reset is
  // seen, and what it sent before it went away is read at its rate first (the debt is bounded
  // only by the kernel's buffers: at max_publish_rate 10, a few MiB of 6-byte PUBLISH packets
  // is about a day, with the session online and no will). max_throttled_seconds bounds it.
  fn: async () => {
    for (const seconds of [0, 1]) {
      await using b = await startBroker({
        limits: { max_publish_rate: 1, max_throttled_seconds: seconds, sweep_interval_ms: 50 },
      });
      await using sub = await subscriber(b.port, "will/#", 0, { clientId: "sub" });
      const got: string[] = [];
      sub.on("message", (t) => got.push(t));
      const c = await RawClient.connect(b.port, 5);
      await c.handshake("dies", 5, { will: WILL, keepalive: 1 });
      await c.send(publishes("dies/x", 200, 8));
      await until("the hold", () => b.broker.metrics.clientsThrottled === 1, 2000);
      c.close();
      if (seconds === 0) {
        // Keep alive 1 s: 1.5 s, a sweep, and some slack; nothing, as the debt is not paid.
        await new Promise((r) => setTimeout(r, 3000));
        assert.deepEqual(got, [], "no will while the debt lasts");
        assert.equal(b.broker.metrics.clientsThrottled, 1);
        continue;
      }
      await until("the will", () => got.length === 1, 4000);
      assert.equal(b.broker.metrics.clientsThrottled, 0);
      assert.equal(b.broker.metrics.disconnects.get("0x96"), 1);
    }
  },
});
