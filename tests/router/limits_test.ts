/**
 * Bounded memory in the router: per-client subscription limits (count, total filter levels and
 * characters), the retained store's limits (count and bytes), and the match cache's byte bound.
 * Memory is read from a broker in its own process; protocol answers from real clients.
 */
import assert from "node:assert/strict";
import { connectClient, RawClient, startBroker, subscriber } from "../helpers/broker.ts";
import { mib, startBrokerProcess } from "../helpers/broker_process.ts";
import { concatBytes, frame, str, varint } from "../helpers/wire.ts";

const enc = new TextEncoder();

const MIB = 1024 * 1024;

/** A SUBSCRIBE (MQTT 5 or 3.1.1) for `filters` at QoS 0, built by hand. */
function subscribeBytes(packetId: number, filters: string[], v5 = true): Uint8Array {
  // Typed arrays, not number arrays: the long-filter test sends 57 MiB of filters.
  const parts: (Uint8Array | number[])[] = [[
    packetId >> 8,
    packetId & 0xff,
    ...(v5 ? varint(0) : []),
  ]];
  for (const f of filters) {
    const b = enc.encode(f);
    parts.push([b.length >> 8, b.length & 0xff], b, [0]);
  }
  const body = concatBytes(parts);
  return concatBytes([[0x82, ...varint(body.length)], body]);
}

/** A filter of `levels` levels whose second level is unique to `i`. */
function deepFilter(i: number, levels: number): string {
  return ["deep", `n${i}`, ...Array(levels - 2).fill("l")].join("/");
}

Deno.test("deep subscriptions from one client stop at max_subscription_levels, and memory stays bounded", async () => {
  await using broker = await startBrokerProcess();
  await using c = await RawClient.connect(broker.ports.tcp);
  await c.handshake("deep");
  const before = await broker.memory();
  // 11.5k filters of 128 levels (2.9 MiB of SUBSCRIBE packets), 100 filters per packet.
  const codes: number[] = [];
  for (let p = 0; p < 115; p++) {
    const filters = Array.from({ length: 100 }, (_, i) => deepFilter(p * 100 + i, 128));
    await c.send(subscribeBytes(p + 1, filters));
    codes.push(...(await c.expect("suback")).granted as number[]);
  }
  const after = await broker.memory();
  const grew = after.rss - before.rss;
  const granted = codes.filter((x) => x === 0).length;
  // The default max_subscription_levels (100000) allows 781 filters of 128 levels.
  assert.equal(granted, Math.floor(100000 / 128));
  assert.ok(codes.slice(granted).every((x) => x === 0x97), "refusals are 0x97 Quota exceeded");
  const heap = after.heapUsed - before.heapUsed;
  // Before the limits: all 11.5k granted, RSS +382 MiB.
  assert.ok(heap < 24 * MIB, `heap grew by ${mib(heap)} for ${granted} deep subscriptions`);
  assert.ok(grew < 128 * MIB, `RSS grew by ${mib(grew)} for ${granted} deep subscriptions`);
});

Deno.test("a subscription trie level costs little memory", async () => {
  await using broker = await startBrokerProcess({
    limits: { max_subscriptions: 100000, max_subscription_levels: 10000000 },
  });
  await using c = await RawClient.connect(broker.ports.tcp);
  await c.handshake("levels");
  const before = await broker.memory();
  const filters = 2000;
  for (let p = 0; p < filters / 100; p++) {
    const batch = Array.from({ length: 100 }, (_, i) => deepFilter(p * 100 + i, 128));
    await c.send(subscribeBytes(p + 1, batch));
    await c.expect("suback");
  }
  const after = await broker.memory();
  const perLevel = (after.heapUsed - before.heapUsed) / (filters * 127);
  // A Map per level cost ~240 bytes; an inline only child, ~60 (plus the filters themselves).
  assert.ok(perLevel < 140, `${perLevel.toFixed(0)} bytes of heap per subscription level`);
});

Deno.test("max_subscriptions refuses further filters with 0x97 (MQTT 5) and 0x80 (3.1.1)", async () => {
  await using b = await startBroker({ limits: { max_subscriptions: 3 } });
  for (const v of [5, 4] as const) {
    await using c = await RawClient.connect(b.port, v);
    await c.handshake(`count-${v}`, v);
    await c.send(subscribeBytes(1, ["a", "b"], v === 5));
    assert.deepEqual((await c.expect("suback")).granted, [0, 0]);
    // Re-subscribing to "a" replaces it and costs nothing; "c" is the third, "d" the fourth.
    await c.send(subscribeBytes(2, ["a", "c", "d"], v === 5));
    assert.deepEqual((await c.expect("suback")).granted, [0, 0, v === 5 ? 0x97 : 0x80]);
    // Unsubscribing frees a place.
    await c.sendPacket({ cmd: "unsubscribe", messageId: 3, unsubscriptions: ["b"] }, v);
    await c.expect("unsuback");
    await c.send(subscribeBytes(4, ["d"], v === 5));
    assert.deepEqual((await c.expect("suback")).granted, [0]);
  }
});

Deno.test("long filters from one client stop at max_subscription_bytes with 0x97, and memory stays bounded", async () => {
  await using broker = await startBrokerProcess();
  await using c = await RawClient.connect(broker.ports.tcp);
  await c.handshake("long-filters");
  const before = await broker.memory();
  // 1000 single-level filters of 60,000 characters (57 MiB), 10 per SUBSCRIBE: within the
  // default max_subscriptions (10000) and max_subscription_levels (100000).
  const len = 60_000;
  const codes: number[] = [];
  for (let p = 0; p < 100; p++) {
    const filters = Array.from(
      { length: 10 },
      (_, i) => `${p * 10 + i}-`.padEnd(len, "x"),
    );
    await c.send(subscribeBytes(p + 1, filters));
    codes.push(...(await c.expect("suback")).granted as number[]);
  }
  const after = await broker.memory();
  const granted = codes.filter((x) => x === 0).length;
  // The default max_subscription_bytes is 4 MiB of filter characters.
  assert.equal(granted, Math.floor(4 * MIB / len));
  assert.ok(codes.slice(granted).every((x) => x === 0x97), "refusals are 0x97 Quota exceeded");
  const heap = after.heapUsed - before.heapUsed;
  const grew = after.rss - before.rss;
  // Before the limit: all 1000 granted, heap +58 MiB (10000 such filters: RSS +617 MiB).
  assert.ok(heap < 16 * MIB, `heap grew by ${mib(heap)} for ${granted} long subscriptions`);
  assert.ok(grew < 64 * MIB, `RSS grew by ${mib(grew)} for ${granted} long subscriptions`);
});

Deno.test("max_subscription_bytes counts the share prefix, frees on unsubscribe, and says 0x80 in 3.1.1", async () => {
  // "a/b" (3) + "$share/g/a/b" (12) = 15; one more character is over.
  await using b = await startBroker({ limits: { max_subscription_bytes: 15 } });
  for (const v of [5, 4] as const) {
    await using c = await RawClient.connect(b.port, v);
    await c.handshake(`chars-${v}`, v);
    const over = v === 5 ? 0x97 : 0x80;
    await c.send(subscribeBytes(1, ["a/b", "$share/g/a/b", "c"], v === 5));
    assert.deepEqual((await c.expect("suback")).granted, [0, 0, over]);
    // Replacing a subscription costs nothing.
    await c.send(subscribeBytes(2, ["a/b"], v === 5));
    assert.deepEqual((await c.expect("suback")).granted, [0]);
    await c.sendPacket({ cmd: "unsubscribe", messageId: 3, unsubscriptions: ["a/b"] }, v);
    await c.expect("unsuback");
    await c.send(subscribeBytes(4, ["c"], v === 5));
    assert.deepEqual((await c.expect("suback")).granted, [0]);
  }
});

/** An MQTT 5 PUBLISH built by hand. */
function publishBytes(
  topic: string,
  payload: Uint8Array,
  qos: 0 | 1,
  packetId: number,
  retain: boolean,
): Uint8Array {
  const body = [...str(topic), ...(qos > 0 ? [packetId >> 8, packetId & 0xff] : []), 0, ...payload];
  return frame(0x30 | (qos << 1) | (retain ? 1 : 0), body);
}

Deno.test("retained messages on deep topics stop at max_retained_bytes with PUBACK 0x97, and memory stays bounded", async () => {
  await using broker = await startBrokerProcess({ limits: { max_retained_bytes: 16 * MIB } });
  await using c = await RawClient.connect(broker.ports.tcp);
  await c.handshake("retainer");
  const before = await broker.memory();
  // 3 MiB of retained publishes on distinct 128-level topics, 64 bytes of payload each.
  const payload = new Uint8Array(64);
  const codes = new Map<number, number>();
  let sentBytes = 0;
  for (let i = 0; sentBytes < 3 * MIB; i++) {
    const packet = publishBytes(deepFilter(i, 128), payload, 1, (i % 65535) + 1, true);
    await c.send(packet);
    sentBytes += packet.length;
    const ack = await c.expect("puback");
    const code = (ack.reasonCode as number | undefined) ?? 0;
    codes.set(code, (codes.get(code) ?? 0) + 1);
  }
  const after = await broker.memory();
  const grew = after.rss - before.rss;
  assert.ok((codes.get(0x97) ?? 0) > 0, "no retained publish was refused with 0x97");
  const heap = after.heapUsed - before.heapUsed;
  assert.ok(heap < 32 * MIB, `heap grew by ${mib(heap)} with max_retained_bytes at 16 MiB`);
  // Before the limits: RSS +372 MiB, kept for good. The rest is the traffic's own garbage.
  assert.ok(
    grew < 160 * MIB,
    `RSS grew by ${mib(grew)} for ${mib(sentBytes)} of retained publishes`,
  );
});

Deno.test("max_retained_messages: MQTT 5 gets PUBACK 0x97 and no delivery; 3.1.1 is delivered, not retained", async () => {
  await using b = await startBroker({ limits: { max_retained_messages: 2 } });
  await using watcher = await subscriber(b.port, "r/#", 1, { clientId: "watcher" });
  await using v5 = await RawClient.connect(b.port, 5);
  await v5.handshake("pub5");
  const text = (s: string) => new TextEncoder().encode(s);
  await v5.send(publishBytes("r/1", text("one"), 1, 1, true));
  await v5.send(publishBytes("r/2", text("two"), 1, 2, true));
  await v5.send(publishBytes("r/3", text("three"), 1, 3, true));
  const codes = [];
  for (let i = 0; i < 3; i++) codes.push(((await v5.expect("puback")).reasonCode as number) ?? 0);
  assert.deepEqual(codes, [0, 0, 0x97]);
  assert.deepEqual([(await watcher.inbox.next()).payload, (await watcher.inbox.next()).payload], [
    "one",
    "two",
  ]);
  // Replacing a retained message, and clearing one, are allowed at the limit.
  await v5.send(publishBytes("r/1", text("uno"), 1, 4, true));
  assert.equal((await v5.expect("puback")).reasonCode ?? 0, 0);
  assert.equal((await watcher.inbox.next()).payload, "uno");
  // 3.1.1 cannot be told: the message is delivered, not retained.
  await using v4 = await connectClient(b.port, { clientId: "pub4", protocolVersion: 4 });
  await v4.publishAsync("r/4", "four", { qos: 1, retain: true });
  assert.equal((await watcher.inbox.next()).payload, "four");
  await using late = await subscriber(b.port, "r/#", 1, { clientId: "late" });
  const got = [(await late.inbox.next()).payload, (await late.inbox.next()).payload].sort();
  assert.deepEqual(got, ["two", "uno"]);
  await late.inbox.none(200);
});

Deno.test("the match cache stays within match_cache_bytes: offline wildcard sessions and distinct topics", async () => {
  await using broker = await startBrokerProcess();
  const port = broker.ports.tcp;
  // 300 persistent sessions subscribed to "#", then offline.
  for (let i = 0; i < 300; i++) {
    await using s = await RawClient.connect(port);
    await s.handshake(`offline-${i}`, 5, {
      clean: false,
      properties: { sessionExpiryInterval: 3600 },
    });
    await s.sendPacket({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic: "#", qos: 0 }] });
    await s.expect("suback");
  }
  await using p = await RawClient.connect(port);
  await p.handshake("spray");
  const before = await broker.memory();
  // 10k QoS 0 publishes to distinct topics, twice (the cache takes a topic on its second
  // miss), then one QoS 1 to know they were all routed.
  const payload = new Uint8Array(16);
  for (let k = 0; k < 20_000; k += 500) {
    const i = k % 10_000;
    const parts = Array.from(
      { length: 500 },
      (_, j) => publishBytes(`t/${i + j}`, payload, 0, 0, false),
    );
    const all = new Uint8Array(parts.reduce((n, x) => n + x.length, 0));
    let off = 0;
    for (const x of parts) {
      all.set(x, off);
      off += x.length;
    }
    await p.send(all);
  }
  await p.send(publishBytes("t/last", payload, 1, 1, false));
  await p.expect("puback");
  const after = await broker.memory();
  const grew = after.rss - before.rss;
  const heap = after.heapUsed - before.heapUsed;
  // The cache is bounded at 16 MiB by default; before, it kept every (topic, subscriber) pair.
  assert.ok(heap < 48 * MIB, `heap grew by ${mib(heap)} after 10k topics x 300 subscribers`);
  // Before: RSS 103 -> 528 MiB, and it stayed.
  assert.ok(grew < 128 * MIB, `RSS grew by ${mib(grew)} after 10k topics x 300 subscribers`);
});
