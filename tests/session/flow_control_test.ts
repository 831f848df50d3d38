/**
 * Flow control: the client's Receive Maximum and Maximum Packet Size, the
 * broker's inflight and queue limits with their drop policies, and the
 * broker's own Receive Maximum for incoming QoS 2.
 */
import assert from "node:assert/strict";
import { connectClient, type Packet, RawClient, startBroker } from "../helpers/broker.ts";
import { expectSilence, subscriber } from "../helpers/broker.ts";

type Version = 4 | 5;
type Fields = Packet & Record<string, unknown>;

function ack(c: RawClient, v: Version, cmd: string, messageId: number, reasonCode = 0) {
  return c.sendPacket({ cmd, messageId, reasonCode }, v);
}

function text(p: Fields): string {
  return new TextDecoder().decode(p.payload as Uint8Array);
}

Deno.test("Receive Maximum 2: a client that does not ack gets 2 QoS 1 messages, the 3rd after a PUBACK", async () => {
  // [MQTT-3.3.4-9] no more than Receive Maximum unacknowledged QoS 1/2 PUBLISH packets.
  await using b = await startBroker();
  await using sub = await RawClient.connect(b.port, 5);
  await sub.handshake("slow", 5, { properties: { receiveMaximum: 2 } });
  await sub.subscribe("rm/#", 1);
  await using pub = await connectClient(b.port, { clientId: "pub" });
  for (const m of ["a", "b", "c"]) await pub.publishAsync("rm/x", m, { qos: 1 });

  const first = await sub.expect("publish");
  const second = await sub.expect("publish");
  assert.deepEqual([text(first), text(second)], ["a", "b"]);
  await expectSilence(sub);
  await ack(sub, 5, "puback", first.messageId as number);
  const third = await sub.expect("publish");
  assert.equal(text(third), "c");
  assert.equal(third.dup, false);
  await expectSilence(sub, 150);
});

Deno.test("Receive Maximum 1: a QoS 2 message holds its slot until PUBCOMP, not PUBREC", async () => {
  // [MQTT-3.3.4-9] only PUBACK, PUBCOMP or a failing PUBREC free a slot.
  await using b = await startBroker();
  await using sub = await RawClient.connect(b.port, 5);
  await sub.handshake("slow", 5, { properties: { receiveMaximum: 1 } });
  await sub.subscribe("rm/#", 2);
  await using pub = await connectClient(b.port, { clientId: "pub" });
  await pub.publishAsync("rm/x", "a", { qos: 2 });
  await pub.publishAsync("rm/x", "b", { qos: 2 });

  const a = await sub.expect("publish");
  assert.equal(text(a), "a");
  await ack(sub, 5, "pubrec", a.messageId as number);
  assert.equal((await sub.expect("pubrel")).messageId, a.messageId);
  await expectSilence(sub);
  await ack(sub, 5, "pubcomp", a.messageId as number);
  assert.equal(text(await sub.expect("publish")), "b");
});

Deno.test("a PUBREC with a failure code frees the slot and ends that message's flow", async () => {
  // [MQTT-4.4.0-2] a PUBREC >= 0x80 acknowledges the PUBLISH: no PUBREL, no resend.
  await using b = await startBroker();
  await using sub = await RawClient.connect(b.port, 5);
  await sub.handshake("picky", 5, {
    clean: true,
    properties: { receiveMaximum: 1, sessionExpiryInterval: 60 },
  });
  await sub.subscribe("rm/#", 2);
  await using pub = await connectClient(b.port, { clientId: "pub" });
  await pub.publishAsync("rm/x", "refused", { qos: 2 });
  await pub.publishAsync("rm/x", "next", { qos: 2 });

  const refused = await sub.expect("publish");
  assert.equal(text(refused), "refused");
  await ack(sub, 5, "pubrec", refused.messageId as number, 0x80);
  const next = await sub.expect("publish");
  assert.equal(text(next), "next");
  sub.close();

  // On resumption only the message still in flight comes back.
  await using again = await RawClient.connect(b.port, 5);
  await again.handshake("picky", 5, { clean: false, properties: { sessionExpiryInterval: 60 } });
  const resent = await again.expect("publish");
  assert.equal(text(resent), "next");
  assert.equal(resent.dup, true);
  await expectSilence(again, 200);
});

for (const v of [4, 5] as const) {
  Deno.test(`limits.max_inflight_messages caps unacknowledged messages (${v === 5 ? "v5" : "v3.1.1"})`, async () => {
    // 3.1.1 has no Receive Maximum, so this bound is all that protects a slow client;
    // for MQTT 5 it applies although the client allows more.
    await using b = await startBroker({ limits: { max_inflight_messages: 2 } });
    await using sub = await RawClient.connect(b.port, v);
    await sub.handshake("slow", v, v === 5 ? { properties: { receiveMaximum: 100 } } : {});
    await sub.subscribe("in/#", 1, v);
    await using pub = await connectClient(b.port, { clientId: "pub" });
    for (const m of ["a", "b", "c", "d"]) await pub.publishAsync("in/x", m, { qos: 1 });

    const a = await sub.expect("publish");
    const bb = await sub.expect("publish");
    assert.deepEqual([text(a), text(bb)], ["a", "b"]);
    await expectSilence(sub);
    await ack(sub, v, "puback", bb.messageId as number);
    assert.equal(text(await sub.expect("publish")), "c");
    await expectSilence(sub, 150);
    await ack(sub, v, "puback", a.messageId as number);
    assert.equal(text(await sub.expect("publish")), "d");
  });
}

Deno.test("Maximum Packet Size from the client: a larger message is skipped for that client only", async () => {
  // [MQTT-3.1.2-24] never send a packet larger than the client's Maximum Packet Size;
  // [MQTT-3.1.2-25] discard it and behave as if it had been sent.
  await using b = await startBroker();
  await using small = await RawClient.connect(b.port, 5);
  // Receive Maximum 1 shows the skipped QoS 1 message does not hold the only slot.
  await small.handshake("small", 5, { properties: { maximumPacketSize: 64, receiveMaximum: 1 } });
  await small.subscribe("size/#", 1);
  await using big = await subscriber(b.port, "size/#", 1, { clientId: "big" });
  await using pub = await connectClient(b.port, { clientId: "pub" });

  const large = "L".repeat(100);
  await pub.publishAsync("size/a", large, { qos: 1 });
  await pub.publishAsync("size/a", large, { qos: 0 });
  await pub.publishAsync("size/a", "fits-0", { qos: 0 });
  await pub.publishAsync("size/a", "fits-1", { qos: 1 });

  const got = [
    await big.inbox.next(),
    await big.inbox.next(),
    await big.inbox.next(),
    await big.inbox.next(),
  ];
  assert.deepEqual(got.map((m) => m.payload), [large, large, "fits-0", "fits-1"]);

  assert.equal(text(await small.expect("publish")), "fits-0");
  const p = await small.expect("publish");
  assert.equal(text(p), "fits-1");
  await ack(small, 5, "puback", p.messageId as number);
  // The skipped message is gone for this client, not postponed.
  await expectSilence(small);
});

for (const policy of ["newest", "oldest"] as const) {
  const expected = policy === "newest" ? ["m1", "m2", "m3"] : ["m3", "m4", "m5"];
  Deno.test(
    `max_queued_messages 3 with queue_drop_policy "${policy}": ${
      expected.join(", ")
    } arrive after reconnect`,
    async () => {
      await using b = await startBroker({
        limits: { max_queued_messages: 3, queue_drop_policy: policy },
      });
      await using s1 = await RawClient.connect(b.port, 5);
      const persistent = { properties: { sessionExpiryInterval: 60 } };
      await s1.handshake("away", 5, persistent);
      await s1.subscribe("full/#", 1);
      await s1.sendPacket({ cmd: "disconnect" }, 5);
      await s1.expectClosed();

      await using pub = await connectClient(b.port, { clientId: "pub" });
      for (let i = 1; i <= 5; i++) await pub.publishAsync("full/x", `m${i}`, { qos: 1 });

      await using s2 = await RawClient.connect(b.port, 5);
      await s2.handshake("away", 5, { ...persistent, clean: false });
      const got: string[] = [];
      for (let i = 0; i < 3; i++) {
        const p = await s2.expect("publish");
        got.push(text(p));
        await ack(s2, 5, "puback", p.messageId as number);
      }
      assert.deepEqual(got, expected);
      await expectSilence(s2);
    },
  );
}

Deno.test("more unreleased QoS 2 messages than the broker's Receive Maximum: DISCONNECT 0x93", async () => {
  await using b = await startBroker({ limits: { receive_maximum: 2 } });
  await using other = await subscriber(b.port, "rx/#", 1, { clientId: "other" });

  await using c = await RawClient.connect(b.port, 5);
  const connack = await c.handshake("greedy", 5);
  assert.equal((connack.properties as Record<string, unknown>).receiveMaximum, 2);
  for (const id of [1, 2]) {
    await c.sendPacket({ cmd: "publish", topic: "rx/a", payload: "x", qos: 2, messageId: id }, 5);
    await c.expect("pubrec");
  }
  // A QoS 2 flow finished with PUBREL no longer counts.
  await ack(c, 5, "pubrel", 1);
  await c.expect("pubcomp");
  await c.sendPacket({ cmd: "publish", topic: "rx/a", payload: "x", qos: 2, messageId: 3 }, 5);
  await c.expect("pubrec");
  await c.sendPacket({ cmd: "publish", topic: "rx/a", payload: "x", qos: 2, messageId: 4 }, 5);
  const d = await c.expect("disconnect");
  assert.equal(d.reasonCode, 0x93);
  await c.expectClosed();

  for (let i = 0; i < 3; i++) assert.equal((await other.inbox.next()).payload, "x");
  await other.publishAsync("rx/b", "still working", { qos: 1 });
  assert.equal((await other.inbox.next()).payload, "still working");
});
