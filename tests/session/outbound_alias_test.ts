/**
 * Server-to-client Topic Aliases: a client that allows them in CONNECT receives repeated topics
 * as aliases, within its Topic Alias Maximum and limits.max_outgoing_topic_aliases, and every
 * message still resolves to its topic; clients that did not allow them never see one. The raw
 * subscriber decodes with mqtt-packet and keeps its own alias table, as a client must.
 */
import assert from "node:assert/strict";
import type { Config, DeepPartial } from "../../mod.ts";
import {
  collect,
  connectClient,
  endClient,
  type Packet,
  RawClient,
  startBroker,
} from "../helpers/broker.ts";

interface Seen {
  topic: string;
  alias: number | undefined;
  sentTopic: string;
  payload: string;
}

/** Reads `n` PUBLISH packets (acknowledging QoS 1), resolving aliases like a client. */
async function readResolved(c: RawClient, n: number, max: number): Promise<Seen[]> {
  const table = new Map<number, string>();
  const out: Seen[] = [];
  while (out.length < n) {
    const p = await c.expect("publish") as Packet & {
      topic: string;
      payload: Uint8Array;
      qos: number;
      messageId?: number;
      properties?: { topicAlias?: number };
    };
    if (p.qos === 1) await c.sendPacket({ cmd: "puback", messageId: p.messageId });
    const alias = p.properties?.topicAlias;
    let topic = p.topic;
    if (alias !== undefined) {
      assert.ok(alias >= 1 && alias <= max, `alias ${alias} outside 1..${max}`);
      if (topic === "") {
        const known = table.get(alias);
        assert.ok(known !== undefined, `alias ${alias} used before it was set`);
        topic = known;
      } else table.set(alias, topic);
    } else assert.notEqual(topic, "", "an empty topic needs an alias");
    out.push({ topic, alias, sentTopic: p.topic, payload: new TextDecoder().decode(p.payload) });
  }
  return out;
}

/** A sequence over `distinct` topics where some are hot and some cold (deterministic). */
function topicSequence(n: number, distinct: number): string[] {
  const out: string[] = [];
  let x = 12345;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    // Half of the messages go to topic 0, the rest spread over the others.
    const k = (x >> 8) % 2 === 0 ? 0 : 1 + ((x >> 12) % (distinct - 1));
    out.push(`sensors/building-${k}/temperature`);
  }
  return out;
}

async function broker(limits: DeepPartial<Config["limits"]> = {}) {
  return await startBroker({ limits });
}

for (const qos of [0, 1] as const) {
  Deno.test(`QoS ${qos}: repeated topics arrive as aliases within the client's Topic Alias Maximum, and every one resolves`, async () => {
    await using b = await broker();
    await using sub = await RawClient.connect(b.port);
    await sub.handshake("alias-sub", 5, { properties: { topicAliasMaximum: 3 } });
    await sub.sendPacket({
      cmd: "subscribe",
      messageId: 1,
      subscriptions: [{ topic: "sensors/#", qos }],
      // A Subscription Identifier takes the per-receiver encoding path for half the test.
      ...(qos === 1 ? { properties: { subscriptionIdentifier: 9 } } : {}),
    });
    await sub.expect("suback");
    await using pub = await connectClient(b.port, { clientId: "alias-pub" });
    const topics = topicSequence(200, 6);
    for (let i = 0; i < topics.length; i++) pub.publish(topics[i], `m${i}`, { qos });
    const seen = await readResolved(sub, topics.length, 3);
    assert.deepEqual(seen.map((s) => s.topic), topics, "every message resolves to its topic");
    assert.deepEqual(seen.map((s) => s.payload), topics.map((_, i) => `m${i}`));
    const byAlias = seen.filter((s) => s.sentTopic === "").length;
    // Topic 0 is hot: with 3 aliases it keeps one, so most of its repeats go as an alias.
    assert.ok(byAlias > topics.length / 3, `only ${byAlias} of ${topics.length} sent as aliases`);
    assert.ok(new Set(seen.map((s) => s.alias)).size <= 4, "at most 3 aliases (and none)");
  });
}

Deno.test("no aliases for a client that did not allow them, nor beyond max_outgoing_topic_aliases", async () => {
  await using b = await broker({ max_outgoing_topic_aliases: 1 });
  await using plain = await RawClient.connect(b.port);
  await plain.handshake("plain");
  await using capped = await RawClient.connect(b.port);
  await capped.handshake("capped", 5, { properties: { topicAliasMaximum: 50 } });
  for (const c of [plain, capped]) {
    await c.sendPacket({
      cmd: "subscribe",
      messageId: 1,
      subscriptions: [{ topic: "t/#", qos: 0 }],
    });
    await c.expect("suback");
  }
  await using pub = await connectClient(b.port, { clientId: "pub" });
  const topics = ["t/one", "t/two", "t/one", "t/two", "t/two"];
  for (const t of topics) pub.publish(t, "x");
  const p = await readResolved(plain, topics.length, 0);
  assert.ok(p.every((s) => s.alias === undefined), "no alias without Topic Alias Maximum");
  const c = await readResolved(capped, topics.length, 1);
  assert.deepEqual(c.map((s) => s.topic), topics);
  assert.deepEqual(c.map((s) => s.sentTopic), ["t/one", "t/two", "t/one", "t/two", ""]);
});

Deno.test("MQTT.js with a Topic Alias Maximum receives the right topics, and a short topic is never aliased", async () => {
  await using b = await broker();
  const sub = await connectClient(b.port, {
    clientId: "mqttjs-alias",
    properties: { topicAliasMaximum: 2 },
  });
  try {
    const inbox = collect(sub);
    await sub.subscribeAsync("#", { qos: 1 });
    await using pub = await connectClient(b.port, { clientId: "pub2" });
    const topics = topicSequence(30, 4).concat(["abc", "abc"]);
    for (const t of topics) await pub.publishAsync(t, t, { qos: 1 });
    for (const t of topics) {
      const m = await inbox.next();
      assert.equal(m.topic, t);
      assert.equal(m.payload, t);
      if (t === "abc") assert.equal(m.packet.properties?.topicAlias, undefined);
    }
  } finally {
    await endClient(sub);
  }
});
