/**
 * limits.max_publish_rate and max_read_rate: a client that sends faster is slowed to the rate
 * (not read until it is back within it), loses nothing, is not disconnected for the keep alive
 * it could not send meanwhile, and does not slow anyone else.
 */
import assert from "node:assert/strict";
import mqttPacket from "mqtt-packet";
import type { MqttClient } from "mqtt";
import { Buffer } from "node:buffer";
import {
  connectClient,
  RawClient,
  startBroker,
  startSecureBroker,
  subscriber,
} from "../helpers/broker.ts";
import { clientTls, makeTestPki } from "../helpers/certs.ts";
import { hashPassword } from "../../src/auth/passwords.ts";
import { join } from "node:path";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-rate-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

/** `count` QoS 0 PUBLISH packets on `topic`, payload `size` bytes starting with the index. */
function publishes(topic: string, count: number, size: number): Uint8Array {
  const parts: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const payload = Buffer.alloc(size, 0x2e);
    payload.write(String(i));
    parts.push(
      mqttPacket.generate({ cmd: "publish", topic, payload, qos: 0 } as mqttPacket.Packet, {
        protocolVersion: 5,
      }),
    );
  }
  return new Uint8Array(Buffer.concat(parts));
}

/** Resolves with Date.now() once `inbox` holds `n` messages. */
async function whenReceived(inbox: { messages: unknown[] }, n: number, ms: number) {
  const deadline = Date.now() + ms;
  while (inbox.messages.length < n) {
    if (Date.now() > deadline) throw new Error(`${inbox.messages.length} of ${n} messages arrived`);
    await new Promise((r) => setTimeout(r, 5));
  }
  return Date.now();
}

/**
 * `pub` sends 300 QoS 1 publishes on `prefix/<i>` at once, with max_publish_rate 100: 200 past
 * the first second's worth take 2 s to be acknowledged, and `inbox` gets every one.
 */
async function assertPaced(
  pub: MqttClient,
  inbox: { messages: { topic: string }[] },
  prefix: string,
  transport: string,
) {
  const start = Date.now();
  await Promise.all(
    Array.from({ length: 300 }, (_, i) => pub.publishAsync(`${prefix}/${i}`, "x", { qos: 1 })),
  );
  const acked = Date.now() - start;
  console.log(`300 over ${transport} acknowledged after ${acked} ms`);
  await whenReceived(inbox, 300, 10000);
  assert.ok(acked >= 1500, `acknowledged after ${acked} ms`);
  assert.equal(new Set(inbox.messages.map((m) => m.topic)).size, 300);
}

Deno.test("max_publish_rate 200: a flood of 1,000 publishes is spread over 4 s, all arrive in order, another publisher is not held up", async () => {
  await using b = await startBroker({ limits: { max_publish_rate: 200, sweep_interval_ms: 50 } });
  await using sub = await subscriber(b.port, ["flood/#", "other/#"], 0, { clientId: "sub" });
  await using flooder = await RawClient.connect(b.port, 5);
  await flooder.handshake("flooder");
  await using other = await RawClient.connect(b.port, 5);
  await other.handshake("other");

  const floodInbox = { messages: [] as string[] };
  const otherInbox = { messages: [] as string[] };
  sub.on("message", (topic, payload) => {
    const i = new TextDecoder().decode(payload).replace(/\.+$/, "");
    (topic.startsWith("flood/") ? floodInbox : otherInbox).messages.push(i);
  });

  // 1 KiB each: the flood spans many reads of the broker, as a real one does.
  const start = Date.now();
  const sending = flooder.send(publishes("flood/x", 1000, 1024));
  await new Promise((r) => setTimeout(r, 300));
  // Within its own first second's worth: not held up by the flooder's debt.
  const otherStart = Date.now();
  await other.send(publishes("other/x", 100, 64));
  const otherDone = await whenReceived(otherInbox, 100, 5000);
  const floodDone = await whenReceived(floodInbox, 1000, 15000);
  await sending;

  // 800 publishes past the first second's worth, at 200/s: 4 s, less one read's worth of slack.
  const elapsed = floodDone - start;
  console.log(`flood ${elapsed} ms, the other publisher's 100 in ${otherDone - otherStart} ms`);
  assert.ok(elapsed >= 3000, `the flood took ${elapsed} ms`);
  assert.ok(otherDone < floodDone - 1500, "the other publisher's messages waited for the flood");
  assert.ok(otherDone - otherStart < 2000, `the other publisher's took ${otherDone - otherStart}`);
  assert.deepEqual(floodInbox.messages, Array.from({ length: 1000 }, (_, i) => String(i)));
  assert.ok(b.broker.metrics.clientsThrottledTotal >= 1);
});

Deno.test("max_read_rate 256 KiB/s: QoS 1 publishes of 1 MiB in all are spread over 3 s, every one acknowledged and delivered", async () => {
  await using b = await startBroker({ limits: { max_read_rate: 262144, sweep_interval_ms: 50 } });
  await using sub = await subscriber(b.port, "big/#", 1, { clientId: "sub" });
  await using pub = await connectClient(b.port, { clientId: "pub" });
  const payload = new Uint8Array(32 * 1024).fill(0x61);

  const start = Date.now();
  await Promise.all(
    Array.from(
      { length: 32 },
      (_, i) => pub.publishAsync(`big/${i}`, Buffer.from(payload), { qos: 1 }),
    ),
  );
  const acked = Date.now() - start;
  const done = await whenReceived(sub.inbox, 32, 10000);
  console.log(`1 MiB acknowledged after ${acked} ms, delivered after ${done - start} ms`);

  // 768 KiB past the first second's worth, at 256 KiB/s: 3 s, less a read's worth.
  assert.ok(acked >= 2200, `acknowledged after ${acked} ms`);
  assert.ok(done - start >= 2200);
  assert.deepEqual(
    sub.inbox.messages.map((m) => m.topic).sort(),
    Array.from({ length: 32 }, (_, i) => `big/${i}`).sort(),
  );
  assert.ok(sub.inbox.messages.every((m) => m.payload.length === payload.length));
});

Deno.test("a client held by max_read_rate for longer than 1.5 x its keep alive is not disconnected", async () => {
  await using b = await startBroker({ limits: { max_read_rate: 20000, sweep_interval_ms: 50 } });
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("slowed", 5, { keepalive: 1 });

  // 100 KB: 80 KB over the bucket, 4 s unread (its second half is read, and acknowledged, only
  // after ~2 s); its keep alive alone would end it after 1.5 s of silence.
  const sent = Date.now();
  await c.sendPacket({
    cmd: "publish",
    topic: "t",
    qos: 1,
    messageId: 1,
    payload: Buffer.alloc(100000),
  });
  assert.equal((await c.expect("puback", 8000)).messageId, 1);
  const pings = setInterval(() => c.sendPacket({ cmd: "pingreq" }).catch(() => {}), 400);
  try {
    const pong = await c.next(8000);
    assert.equal(pong?.cmd, "pingresp", `got ${JSON.stringify(pong)}`);
    const waited = Date.now() - sent;
    console.log(`first PINGRESP after ${waited} ms`);
    assert.ok(waited >= 3000, `the first PINGRESP came after ${waited} ms`);
    // Back within the rate: its pings are answered and it stays connected.
    assert.equal((await c.next(2000))?.cmd, "pingresp");
    assert.equal(c.closed, false);
  } finally {
    clearInterval(pings);
  }
});

Deno.test("with no rate configured a flood passes unthrottled", async () => {
  await using b = await startBroker();
  await using sub = await subscriber(b.port, "flood/#", 0, { clientId: "sub" });
  await using flooder = await RawClient.connect(b.port, 5);
  await flooder.handshake("flooder");
  await flooder.send(publishes("flood/x", 1000, 1024));
  await whenReceived(sub.inbox, 1000, 10000);
  assert.equal(b.broker.metrics.clientsThrottledTotal, 0);
});

Deno.test("max_publish_rate holds a WebSocket publisher too: 300 QoS 1 publishes at 100/s take 2 s, all acknowledged", async () => {
  await using b = await startBroker({
    general: { websocket: true },
    limits: { max_publish_rate: 100, sweep_interval_ms: 50 },
  });
  const ws = b.broker.addresses.find((a) => a.kind === "ws")!;
  await using sub = await subscriber(b.port, "ws/#", 1, { clientId: "sub" });
  await using pub = await connectClient(
    ws.port,
    { clientId: "ws-pub", protocol: "ws", path: "/mqtt" } as Parameters<typeof connectClient>[1],
  );
  await assertPaced(pub, sub.inbox, "ws", "WebSocket");
  assert.ok(b.broker.metrics.clientsThrottledTotal >= 1);
});

Deno.test("max_publish_rate counts packets, not reads: 600 publishes in one write at 200/s take 2 s; the gauge shows the client held, then not once it left", async () => {
  await using b = await startBroker({ limits: { max_publish_rate: 200, sweep_interval_ms: 50 } });
  await using sub = await subscriber(b.port, "tiny/#", 0, { clientId: "sub" });
  const flooder = await RawClient.connect(b.port, 5);
  await flooder.handshake("flooder");
  // ~12 KB: one read of the broker.
  const start = Date.now();
  await flooder.send(publishes("tiny/x", 600, 4));
  await whenReceived(sub.inbox, 300, 5000);
  assert.equal(b.broker.metrics.clientsThrottled, 1);
  const done = await whenReceived(sub.inbox, 600, 10000);
  console.log(`600 in one write: ${done - start} ms`);
  assert.ok(done - start >= 1700, `600 publishes took ${done - start} ms`);
  assert.deepEqual(
    sub.inbox.messages.map((m) => m.payload.replace(/\.+$/, "")),
    Array.from({ length: 600 }, (_, i) => String(i)),
  );

  // Held again, then gone: the gauge does not keep a client that left.
  await flooder.send(publishes("tiny/x", 400, 4));
  await whenReceived(sub.inbox, 601, 5000);
  assert.equal(b.broker.metrics.clientsThrottled, 1);
  await flooder[Symbol.asyncDispose]();
  const deadline = Date.now() + 3000;
  const held = () => b.broker.metrics.clientsThrottled;
  while (held() !== 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal(held(), 0);
  assert.equal(b.broker.metrics.clientsThrottledTotal, 1);
});

Deno.test("max_publish_rate over TLS with client certificates (the default deployment): 300 QoS 1 publishes at 100/s take 2 s", async () => {
  await using b = await startSecureBroker(pki, {
    general: { websocket: false },
    limits: { max_publish_rate: 100, sweep_interval_ms: 50 },
  });
  const tls = { protocol: "mqtts", host: "localhost", ...clientTls(pki, pki.alice) } as const;
  await using sub = await subscriber(b.tlsPort, "tls/#", 1, { ...tls, clientId: "sub" });
  await using pub = await connectClient(b.tlsPort, { ...tls, clientId: "pub" });
  await assertPaced(pub, sub.inbox, "tls", "TLS");
});

Deno.test("publishes pipelined behind a CONNECT under a password check count against max_publish_rate, and what follows is read once they are paid", async () => {
  const passwords = join(dir, "passwords");
  await Deno.writeTextFile(passwords, `dora:${await hashPassword("dora-secret", 1000)}\n`);
  await using b = await startBroker({
    auth: { password_file: passwords, auth_cache_seconds: 0 },
    limits: { max_publish_rate: 100, sweep_interval_ms: 50 },
  });
  await using sub = await subscriber(b.port, "pipe/#", 0, {
    clientId: "sub",
    username: "dora",
    password: "dora-secret",
  });
  const c = await RawClient.connect(b.port, 5);
  const connect = mqttPacket.generate({
    cmd: "connect",
    protocolId: "MQTT",
    protocolVersion: 5,
    clientId: "piped",
    clean: true,
    keepalive: 60,
    username: "dora",
    password: Buffer.from("dora-secret"),
  } as mqttPacket.Packet, { protocolVersion: 5 });
  // 250 publishes wait behind CONNECT while the password is checked: 150 past the burst.
  const start = Date.now();
  await c.send(new Uint8Array(Buffer.concat([connect, Buffer.from(publishes("pipe/a", 250, 4))])));
  await c.expect("connack");
  await whenReceived(sub.inbox, 250, 5000);
  // Read after them: held until the 150 are paid (1.5 s), then 50 more at 100/s.
  await c.send(publishes("pipe/b", 100, 4));
  const done = await whenReceived(sub.inbox, 350, 10000);
  console.log(`350 publishes, 250 pipelined behind CONNECT: ${done - start} ms`);
  assert.ok(done - start >= 1800, `took ${done - start} ms`);
  assert.ok(b.broker.metrics.clientsThrottledTotal >= 1);
  await c[Symbol.asyncDispose]();
});

Deno.test("limits.max_throttled_seconds: a client that keeps sending faster than its rate gets DISCONNECT 0x96 and its will; one within its rate, or over it only in bursts, stays", async () => {
  await using b = await startBroker({
    limits: { max_publish_rate: 100, max_throttled_seconds: 1, sweep_interval_ms: 50 },
  });
  await using sub = await subscriber(b.port, ["will/#", "paced/#"], 0, { clientId: "sub" });
  const wills: string[] = [];
  sub.on("message", (t) => t.startsWith("will/") && wills.push(t));

  // A flood that never lets up.
  const flooder = await RawClient.connect(b.port, 5);
  await flooder.handshake("flooder", 5, {
    will: { topic: "will/flooder", payload: Buffer.from("gone"), qos: 0, retain: false },
  });
  const start = Date.now();
  const flood = flooder.send(publishes("flood/x", 3000, 16)).catch(() => {});
  const disconnected = flooder.expect("disconnect", 5000).then((p) => ({ p, at: Date.now() }));

  // Beside it, a burst of 120 once (20 past the bucket: held 0.2 s), then 50 publishes a second
  // for 3 s: over its rate for a moment only.
  const paced = await RawClient.connect(b.port, 5);
  await paced.handshake("paced");
  await paced.send(publishes("paced/burst", 120, 4));
  for (let i = 0; i < 30; i++) {
    await paced.send(publishes("paced/x", 5, 4));
    await new Promise((r) => setTimeout(r, 100));
  }

  const d = await disconnected;
  assert.equal(d.p.reasonCode, 0x96);
  const after = d.at - start;
  console.log(`flooder disconnected after ${after} ms`);
  assert.ok(after >= 1000, `disconnected after ${after} ms`);
  await flood;
  const deadline = Date.now() + 3000;
  while (wills.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(wills, ["will/flooder"]);
  assert.equal(paced.closed, false, "the paced client was disconnected");
  await paced.sendPacket({ cmd: "pingreq" });
  assert.equal((await paced.next(3000))?.cmd, "pingresp");
  paced.close();
  flooder.close();
});
