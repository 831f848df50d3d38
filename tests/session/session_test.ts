/**
 * Session lifecycle as clients observe it: takeover by the same client id,
 * Clean Start / clean session, Session Expiry Interval (including the cap in
 * [limits] and changes at DISCONNECT), and what a resumed session delivers.
 */
import assert from "node:assert/strict";
import {
  collect,
  connectClient,
  delay,
  type Packet,
  RawClient,
  startBroker,
} from "../helpers/broker.ts";

type Version = 4 | 5;
type Decoded = Packet & Record<string, unknown>;

interface Opts {
  clean?: boolean;
  /** Session Expiry Interval (MQTT 5); absent means 0. */
  expiry?: number;
  version?: Version;
  properties?: Record<string, unknown>;
}

/** Connects a raw client; returns it with its CONNACK. */
async function connectRaw(
  port: number,
  clientId: string,
  opts: Opts = {},
): Promise<{ c: RawClient; ack: Decoded }> {
  const version = opts.version ?? 5;
  const c = await RawClient.connect(port, version);
  const properties = { ...opts.properties };
  if (opts.expiry !== undefined) properties.sessionExpiryInterval = opts.expiry;
  const extra: Record<string, unknown> = { clean: opts.clean ?? true };
  if (version === 5 && Object.keys(properties).length > 0) extra.properties = properties;
  const ack = await c.handshake(clientId, version, extra);
  return { c, ack };
}

let nextPid = 1;

/** Subscribes a raw client to `filter` and checks the broker granted `qos`. */
async function subscribeRaw(c: RawClient, filter: string, qos: 0 | 1 | 2, version: Version = 5) {
  const messageId = nextPid++;
  await c.sendPacket(
    { cmd: "subscribe", messageId, subscriptions: [{ topic: filter, qos }] },
    version,
  );
  const ack = await c.expect("suback");
  assert.equal(ack.messageId, messageId);
  assert.deepEqual(ack.granted, [qos]);
}

/** Ends a raw client with a normal DISCONNECT and waits for the close. */
async function disconnectRaw(c: RawClient, version: Version = 5, properties?: object) {
  await c.sendPacket({ cmd: "disconnect", reasonCode: 0, properties }, version);
  await c.expectClosed();
  await c[Symbol.asyncDispose]();
}

/** Reads the next PUBLISH on a raw client and completes its QoS flow. */
async function receiveRaw(c: RawClient, version: Version = 5): Promise<Decoded> {
  const p = await c.expect("publish");
  const messageId = p.messageId as number;
  if (p.qos === 1) await c.sendPacket({ cmd: "puback", messageId }, version);
  if (p.qos === 2) {
    await c.sendPacket({ cmd: "pubrec", messageId }, version);
    await c.expect("pubrel");
    await c.sendPacket({ cmd: "pubcomp", messageId }, version);
  }
  return p;
}

const text = (p: Decoded) => new TextDecoder().decode(p.payload as Uint8Array);

/**
 * Proves `c` has no subscription matching `topic`: it subscribes to a marker
 * topic, a publisher sends to `topic` then to the marker, and the first thing
 * `c` receives must be the marker.
 */
async function assertNotSubscribed(
  port: number,
  c: RawClient,
  topic: string,
  version: Version = 5,
) {
  await subscribeRaw(c, "marker", 1, version);
  await using pub = await connectClient(port, { clientId: "marker-pub" });
  await pub.publishAsync(topic, "stale", { qos: 1 });
  await pub.publishAsync("marker", "marker", { qos: 1 });
  const first = await receiveRaw(c, version);
  assert.equal(first.topic, "marker", `still subscribed: got ${first.topic}`);
}

Deno.test("takeover: the old connection gets DISCONNECT 0x8E and the session continues on the new one", async () => {
  await using b = await startBroker();
  // Receive Maximum 1 keeps one message in flight and the next one queued.
  const { c: old } = await connectRaw(b.port, "dev", {
    expiry: 60,
    properties: { receiveMaximum: 1 },
  });
  await using _old = old;
  await subscribeRaw(old, "t/#", 1);
  await using pub = await connectClient(b.port, { clientId: "pub" });
  await pub.publishAsync("t/1", "one", { qos: 1 });
  await pub.publishAsync("t/2", "two", { qos: 1 });
  const first = await old.expect("publish");
  assert.equal(text(first), "one"); // never acknowledged by the old connection

  const { c: fresh, ack } = await connectRaw(b.port, "dev", { clean: false, expiry: 60 });
  await using _fresh = fresh;
  // [MQTT-3.1.4-3] the existing connection is told 0x8E (Session taken over) and closed.
  const d = await old.expect("disconnect");
  assert.equal(d.reasonCode, 0x8e);
  await old.expectClosed();
  // [MQTT-3.2.2-3] Clean Start 0 with a stored session: Session Present 1.
  assert.equal(ack.sessionPresent, true);
  // [MQTT-4.4.0-1] the unacknowledged message is resent with DUP, then the queued one follows.
  const resent = await receiveRaw(fresh);
  assert.equal(text(resent), "one");
  assert.equal(resent.dup, true);
  assert.equal(text(await receiveRaw(fresh)), "two");
  // The subscription moved with the session.
  await pub.publishAsync("t/3", "three", { qos: 1 });
  assert.equal(text(await receiveRaw(fresh)), "three");
});

Deno.test("3.1.1 takeover closes the old connection without a DISCONNECT packet", async () => {
  await using b = await startBroker();
  const { c: old } = await connectRaw(b.port, "dev311", { version: 4, clean: false });
  await using _old = old;
  const { c: fresh, ack } = await connectRaw(b.port, "dev311", { version: 4, clean: false });
  await using _fresh = fresh;
  assert.equal(ack.sessionPresent, true);
  // 3.1.1 [MQTT-3.1.4-2]: the existing client is disconnected; 3.1.1 has no server DISCONNECT.
  assert.equal(await old.next(), null);
  await fresh.send([0xc0, 0x00]);
  await fresh.expect("pingresp");
});

Deno.test("Clean Start 1 discards the old session: Session Present 0 and no subscriptions", async () => {
  await using b = await startBroker();
  const { c: first } = await connectRaw(b.port, "cs", { expiry: 60 });
  await subscribeRaw(first, "cs/#", 1);
  await disconnectRaw(first);

  const { c: again, ack } = await connectRaw(b.port, "cs", { clean: true, expiry: 60 });
  await using _again = again;
  // [MQTT-3.1.2-4] Clean Start 1 discards any existing session; [MQTT-3.2.2-2] Session Present 0.
  assert.equal(ack.sessionPresent, false);
  await assertNotSubscribed(b.port, again, "cs/x");
});

Deno.test("Clean Start 1 against a live connection takes it over and starts a new session", async () => {
  await using b = await startBroker();
  const { c: old } = await connectRaw(b.port, "live", { expiry: 60 });
  await using _old = old;
  await subscribeRaw(old, "live/#", 1);
  const { c: fresh, ack } = await connectRaw(b.port, "live", { clean: true });
  await using _fresh = fresh;
  assert.equal((await old.expect("disconnect")).reasonCode, 0x8e);
  assert.equal(ack.sessionPresent, false);
  await assertNotSubscribed(b.port, fresh, "live/x");
});

Deno.test("a persistent session keeps subscriptions and queues QoS 1 and 2 (not QoS 0) while away", async () => {
  await using b = await startBroker();
  const { c: first } = await connectRaw(b.port, "away", { expiry: 60 });
  await subscribeRaw(first, "s/#", 2);
  await disconnectRaw(first);

  await using pub = await connectClient(b.port, { clientId: "pub" });
  await pub.publishAsync("s/q0", "zero", { qos: 0 });
  await pub.publishAsync("s/q1", "one", { qos: 1 });
  await pub.publishAsync("s/q2", "two", { qos: 2 });

  const { c: back, ack } = await connectRaw(b.port, "away", { clean: false, expiry: 60 });
  await using _back = back;
  // [MQTT-3.1.2-23] the session outlived the connection; [MQTT-3.2.2-3] Session Present 1.
  assert.equal(ack.sessionPresent, true);
  const q1 = await receiveRaw(back);
  assert.deepEqual([q1.topic, q1.qos], ["s/q1", 1]);
  const q2 = await receiveRaw(back);
  assert.deepEqual([q2.topic, q2.qos], ["s/q2", 2]);
  // The subscription is still there without subscribing again, and QoS 0 was not kept.
  await pub.publishAsync("s/live", "live", { qos: 1 });
  assert.equal((await receiveRaw(back)).topic, "s/live");
});

Deno.test("Session Expiry Interval 0 ends the session when the connection closes", async () => {
  await using b = await startBroker();
  const { c: first } = await connectRaw(b.port, "brief");
  await subscribeRaw(first, "b/#", 1);
  first.close(); // not even a DISCONNECT: the session still ends [MQTT-3.1.2-23]
  await first[Symbol.asyncDispose]();
  const { c: again, ack } = await connectRaw(b.port, "brief", { clean: false });
  await using _again = again;
  assert.equal(ack.sessionPresent, false);
  await assertNotSubscribed(b.port, again, "b/x");
});

Deno.test("a session is gone after its Session Expiry Interval", async () => {
  await using b = await startBroker();
  const { c: first } = await connectRaw(b.port, "expires", { expiry: 1 });
  await subscribeRaw(first, "e/#", 1);
  await disconnectRaw(first);
  // Reconnecting earlier would resume it, so the test can only wait past 1 s (plus the sweep).
  await delay(2000);
  const { c: again, ack } = await connectRaw(b.port, "expires", { clean: false, expiry: 60 });
  await using _again = again;
  assert.equal(ack.sessionPresent, false);
  await assertNotSubscribed(b.port, again, "e/x");
});

Deno.test("DISCONNECT changing Session Expiry Interval from 0 is a protocol error (0x82)", async () => {
  await using b = await startBroker();
  await using watcher = await connectClient(b.port, { clientId: "watcher" });
  const { c } = await connectRaw(b.port, "zero");
  await using _c = c;
  await c.sendPacket({
    cmd: "disconnect",
    reasonCode: 0,
    properties: { sessionExpiryInterval: 60 },
  });
  // Section 3.14.2.2.2: a non-zero interval after 0 at CONNECT is a Protocol Error (0x82).
  const d = await c.expect("disconnect");
  assert.equal(d.reasonCode, 0x82);
  await c.expectClosed();
  // The broker and its other clients carry on.
  const inbox = collect(watcher);
  await watcher.subscribeAsync("still/here", { qos: 1 });
  await watcher.publishAsync("still/here", "yes", { qos: 1 });
  assert.equal((await inbox.next()).payload, "yes");
  // And the session was not kept with the interval the DISCONNECT tried to set.
  const { c: again, ack } = await connectRaw(b.port, "zero", { clean: false });
  await using _again = again;
  assert.equal(ack.sessionPresent, false);
});

Deno.test("with limits.max_session_expiry_interval = 0, a client that asked for more may name an interval at DISCONNECT: a normal disconnection, will discarded", async () => {
  // The rule of section 3.14.2.2.2 is about the value in CONNECT: this client asked for 100 and
  // was granted 0.
  await using b = await startBroker({ limits: { max_session_expiry_interval: 0 } });
  await using watcher = await connectClient(b.port, { clientId: "will-watch" });
  const wills = collect(watcher);
  await watcher.subscribeAsync("gone/+", { qos: 1 });
  const c = await RawClient.connect(b.port, 5);
  const ack = await c.handshake("asked", 5, {
    clean: true,
    properties: { sessionExpiryInterval: 100 },
    will: { topic: "gone/asked", payload: "will", qos: 1, retain: false },
  });
  assert.equal((ack.properties as Record<string, unknown>)?.sessionExpiryInterval, 0);
  await c.sendPacket({
    cmd: "disconnect",
    reasonCode: 0,
    properties: { sessionExpiryInterval: 50 },
  });
  // Closed without a DISCONNECT 0x82 from the broker.
  assert.equal(await c.next(), null);
  await c[Symbol.asyncDispose]();
  // A normal disconnection deletes the will [MQTT-3.14.4-3]; the marker arrives alone.
  await watcher.publishAsync("gone/marker", "m", { qos: 1 });
  const first = await wills.next();
  assert.equal(first.topic, "gone/marker");
  // The granted 0 stands: no session was kept.
  const { c: again, ack: againAck } = await connectRaw(b.port, "asked", { clean: false });
  await using _again = again;
  assert.equal(againAck.sessionPresent, false);
});

Deno.test("DISCONNECT may lower a non-zero Session Expiry Interval to 0, ending the session", async () => {
  await using b = await startBroker();
  const { c: first } = await connectRaw(b.port, "lower", { expiry: 60 });
  await subscribeRaw(first, "l/#", 1);
  await disconnectRaw(first, 5, { sessionExpiryInterval: 0 });
  const { c: again, ack } = await connectRaw(b.port, "lower", { clean: false, expiry: 60 });
  await using _again = again;
  assert.equal(ack.sessionPresent, false);
  await assertNotSubscribed(b.port, again, "l/x");
});

Deno.test("3.1.1 clean session 0 keeps the session and its queued messages", async () => {
  await using b = await startBroker();
  const { c: first, ack: firstAck } = await connectRaw(b.port, "keep311", {
    version: 4,
    clean: false,
  });
  assert.equal(firstAck.sessionPresent, false);
  await subscribeRaw(first, "k/#", 1, 4);
  await disconnectRaw(first, 4);
  await using pub = await connectClient(b.port, { clientId: "pub", protocolVersion: 4 });
  await pub.publishAsync("k/1", "kept", { qos: 1 });

  const { c: back, ack } = await connectRaw(b.port, "keep311", { version: 4, clean: false });
  await using _back = back;
  // 3.1.1 [MQTT-3.2.2-2]: session present 1 when a stored session is resumed.
  assert.equal(ack.sessionPresent, true);
  const m = await receiveRaw(back, 4);
  assert.deepEqual([m.topic, text(m)], ["k/1", "kept"]);
});

Deno.test("3.1.1 clean session 1 leaves nothing behind and discards a stored session", async () => {
  await using b = await startBroker();
  // A clean session lasts only as long as its connection (3.1.1 [MQTT-3.1.2-6]).
  const { c: temp } = await connectRaw(b.port, "c311", { version: 4, clean: true });
  await subscribeRaw(temp, "c/#", 1, 4);
  await disconnectRaw(temp, 4);
  const { c: probe, ack: probeAck } = await connectRaw(b.port, "c311", {
    version: 4,
    clean: false,
  });
  assert.equal(probeAck.sessionPresent, false);
  await subscribeRaw(probe, "c/#", 1, 4);
  await disconnectRaw(probe, 4);

  // A stored session is discarded by a clean session 1 connection (3.1.1 [MQTT-3.1.2-6]).
  const { c: clean, ack: cleanAck } = await connectRaw(b.port, "c311", { version: 4, clean: true });
  await using _clean = clean;
  // 3.1.1 [MQTT-3.2.2-1]: clean session 1 always gets session present 0.
  assert.equal(cleanAck.sessionPresent, false);
  await assertNotSubscribed(b.port, clean, "c/x", 4);
});

Deno.test("limits.max_session_expiry_interval caps the interval and CONNACK reports the grant", async () => {
  await using b = await startBroker({ limits: { max_session_expiry_interval: 1 } });
  const { c: first, ack } = await connectRaw(b.port, "capped", { expiry: 100 });
  // Section 3.2.2.3.2: CONNACK tells the client the Session Expiry Interval used instead.
  assert.equal((ack.properties as Record<string, unknown>)?.sessionExpiryInterval, 1);
  await subscribeRaw(first, "cap/#", 1);
  await disconnectRaw(first);
  // The granted 1 s applies, not the 100 s asked for.
  await delay(2000);
  const { c: again, ack: againAck } = await connectRaw(b.port, "capped", {
    clean: false,
    expiry: 1,
  });
  await using _again = again;
  assert.equal(againAck.sessionPresent, false);
  // Asking no more than the cap: no Session Expiry Interval in CONNACK (the client's value stands).
  assert.equal((againAck.properties as Record<string, unknown>)?.sessionExpiryInterval, undefined);
  await assertNotSubscribed(b.port, again, "cap/x");
});
