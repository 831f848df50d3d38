/**
 * Subscriptions end to end: wildcard matching, subscription options (No Local,
 * Retain As Published, Retain Handling), Subscription Identifiers, overlapping
 * and replaced subscriptions, SUBACK/UNSUBACK reason codes and topic limits,
 * driven through real sockets with MQTT.js and a raw client.
 *
 * Negative checks ("X is not delivered") publish a marker message after X from
 * the same publisher: delivery to one subscriber keeps publish order, so once
 * the marker has arrived, X would have arrived before it.
 */
import assert from "node:assert/strict";
import type { MqttClient } from "mqtt";
import { Message } from "../../src/protocol/message.ts";
import {
  collect,
  connectClient,
  type Inbox,
  RawClient,
  type Received,
  receivedBefore,
  startBroker,
  subscriber,
} from "../helpers/broker.ts";

const MARKER = "end";

/** The Subscription Identifiers of a received PUBLISH, sorted ([] for none). */
function subIds(m: Received): number[] {
  const v = m.packet.properties?.subscriptionIdentifier;
  if (v === undefined) return [];
  return (Array.isArray(v) ? [...v] : [v]).sort((a, b) => a - b);
}

function topicsOf(ms: Received[]): string[] {
  return ms.map((m) => m.topic);
}

/** Publishes each topic (payload = topic) at QoS 1, in order, then the marker. */
async function publishAll(pub: MqttClient, topics: string[], qos: 0 | 1 | 2 = 1): Promise<void> {
  for (const t of topics) await pub.publishAsync(t, t, { qos });
  await pub.publishAsync(MARKER, "", { qos });
}

/** Raw SUBSCRIBE; returns the SUBACK codes. */
async function rawSubscribe(
  c: RawClient,
  messageId: number,
  subscriptions: Record<string, unknown>[],
  version: 4 | 5 = 5,
): Promise<number[]> {
  await c.sendPacket({ cmd: "subscribe", messageId, subscriptions }, version);
  const ack = await c.expect("suback");
  assert.equal(ack.messageId, messageId);
  return ack.granted as number[];
}

const VERSIONS = [[4, "MQTT 3.1.1"], [5, "MQTT 5"]] as const;

// ---- wildcard matching -------------------------------------------------------

for (const [version, label] of VERSIONS) {
  Deno.test(`${label}: "+" matches exactly one level, "#" matches the parent level and everything below`, async () => {
    await using b = await startBroker();
    await using plus = await connectClient(b.port, { clientId: "plus", protocolVersion: version });
    await using hash = await connectClient(b.port, { clientId: "hash", protocolVersion: version });
    await using all = await connectClient(b.port, { clientId: "all", protocolVersion: version });
    const plusIn = collect(plus);
    const hashIn = collect(hash);
    const allIn = collect(all);
    await plus.subscribeAsync(["sport/+", MARKER], { qos: 1 });
    await hash.subscribeAsync(["sport/tennis/#", MARKER], { qos: 1 });
    await all.subscribeAsync("#", { qos: 1 });
    await using pub = await connectClient(b.port, { clientId: "pub", protocolVersion: version });
    const topics = [
      "sport",
      "sport/",
      "sport/tennis",
      "sport/tennis/player1",
      "sport/tennis/player1/ranking",
      "sports/tennis",
      "/sport",
    ];
    await publishAll(pub, topics);
    // "sport/+" does not match "sport" but matches "sport/" (an empty level counts) [4.7.1.2].
    assert.deepEqual(topicsOf(await receivedBefore(plusIn)), ["sport/", "sport/tennis"]);
    // "sport/tennis/#" matches "sport/tennis" itself and every level below it [4.7.1.2].
    assert.deepEqual(topicsOf(await receivedBefore(hashIn)), [
      "sport/tennis",
      "sport/tennis/player1",
      "sport/tennis/player1/ranking",
    ]);
    // "#" on its own matches every topic that does not start with "$".
    assert.deepEqual(topicsOf(await receivedBefore(allIn)), topics);
  });
}

// Clients cannot produce "$" topics: the broker answers a PUBLISH to one with
// 0x87 and drops it, and refuses a will whose topic starts with "$". The only
// producer of "$" topics is the broker itself (e.g. $SYS statistics), and it
// publishes through the router, so this test does the same; the subscribers
// are still real clients on real sockets.
Deno.test('topics starting with "$" are not matched by "#" or "+/..." but are matched by "$SYS/#" [MQTT-4.7.2-1]', async () => {
  await using b = await startBroker();
  const names = ["#", "+/broker/#", "+/+/+", "$SYS/#", "$SYS/+/uptime"] as const;
  const clients: (MqttClient & AsyncDisposable)[] = [];
  try {
    const inboxes: Inbox[] = [];
    for (const [i, filter] of names.entries()) {
      const c = await connectClient(b.port, { clientId: `s${i}` });
      clients.push(c);
      inboxes.push(collect(c));
      await c.subscribeAsync([filter, MARKER], { qos: 0 });
    }
    const publish = (topic: string) => {
      const bytes = new TextEncoder().encode(topic);
      b.broker.router.publish(new Message(topic, bytes, bytes, 0, false, null, 0, ""));
    };
    publish("$SYS/broker/uptime");
    publish(MARKER);
    const got = await Promise.all(inboxes.map((i) => receivedBefore(i)));
    assert.deepEqual(got.map(topicsOf), [
      [],
      [],
      [],
      ["$SYS/broker/uptime"],
      ["$SYS/broker/uptime"],
    ]);
  } finally {
    for (const c of clients) await c[Symbol.asyncDispose]();
  }
});

// ---- granted QoS ---------------------------------------------------------------

for (const [version, label] of VERSIONS) {
  Deno.test(`${label}: SUBACK grants the QoS requested for each filter, in order [MQTT-3.8.4-7, MQTT-3.9.3-1]`, async () => {
    await using b = await startBroker();
    await using c = await RawClient.connect(b.port, version);
    await c.handshake("granted", version);
    const granted = await rawSubscribe(c, 42, [
      { topic: "q/2", qos: 2 },
      { topic: "q/0", qos: 0 },
      { topic: "q/1", qos: 1 },
    ], version);
    assert.deepEqual(granted, [2, 0, 1]);
  });
}

Deno.test("a message is delivered at the lower of its own QoS and the subscription's QoS [MQTT-3.8.4-8]", async () => {
  await using b = await startBroker();
  await using sub = await connectClient(b.port, { clientId: "sub" });
  const inbox = collect(sub);
  await sub.subscribeAsync({ "low/sub": { qos: 1 }, "high/sub": { qos: 2 }, [MARKER]: { qos: 2 } });
  await using pub = await connectClient(b.port, { clientId: "pub" });
  await pub.publishAsync("low/sub", "x", { qos: 2 });
  await pub.publishAsync("high/sub", "y", { qos: 1 });
  await pub.publishAsync(MARKER, "", { qos: 2 });
  const got = await receivedBefore(inbox);
  assert.deepEqual(got.map((m) => [m.topic, m.packet.qos]), [["low/sub", 1], ["high/sub", 1]]);
});

// ---- No Local ----------------------------------------------------------------

Deno.test("No Local: a client does not get its own messages back, but gets other clients' messages [MQTT-3.8.3-3]", async () => {
  await using b = await startBroker();
  await using me = await connectClient(b.port, { clientId: "me" });
  const inbox = collect(me);
  await me.subscribeAsync("chat", { qos: 1, nl: true });
  await me.subscribeAsync("echo", { qos: 1, nl: false });
  await using other = await connectClient(b.port, { clientId: "other" });
  // Each publishAsync resolves on PUBACK, after the broker routed the message,
  // so the three arrive (or not) in this order.
  await me.publishAsync("chat", "mine", { qos: 1 });
  await me.publishAsync("echo", "mine too", { qos: 1 });
  await other.publishAsync("chat", "theirs", { qos: 1 });
  const first = await inbox.next();
  const second = await inbox.next();
  assert.deepEqual([first.topic, first.payload], ["echo", "mine too"]);
  assert.deepEqual([second.topic, second.payload], ["chat", "theirs"]);
});

// ---- Retain As Published -------------------------------------------------------

Deno.test("Retain As Published keeps the RETAIN flag on forwarded messages; without it the flag is cleared [MQTT-3.3.1-12, MQTT-3.3.1-13]", async () => {
  await using b = await startBroker();
  await using keep = await connectClient(b.port, { clientId: "keep" });
  await using clear = await connectClient(b.port, { clientId: "clear" });
  const keepIn = collect(keep);
  const clearIn = collect(clear);
  await keep.subscribeAsync("rap/t", { qos: 1, rap: true });
  await clear.subscribeAsync("rap/t", { qos: 1, rap: false });
  await using pub = await connectClient(b.port, { clientId: "pub" });
  await pub.publishAsync("rap/t", "retained", { qos: 1, retain: true });
  await pub.publishAsync("rap/t", "plain", { qos: 1, retain: false });
  const k1 = await keepIn.next();
  const k2 = await keepIn.next();
  const c1 = await clearIn.next();
  const c2 = await clearIn.next();
  assert.deepEqual([k1.payload, k1.packet.retain], ["retained", true]);
  assert.deepEqual([k2.payload, k2.packet.retain], ["plain", false]);
  assert.deepEqual([c1.payload, c1.packet.retain], ["retained", false]);
  assert.deepEqual([c2.payload, c2.packet.retain], ["plain", false]);
});

// ---- Retain Handling -----------------------------------------------------------

/** A broker with a retained message on "rh/t" and a connected v5 subscriber. */
async function retainedSetup() {
  const b = await startBroker();
  const pub = await connectClient(b.port, { clientId: "pub" });
  await pub.publishAsync("rh/t", "kept", { qos: 1, retain: true });
  const sub = await subscriber(b.port, MARKER, 1, { clientId: "sub" });
  return {
    b,
    pub,
    sub,
    inbox: sub.inbox,
    /** Subscribes with `rh`, then returns what arrived before a marker. */
    async subscribe(filter: string, rh: 0 | 1 | 2): Promise<Received[]> {
      await sub.subscribeAsync(filter, { qos: 1, rh });
      await pub.publishAsync(MARKER, "", { qos: 1 });
      return receivedBefore(sub.inbox);
    },
    async [Symbol.asyncDispose]() {
      await sub[Symbol.asyncDispose]();
      await pub[Symbol.asyncDispose]();
      await b.stop();
    },
  };
}

Deno.test("Retain Handling 0: retained messages are sent on every SUBSCRIBE, also when resubscribing [MQTT-3.3.1-9, MQTT-3.8.4-4]", async () => {
  await using s = await retainedSetup();
  const first = await s.subscribe("rh/t", 0);
  assert.deepEqual(first.map((m) => [m.payload, m.packet.retain]), [["kept", true]]);
  const again = await s.subscribe("rh/t", 0);
  assert.deepEqual(again.map((m) => [m.payload, m.packet.retain]), [["kept", true]]);
});

Deno.test("Retain Handling 1: retained messages are sent only when the subscription is new [MQTT-3.3.1-10]", async () => {
  await using s = await retainedSetup();
  const first = await s.subscribe("rh/+", 1);
  assert.deepEqual(first.map((m) => [m.payload, m.packet.retain]), [["kept", true]]);
  const again = await s.subscribe("rh/+", 1);
  assert.deepEqual(again, []);
  // A different filter is a new subscription, so it gets the retained message again.
  const other = await s.subscribe("rh/#", 1);
  assert.deepEqual(other.map((m) => m.payload), ["kept"]);
});

Deno.test("Retain Handling 2: retained messages are never sent at SUBSCRIBE, live messages still are [MQTT-3.3.1-11]", async () => {
  await using s = await retainedSetup();
  assert.deepEqual(await s.subscribe("rh/t", 2), []);
  await s.pub.publishAsync("rh/t", "live", { qos: 1 });
  const live = await s.inbox.next();
  assert.deepEqual([live.topic, live.payload], ["rh/t", "live"]);
});

for (const rh of [1, 2] as const) {
  Deno.test(
    `subscribing again with Retain Handling ${rh} while retained messages are still being sent: the rest ${
      rh === 1 ? "follow the new QoS and Subscription Identifier" : "are not sent"
    } [MQTT-3.8.4-3, MQTT-3.8.4-8, MQTT-3.3.1-11]`,
    async () => {
      await using b = await startBroker();
      {
        await using pub = await connectClient(b.port, { clientId: "keeper" });
        for (const t of ["rs/a", "rs/b", "rs/c"]) {
          await pub.publishAsync(t, t, { qos: 1, retain: true });
        }
      }
      // Receive Maximum 1 and no PUBACK: the first retained message holds the rest back.
      await using c = await RawClient.connect(b.port, 5);
      await c.handshake("resub", 5, { properties: { receiveMaximum: 1 } });
      await c.sendPacket({
        cmd: "subscribe",
        messageId: 1,
        properties: { subscriptionIdentifier: 7 },
        subscriptions: [{ topic: "rs/#", qos: 1 }],
      });
      await c.expect("suback");
      const first = await c.expect("publish");
      assert.equal(first.qos, 1);
      // The same filter again: QoS 0, no Subscription Identifier.
      assert.deepEqual(await rawSubscribe(c, 2, [{ topic: "rs/#", qos: 0, rh }]), [0]);
      await c.sendPacket({ cmd: "puback", messageId: first.messageId });
      const rest: { qos: number; ids: unknown }[] = [];
      for (;;) {
        const p = await c.next(300).catch(() => null);
        if (p === null) break;
        assert.equal(p.cmd, "publish");
        const pp = p as typeof p & { qos: number; properties?: Record<string, unknown> };
        rest.push({ qos: pp.qos, ids: pp.properties?.subscriptionIdentifier });
      }
      // Before the fix: two more at QoS 1, still carrying Subscription Identifier 7.
      assert.deepEqual(
        rest,
        rh === 1 ? [{ qos: 0, ids: undefined }, { qos: 0, ids: undefined }] : [],
      );
    },
  );
}

// ---- Subscription Identifiers --------------------------------------------------

Deno.test("Subscription Identifiers come with every matching message, all of them when overlapping subscriptions match [MQTT-3.3.4-3, MQTT-3.3.4-4]", async () => {
  await using b = await startBroker();
  await using sub = await connectClient(b.port, { clientId: "sub" });
  const inbox = collect(sub);
  await sub.subscribeAsync("ids/+", { qos: 1, properties: { subscriptionIdentifier: 7 } });
  await sub.subscribeAsync("ids/#", { qos: 1, properties: { subscriptionIdentifier: 300 } });
  await sub.subscribeAsync(["plain", MARKER], { qos: 1 });
  await using pub = await connectClient(b.port, { clientId: "pub" });
  await publishAll(pub, ["ids/a", "ids/a/b", "plain"]);
  const got = await receivedBefore(inbox);
  assert.deepEqual(got.map((m) => [m.topic, subIds(m)]), [
    ["ids/a", [7, 300]],
    ["ids/a/b", [300]],
    ["plain", []],
  ]);
});

Deno.test("a resubscribe without a Subscription Identifier removes the identifier from later messages [3.8.2.1.2]", async () => {
  await using b = await startBroker();
  await using sub = await connectClient(b.port, { clientId: "sub" });
  const inbox = collect(sub);
  await sub.subscribeAsync(["ids/t", MARKER], {
    qos: 1,
    properties: { subscriptionIdentifier: 5 },
  });
  await using pub = await connectClient(b.port, { clientId: "pub" });
  await publishAll(pub, ["ids/t"]);
  assert.deepEqual((await receivedBefore(inbox)).map(subIds), [[5]]);
  await sub.subscribeAsync("ids/t", { qos: 1 });
  await publishAll(pub, ["ids/t"]);
  assert.deepEqual((await receivedBefore(inbox)).map(subIds), [[]]);
});

// ---- overlapping and replaced subscriptions ------------------------------------

for (const [version, label] of VERSIONS) {
  Deno.test(`${label}: overlapping subscriptions of one client get ONE delivery at the highest QoS [MQTT-3.3.4-2]`, async () => {
    await using b = await startBroker();
    await using sub = await connectClient(b.port, { clientId: "sub", protocolVersion: version });
    const inbox = collect(sub);
    await sub.subscribeAsync({ "a/#": { qos: 0 }, "a/b": { qos: 2 }, [MARKER]: { qos: 2 } });
    await using pub = await connectClient(b.port, { clientId: "pub", protocolVersion: version });
    await publishAll(pub, ["a/b", "a/c"], 2);
    const got = await receivedBefore(inbox);
    assert.deepEqual(got.map((m) => [m.topic, m.packet.qos]), [["a/b", 2], ["a/c", 0]]);
  });

  Deno.test(`${label}: subscribing again to the same filter replaces the subscription, no duplicates [MQTT-3.8.4-3]`, async () => {
    await using b = await startBroker();
    await using sub = await connectClient(b.port, { clientId: "sub", protocolVersion: version });
    const inbox = collect(sub);
    const first = await sub.subscribeAsync({ "re/t": { qos: 2 }, [MARKER]: { qos: 2 } });
    const second = await sub.subscribeAsync("re/t", { qos: 0 });
    assert.deepEqual(first.map((g) => g.qos), [2, 2]);
    assert.deepEqual(second.map((g) => g.qos), [0]);
    await using pub = await connectClient(b.port, { clientId: "pub", protocolVersion: version });
    await publishAll(pub, ["re/t"], 2);
    // Kept side by side, the two subscriptions would give two deliveries or
    // one at QoS 2; replaced, there is one at the new QoS 0.
    const got = await receivedBefore(inbox);
    assert.deepEqual(got.map((m) => [m.topic, m.packet.qos]), [["re/t", 0]]);
  });
}

// ---- UNSUBSCRIBE ---------------------------------------------------------------

Deno.test("MQTT 5: UNSUBACK has a reason code per filter (0x00, 0x11, 0x8F) and deliveries stop [MQTT-3.10.4-2, MQTT-3.11.3-1]", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port);
  await c.handshake("unsub");
  assert.deepEqual(
    await rawSubscribe(c, 1, [{ topic: "u/1", qos: 0 }, { topic: MARKER, qos: 0 }]),
    [0, 0],
  );
  await c.sendPacket({
    cmd: "unsubscribe",
    messageId: 2,
    unsubscriptions: ["u/1", "u/2", "a/#/b"],
  });
  const ack = await c.expect("unsuback");
  assert.equal(ack.messageId, 2);
  assert.deepEqual(ack.granted, [0x00, 0x11, 0x8f]);
  await using pub = await connectClient(b.port, { clientId: "pub" });
  await publishAll(pub, ["u/1"], 0);
  const p = await c.expect("publish");
  assert.equal(p.topic, MARKER);
  // The connection stays usable after the invalid filter.
  await c.send([0xc0, 0x00]);
  await c.expect("pingresp");
});

Deno.test("MQTT 3.1.1: UNSUBSCRIBE is acknowledged and deliveries stop [MQTT-3.10.4-2, MQTT-3.10.4-4]", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 4);
  await c.handshake("unsub", 4);
  await rawSubscribe(c, 1, [{ topic: "u/+", qos: 1 }, { topic: MARKER, qos: 0 }], 4);
  await c.sendPacket({ cmd: "unsubscribe", messageId: 9, unsubscriptions: ["u/+", "never"] }, 4);
  const ack = await c.expect("unsuback");
  assert.equal(ack.messageId, 9);
  await using pub = await connectClient(b.port, { clientId: "pub", protocolVersion: 4 });
  await publishAll(pub, ["u/1"], 0);
  assert.equal((await c.expect("publish")).topic, MARKER);
});

// ---- invalid filters ------------------------------------------------------------

const INVALID_FILTERS = [
  "a/#/b", // "#" not last [MQTT-4.7.1-1]
  "a+", // "+" not a whole level [MQTT-4.7.1-2]
  "sport/ten#",
  "#/a",
  "", // at least one character [MQTT-4.7.3-1]
  "$share/g", // share name without "/" and filter [MQTT-4.8.2-2]
  "$share/g/",
  "$share/+/x", // share name with a wildcard [MQTT-4.8.2-2]
  "$share//x", // empty share name [MQTT-4.8.2-1]
];

for (const [version, label] of VERSIONS) {
  const failure = version === 5 ? 0x8f : 0x80;
  Deno.test(`${label}: SUBACK refuses each invalid filter with 0x${failure.toString(16)}, valid filters in the same SUBSCRIBE work [MQTT-3.8.4-5]`, async () => {
    await using b = await startBroker();
    await using c = await RawClient.connect(b.port, version);
    await c.handshake("bad-filters", version);
    const subscriptions = [
      { topic: "ok/1", qos: 1 },
      ...INVALID_FILTERS.map((topic) => ({ topic, qos: 1 })),
      { topic: "ok/#", qos: 0 },
    ];
    const granted = await rawSubscribe(c, 3, subscriptions, version);
    assert.deepEqual(granted, [1, ...INVALID_FILTERS.map(() => failure), 0]);
    await using pub = await connectClient(b.port, { clientId: "pub", protocolVersion: version });
    await pub.publishAsync("ok/1", "x", { qos: 1 });
    const p = await c.expect("publish");
    assert.equal(p.topic, "ok/1");
    assert.equal(p.qos, 1);
    assert.equal(c.closed, false);
  });
}

// ---- topic limits -------------------------------------------------------------------

const LIMITS = { limits: { max_topic_levels: 3, max_topic_length: 20 } };

Deno.test("limits: a filter deeper or longer than the configured limits gets 0x8F, filters within them are granted", async () => {
  await using b = await startBroker(LIMITS);
  await using c = await RawClient.connect(b.port);
  await c.handshake("limits");
  const granted = await rawSubscribe(c, 1, [
    { topic: "a/b/c", qos: 1 },
    { topic: "a/b/c/d", qos: 1 },
    { topic: "a/b/#", qos: 1 },
    { topic: "a/b/c/#", qos: 1 },
    { topic: "x".repeat(20), qos: 1 },
    { topic: "x".repeat(21), qos: 1 },
    { topic: "$share/group/a/b/c", qos: 1 },
    // The length limit counts UTF-8 bytes: U+1F600 is 2 UTF-16 units but 4 bytes.
    { topic: "x".repeat(16) + "\u{1F600}", qos: 1 },
    { topic: "x".repeat(17) + "\u{1F600}", qos: 1 },
  ]);
  assert.deepEqual(granted, [1, 0x8f, 1, 0x8f, 1, 0x8f, 1, 1, 0x8f]);
});

Deno.test("limits: MQTT 5 PUBLISH to a topic deeper or longer than the limits gets DISCONNECT 0x90, others keep working", async () => {
  await using b = await startBroker(LIMITS);
  await using watcher = await subscriber(b.port, "#", 0, { clientId: "watcher" });
  for (const topic of ["a/b/c/d", "y".repeat(21)]) {
    await using c = await RawClient.connect(b.port);
    await c.handshake("deep");
    // Within the limits first, so the refusal below is about the limit only.
    await c.sendPacket({ cmd: "publish", topic: "a/b/c", payload: "ok", qos: 0 });
    await c.sendPacket({ cmd: "publish", topic, payload: "too far", qos: 0 });
    const d = await c.expect("disconnect");
    assert.equal(d.reasonCode, 0x90);
    await c.expectClosed();
  }
  const got = [await watcher.inbox.next(), await watcher.inbox.next()];
  assert.deepEqual(got.map((m) => m.payload), ["ok", "ok"]);
  await using pub = await connectClient(b.port, { clientId: "pub" });
  await pub.publishAsync("x/y", "still here", { qos: 1 });
  assert.equal((await watcher.inbox.next()).payload, "still here");
});

Deno.test("limits: MQTT 3.1.1 PUBLISH to a too-deep topic closes the connection", async () => {
  await using b = await startBroker(LIMITS);
  await using c = await RawClient.connect(b.port, 4);
  await c.handshake("deep", 4);
  await c.sendPacket({ cmd: "publish", topic: "a/b/c/d", payload: "x", qos: 0 }, 4);
  assert.equal(await c.next(), null);
  await c.expectClosed();
});
