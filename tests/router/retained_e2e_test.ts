/**
 * Retained messages end to end: stored and sent to later subscribers with
 * RETAIN=1, replaced, cleared by an empty payload, matched by wildcards,
 * delivered at min(stored QoS, subscription QoS), and forwarded live with
 * RETAIN=0 unless the subscriber asked for Retain As Published.
 *
 * A subscriber's "nothing else arrived" is checked with a marker published
 * after the SUBSCRIBE was acknowledged: the broker sends retained messages
 * right after SUBACK, so they would come before the marker.
 */
import assert from "node:assert/strict";
import type { MqttClient } from "mqtt";
import { Message } from "../../src/protocol/message.ts";
import {
  collect,
  connectClient,
  type Inbox,
  type Received,
  receivedBefore,
  startBroker,
  subscriber,
} from "../helpers/broker.ts";

const MARKER = "end";

/**
 * Subscribes `sub` to `filter` at `qos`, publishes the marker from `pub` and
 * returns the retained messages the subscription brought, sorted by topic.
 */
async function retainedOnSubscribe(
  sub: MqttClient,
  inbox: Inbox,
  pub: MqttClient,
  filter: string,
  qos: 0 | 1 | 2 = 1,
): Promise<Received[]> {
  await sub.subscribeAsync({ [filter]: { qos }, [MARKER]: { qos: 2 } });
  // QoS 2 so the marker cannot overtake retained QoS 2 messages, which
  // MQTT.js only reports once their PUBREL arrives.
  await pub.publishAsync(MARKER, "", { qos: 2 });
  return (await receivedBefore(inbox)).sort((a, b) => a.topic.localeCompare(b.topic));
}

function summary(ms: Received[]): [string, string, boolean, number][] {
  return ms.map((m) => [m.topic, m.payload, m.packet.retain, m.packet.qos]);
}

const VERSIONS = [[4, "MQTT 3.1.1"], [5, "MQTT 5"]] as const;

for (const [version, label] of VERSIONS) {
  Deno.test(`${label}: a retained message outlives its publisher and reaches a later subscriber with RETAIN=1 [MQTT-3.3.1-5, MQTT-3.3.1-9]`, async () => {
    await using b = await startBroker();
    {
      await using pub = await connectClient(b.port, { clientId: "pub", protocolVersion: version });
      await pub.publishAsync("home/temp", "21", { qos: 1, retain: true });
      // Not retained: must not be stored [MQTT-3.3.1-8].
      await pub.publishAsync("home/hum", "40", { qos: 1, retain: false });
    }
    await using sub = await connectClient(b.port, { clientId: "sub", protocolVersion: version });
    await using pub2 = await connectClient(b.port, { clientId: "pub2", protocolVersion: version });
    const got = await retainedOnSubscribe(sub, collect(sub), pub2, "home/+");
    assert.deepEqual(summary(got), [["home/temp", "21", true, 1]]);
  });
}

Deno.test("a newer retained publish replaces the stored message [MQTT-3.3.1-5]", async () => {
  await using b = await startBroker();
  await using pub = await connectClient(b.port, { clientId: "pub" });
  await pub.publishAsync("r/t", "old", { qos: 1, retain: true });
  await pub.publishAsync("r/t", "new", { qos: 1, retain: true });
  await using sub = await connectClient(b.port, { clientId: "sub" });
  const got = await retainedOnSubscribe(sub, collect(sub), pub, "r/t");
  assert.deepEqual(summary(got), [["r/t", "new", true, 1]]);
});

Deno.test("an empty retained publish clears the stored message and is still forwarded to current subscribers [MQTT-3.3.1-6, MQTT-3.3.1-7]", async () => {
  await using b = await startBroker();
  await using pub = await connectClient(b.port, { clientId: "pub" });
  await using current = await subscriber(b.port, "r/t", 1, { clientId: "current" });
  await pub.publishAsync("r/t", "x", { qos: 1, retain: true });
  await pub.publishAsync("r/t", "", { qos: 1, retain: true });
  assert.equal((await current.inbox.next()).payload, "x");
  const cleared = await current.inbox.next();
  assert.deepEqual([cleared.topic, cleared.payload, cleared.packet.retain], ["r/t", "", false]);
  await using later = await connectClient(b.port, { clientId: "later" });
  assert.deepEqual(await retainedOnSubscribe(later, collect(later), pub, "r/#"), []);
});

Deno.test("a wildcard subscription gets the retained message of every matching topic", async () => {
  await using b = await startBroker();
  await using pub = await connectClient(b.port, { clientId: "pub" });
  for (const t of ["w", "w/a", "w/b/c", "w/d", "other/x", "ww/a"]) {
    await pub.publishAsync(t, t, { qos: 1, retain: true });
  }
  const cases: [string, string[]][] = [
    ["w/#", ["w", "w/a", "w/b/c", "w/d"]],
    ["w/+", ["w/a", "w/d"]],
    ["+/b/+", ["w/b/c"]],
    ["#", ["other/x", "w", "w/a", "w/b/c", "w/d", "ww/a"]],
  ];
  for (const [i, [filter, topics]] of cases.entries()) {
    await using sub = await connectClient(b.port, { clientId: `sub${i}` });
    const got = await retainedOnSubscribe(sub, collect(sub), pub, filter);
    assert.deepEqual(got.map((m) => m.topic), topics, filter);
    assert.ok(got.every((m) => m.packet.retain && m.payload === m.topic), filter);
  }
});

Deno.test("a retained message is delivered at the lower of its stored QoS and the subscription's QoS", async () => {
  await using b = await startBroker();
  await using pub = await connectClient(b.port, { clientId: "pub" });
  for (const qos of [0, 1, 2] as const) {
    await pub.publishAsync(`q/${qos}`, `${qos}`, { qos, retain: true });
  }
  for (const subQos of [0, 1, 2] as const) {
    await using sub = await connectClient(b.port, { clientId: `sub${subQos}` });
    const got = await retainedOnSubscribe(sub, collect(sub), pub, "q/+", subQos);
    const want = [0, 1, 2].map((stored) => Math.min(stored, subQos));
    assert.deepEqual(got.map((m) => m.packet.qos), want, `subscription QoS ${subQos}`);
  }
});

Deno.test("the live forward of a retained publish has RETAIN=0 for 3.1.1 and for MQTT 5 without Retain As Published [MQTT-3.3.1-12]", async () => {
  await using b = await startBroker();
  await using v4 = await connectClient(b.port, { clientId: "v4", protocolVersion: 4 });
  await using v5 = await connectClient(b.port, { clientId: "v5" });
  await using rap = await connectClient(b.port, { clientId: "rap" });
  const inboxes = [collect(v4), collect(v5), collect(rap)];
  await v4.subscribeAsync("live/t", { qos: 1 });
  await v5.subscribeAsync("live/t", { qos: 1 });
  await rap.subscribeAsync("live/t", { qos: 1, rap: true });
  await using pub = await connectClient(b.port, { clientId: "pub" });
  await pub.publishAsync("live/t", "now", { qos: 1, retain: true });
  const got = await Promise.all(inboxes.map((i) => i.next()));
  // 3.1.1: RETAIN is 0 for messages matching an established subscription (3.1.1 [MQTT-3.3.1-9]).
  assert.deepEqual(got.map((m) => [m.payload, m.packet.retain]), [
    ["now", false],
    ["now", false],
    ["now", true],
  ]);
  // It was stored all the same.
  await using later = await connectClient(b.port, { clientId: "later", protocolVersion: 4 });
  const stored = await retainedOnSubscribe(later, collect(later), pub, "live/t");
  assert.deepEqual(summary(stored), [["live/t", "now", true, 1]]);
});

Deno.test("a retained message sent at SUBSCRIBE carries that subscription's Subscription Identifier", async () => {
  await using b = await startBroker();
  await using pub = await connectClient(b.port, { clientId: "pub" });
  await pub.publishAsync("id/t", "x", { qos: 1, retain: true });
  await using sub = await connectClient(b.port, { clientId: "sub" });
  const inbox = collect(sub);
  await sub.subscribeAsync("id/+", { qos: 1, properties: { subscriptionIdentifier: 12 } });
  const m = await inbox.next();
  assert.deepEqual([m.topic, m.packet.retain, m.packet.properties?.subscriptionIdentifier], [
    "id/t",
    true,
    12,
  ]);
});

// Clients cannot publish to "$" topics (the broker refuses them with 0x87), so
// a retained "$" message can only come from the broker itself, through the
// router; the subscribers are real clients.
Deno.test('a retained "$" topic is not sent to "#" or "+/..." subscriptions, but to "$SYS/#" [MQTT-4.7.2-1]', async () => {
  await using b = await startBroker();
  const topic = "$SYS/broker/version";
  const bytes = new TextEncoder().encode(topic);
  b.broker.router.publish(new Message(topic, bytes, bytes, 1, true, null, 0, ""));
  await using pub = await connectClient(b.port, { clientId: "pub" });
  const cases: [string, string[]][] = [["#", []], ["+/broker/+", []], ["$SYS/#", [topic]]];
  for (const [i, [filter, topics]] of cases.entries()) {
    await using sub = await connectClient(b.port, { clientId: `sub${i}` });
    const got = await retainedOnSubscribe(sub, collect(sub), pub, filter);
    assert.deepEqual(got.map((m) => m.topic), topics, filter);
  }
});
