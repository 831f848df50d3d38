/**
 * Will messages as subscribers observe them: when a will is published, when it
 * is not, what it carries, and how the Will Delay Interval interacts with
 * reconnects, takeover and session expiry. Will senders are raw sockets so a
 * test decides exactly how the connection ends.
 */
import assert from "node:assert/strict";
import {
  connectClient,
  delay,
  type Inbox,
  RawClient,
  startBroker,
  subscriber,
} from "../helpers/broker.ts";

interface WillSpec {
  topic: string;
  payload: string;
  qos?: 0 | 1 | 2;
  retain?: boolean;
  properties?: Record<string, unknown>;
}

/** Connects a raw client that carries `will`; `extra` adds CONNECT fields (keepalive, properties...). */
async function connectWithWill(
  port: number,
  clientId: string,
  will: WillSpec,
  extra: Record<string, unknown> = {},
  version: 4 | 5 = 5,
): Promise<RawClient> {
  const c = await RawClient.connect(port, version);
  await c.handshake(clientId, version, {
    will: { qos: 0, retain: false, ...will },
    ...extra,
  });
  return c;
}

/**
 * A will client whose will waits `delay` seconds (Will Delay Interval), in a
 * session that outlives the connection by `sessionExpiry` seconds (default 30).
 */
function connectWithDelayedWill(
  port: number,
  clientId: string,
  will: WillSpec & { delay: number; sessionExpiry?: number },
): Promise<RawClient> {
  const { delay, sessionExpiry = 30, ...spec } = will;
  return connectWithWill(
    port,
    clientId,
    { ...spec, properties: { willDelayInterval: delay } },
    { properties: { sessionExpiryInterval: sessionExpiry } },
  );
}

/** Connects `clientId` again with Clean Start 0 (session expiry 30 s); `ack` is its CONNACK. */
async function resume(port: number, clientId: string) {
  const c = await RawClient.connect(port);
  const ack = await c.handshake(clientId, 5, {
    clean: false,
    properties: { sessionExpiryInterval: 30 },
  });
  return Object.assign(c, { ack });
}

/** A subscriber to every will topic at QoS 2. */
function watcher(port: number) {
  return subscriber(port, "will/#", 2, { clientId: "watcher" });
}

/**
 * Proves no will was published: after the will client's connection is gone, a
 * marker published on the same topic must be the first thing the watcher sees
 * (a will published at close would have been routed before it).
 */
async function assertNoWillBefore(
  port: number,
  topic: string,
  inbox: Inbox,
): Promise<void> {
  await using pub = await connectClient(port, { clientId: "marker" });
  await pub.publishAsync(topic, "marker", { qos: 1 });
  const first = await inbox.next();
  assert.equal(first.payload, "marker", "a will was published although it should not be");
}

Deno.test("will is published when the client's socket closes without DISCONNECT", async () => {
  await using b = await startBroker();
  await using w = await watcher(b.port);
  const c = await connectWithWill(b.port, "dies", { topic: "will/dies", payload: "gone", qos: 1 });
  // [MQTT-3.1.2-8] closing the network connection without DISCONNECT 0x00 publishes the will.
  await c[Symbol.asyncDispose]();
  const m = await w.inbox.next();
  assert.equal(m.topic, "will/dies");
  assert.equal(m.payload, "gone");
  assert.equal(m.packet.qos, 1);
});

Deno.test("will is published when the broker drops a client for keep-alive timeout", async () => {
  await using b = await startBroker();
  await using w = await watcher(b.port);
  const started = Date.now();
  // Keep alive 1 s and then silence: the broker gives up after 1.5 s [MQTT-3.1.2-22].
  await using c = await connectWithWill(
    b.port,
    "silent",
    { topic: "will/silent", payload: "timed out" },
    { keepalive: 1 },
  );
  const d = await c.expect("disconnect", 5000);
  assert.equal(d.reasonCode, 0x8d, "DISCONNECT should carry Keep Alive timeout (0x8D)");
  await c.expectClosed();
  const m = await w.inbox.next();
  assert.equal(m.payload, "timed out");
  assert.ok(Date.now() - started >= 1400, "the connection was dropped before 1.5 x keep alive");
});

// [MQTT-3.1.2-8] only DISCONNECT 0x00 deletes the will: 0x04 asks for it, and a client reporting
// an error (0x80) keeps it too.
for (const [code, name] of [[0x04, "Disconnect with Will Message"], [0x80, "an error"]] as const) {
  Deno.test(`will is published after DISCONNECT with 0x${code.toString(16)} (${name})`, async () => {
    await using b = await startBroker();
    await using w = await watcher(b.port);
    const topic = `will/rc${code}`;
    await using c = await connectWithWill(b.port, `rc${code}`, { topic, payload: `rc ${code}` });
    await c.sendPacket({ cmd: "disconnect", reasonCode: code });
    await c.expectClosed();
    const m = await w.inbox.next();
    assert.equal(m.topic, topic);
    assert.equal(m.payload, `rc ${code}`);
  });
}

Deno.test("will is not published after a normal DISCONNECT (0x00)", async () => {
  await using b = await startBroker();
  await using w = await watcher(b.port);
  await using c = await connectWithWill(b.port, "polite", { topic: "will/polite", payload: "x" });
  // [MQTT-3.14.4-3] DISCONNECT 0x00 discards the will without publishing it.
  await c.sendPacket({ cmd: "disconnect", reasonCode: 0 });
  await c.expectClosed();
  await assertNoWillBefore(b.port, "will/polite", w.inbox);
});

Deno.test("3.1.1: will is published on a dropped socket and not after DISCONNECT", async () => {
  await using b = await startBroker();
  await using w = await watcher(b.port);
  const dropped = await connectWithWill(
    b.port,
    "v4-drop",
    { topic: "will/v4", payload: "dropped" },
    {},
    4,
  );
  await dropped[Symbol.asyncDispose]();
  assert.equal((await w.inbox.next()).payload, "dropped");

  await using polite = await connectWithWill(
    b.port,
    "v4-polite",
    { topic: "will/v4", payload: "polite" },
    {},
    4,
  );
  // 3.1.1 [MQTT-3.14.4-3]: on DISCONNECT the will is discarded.
  await polite.sendPacket({ cmd: "disconnect" }, 4);
  await polite.expectClosed();
  await assertNoWillBefore(b.port, "will/v4", w.inbox);
});

Deno.test("will properties reach the subscriber unchanged", async () => {
  await using b = await startBroker();
  await using w = await watcher(b.port);
  const c = await connectWithWill(b.port, "props", {
    topic: "will/props",
    payload: '{"state":"offline"}',
    qos: 2,
    properties: {
      payloadFormatIndicator: true,
      messageExpiryInterval: 120,
      contentType: "application/json",
      responseTopic: "reply/here",
      correlationData: Buffer.from([1, 2, 3]),
      userProperties: { site: "north", tag: ["a", "b"] },
    },
  });
  await c[Symbol.asyncDispose]();
  const m = await w.inbox.next();
  assert.equal(m.payload, '{"state":"offline"}');
  assert.equal(m.packet.qos, 2);
  const p = m.packet.properties ?? {};
  // [MQTT-3.3.2-4] the Payload Format Indicator is passed on unaltered.
  assert.equal(p.payloadFormatIndicator, true);
  assert.equal(p.contentType, "application/json");
  assert.equal(p.responseTopic, "reply/here");
  assert.deepEqual([...(p.correlationData ?? [])], [1, 2, 3]);
  // [MQTT-3.3.2-17] user properties are forwarded, in order, duplicates kept.
  assert.deepEqual({ ...p.userProperties }, { site: "north", tag: ["a", "b"] });
  // [MQTT-3.3.2-6] the expiry forwarded is what is left of the interval: at most 120, not less than 118.
  const expiry = p.messageExpiryInterval ?? -1;
  assert.ok(expiry <= 120 && expiry >= 118, `message expiry ${expiry}`);
});

for (const responseTopic of ["reply/#", "reply/+/x", ""]) {
  Deno.test(`a will with Response Topic "${responseTopic}" is refused with CONNACK 0x82 and never published [MQTT-3.3.2-13, MQTT-3.3.2-14]`, async () => {
    await using b = await startBroker();
    await using w = await watcher(b.port);
    await using c = await RawClient.connect(b.port, 5);
    await c.sendPacket({
      cmd: "connect",
      protocolId: "MQTT",
      protocolVersion: 5,
      clientId: "bad-rt",
      clean: true,
      keepalive: 60,
      will: {
        topic: "will/bad-rt",
        payload: "gone",
        qos: 0,
        retain: false,
        properties: { responseTopic },
      },
    });
    const ack = await c.expect("connack");
    // Accepted, the will would reach every will/# subscriber carrying a Response Topic that
    // the subscriber must treat as a protocol error.
    assert.equal(ack.reasonCode, 0x82);
    await c.expectClosed();
    await assertNoWillBefore(b.port, "will/bad-rt", w.inbox);
  });
}

Deno.test("a will with Retain set becomes the retained message; one without does not", async () => {
  await using b = await startBroker();
  await using w = await watcher(b.port);
  const kept = await connectWithWill(b.port, "kept", {
    topic: "will/kept",
    payload: "retained will",
    qos: 1,
    retain: true,
  });
  const plain = await connectWithWill(b.port, "plain", {
    topic: "will/plain",
    payload: "plain will",
    qos: 1,
  });
  await kept[Symbol.asyncDispose]();
  await plain[Symbol.asyncDispose]();
  // Both reach the live subscriber first, so both have been routed.
  const live = [await w.inbox.next(), await w.inbox.next()].map((m) => m.payload).sort();
  assert.deepEqual(live, ["plain will", "retained will"]);

  await using late = await subscriber(b.port, "will/#", 1, { clientId: "late" });
  // [MQTT-3.1.2-15] Will Retain 1: published as a retained message;
  // [MQTT-3.1.2-14] Will Retain 0: not retained, so the late subscriber gets only one.
  const m = await late.inbox.next();
  assert.equal(m.topic, "will/kept");
  assert.equal(m.payload, "retained will");
  assert.equal(m.packet.retain, true);
  await late.inbox.none(200);
});

Deno.test("Will Delay Interval of 2 s holds the will back until the delay has passed", async () => {
  await using b = await startBroker();
  await using w = await watcher(b.port);
  const c = await connectWithDelayedWill(b.port, "delayed", {
    topic: "will/delayed",
    payload: "late",
    delay: 2,
  });
  const closedAt = Date.now();
  await c[Symbol.asyncDispose]();
  // [MQTT-3.1.3-9] the server delays publishing the will until the delay has passed.
  await w.inbox.none(1500);
  const m = await w.inbox.next(3000);
  const waited = Date.now() - closedAt;
  assert.equal(m.payload, "late");
  assert.ok(waited >= 1900, `will came after ${waited} ms, before the 2 s delay`);
});

Deno.test("reconnecting with Clean Start 0 within the Will Delay Interval cancels the will", async () => {
  await using b = await startBroker();
  await using w = await watcher(b.port);
  const c = await connectWithDelayedWill(b.port, "blip", {
    topic: "will/blip",
    payload: "should not appear",
    delay: 1,
  });
  await c[Symbol.asyncDispose]();
  await delay(200);
  await using again = await resume(b.port, "blip");
  assert.equal(again.ack.sessionPresent, true);
  // [MQTT-3.1.3-9] a new connection to the session before the delay: the will is never sent.
  await w.inbox.none(1800);
  assert.deepEqual(w.inbox.messages.map((m) => m.payload), []);
});

Deno.test("reconnecting with Clean Start 1 within the Will Delay Interval publishes the will at once", async () => {
  await using b = await startBroker();
  await using w = await watcher(b.port);
  const c = await connectWithDelayedWill(b.port, "restart", {
    topic: "will/restart",
    payload: "old session ended",
    delay: 5,
  });
  await c[Symbol.asyncDispose]();
  await delay(100);
  const reconnectedAt = Date.now();
  await using again = await RawClient.connect(b.port);
  const ack = await again.handshake("restart", 5, { clean: true });
  assert.equal(ack.sessionPresent, false);
  // Clean Start 1 ends the old session, and a will waits at most until its session ends
  // [MQTT-3.1.2-8]; it is not a reconnect "to this Session" that would cancel it [MQTT-3.1.3-9].
  const m = await w.inbox.next(2000);
  assert.equal(m.payload, "old session ended");
  assert.ok(Date.now() - reconnectedAt < 1500, "the will waited for its delay");
});

Deno.test("a will is published when the session expires before the Will Delay Interval", async () => {
  await using b = await startBroker();
  await using w = await watcher(b.port);
  const c = await connectWithDelayedWill(b.port, "short", {
    topic: "will/short",
    payload: "session over",
    delay: 5,
    sessionExpiry: 1,
  });
  const closedAt = Date.now();
  await c[Symbol.asyncDispose]();
  // [MQTT-3.1.2-8] the will goes out when the delay elapses or the session ends, whichever is first.
  await w.inbox.none(700);
  const m = await w.inbox.next(3000);
  const waited = Date.now() - closedAt;
  assert.equal(m.payload, "session over");
  assert.ok(waited < 3000, `will came after ${waited} ms; the session ended after 1 s`);
});

Deno.test("takeover publishes the old connection's will when it has no delay", async () => {
  await using b = await startBroker();
  await using w = await watcher(b.port);
  await using old = await connectWithWill(
    b.port,
    "twin",
    { topic: "will/twin", payload: "taken over" },
    { properties: { sessionExpiryInterval: 30 } },
  );
  await using _fresh = await resume(b.port, "twin");
  const d = await old.expect("disconnect");
  assert.equal(d.reasonCode, 0x8e);
  // [MQTT-3.1.4-3] the old connection's will is published per 3.1.2.5; with no delay, at once.
  assert.equal((await w.inbox.next()).payload, "taken over");
});

Deno.test("takeover with Clean Start 0 cancels the old connection's delayed will", async () => {
  await using b = await startBroker();
  await using w = await watcher(b.port);
  await using old = await connectWithDelayedWill(b.port, "twin", {
    topic: "will/twin",
    payload: "should not appear",
    delay: 1,
  });
  await using fresh = await resume(b.port, "twin");
  assert.equal(fresh.ack.sessionPresent, true);
  assert.equal((await old.expect("disconnect")).reasonCode, 0x8e);
  await old.expectClosed();
  // The new connection arrived before the delay elapsed [MQTT-3.1.3-9].
  await w.inbox.none(1800);
  assert.deepEqual(w.inbox.messages.map((m) => m.payload), []);
});
