/**
 * MQTT 5.0 conformance audit, subscribe side (sections 3.8 to 3.11 and 4.7 of the
 * specification): the server-applicable normative statements no other test covered, each checked
 * over a real socket. Raw bytes where a normal client would refuse to send the bad input.
 */
import assert from "node:assert/strict";
import { Message } from "../../src/protocol/message.ts";
import {
  collect,
  connectClient,
  expectSilence,
  type Packet,
  RawClient,
  receivedBefore,
  startBroker,
} from "../helpers/broker.ts";
import { assertRefused, bystanders, frame, str, varint } from "../helpers/wire.ts";

type Fields = Packet & Record<string, unknown>;

/** SUBSCRIBE bytes: packet id, raw property bytes (MQTT 5), then filter/options pairs. */
function subscribeBytes(
  id: number,
  pairs: [string | Uint8Array, number][],
  props: number[] | null = [],
  flags = 0x02,
): Uint8Array {
  const body = [id >> 8, id & 0xff];
  if (props !== null) body.push(...varint(props.length), ...props);
  for (const [f, o] of pairs) body.push(...str(f), o);
  return frame(0x80 | flags, body);
}

/** UNSUBSCRIBE bytes (props null for 3.1.1). */
function unsubscribeBytes(
  id: number,
  filters: (string | Uint8Array)[],
  props: number[] | null = [],
  flags = 0x02,
): Uint8Array {
  const body = [id >> 8, id & 0xff];
  if (props !== null) body.push(...varint(props.length), ...props);
  for (const f of filters) body.push(...str(f));
  return frame(0xa0 | flags, body);
}

function text(p: Fields): string {
  return new TextDecoder().decode(p.payload as Uint8Array);
}

const BAD_UTF8 = new Uint8Array([0x61, 0x2f, 0xc3, 0x28]);
const WITH_NUL = new Uint8Array([0x61, 0x00, 0x62]);

// ---- SUBSCRIBE ------------------------------------------------------------------------------

Deno.test("[MQTT-3.8.4-1, MQTT-3.8.4-2] each SUBSCRIBE gets its SUBACK with the same Packet Identifier, pipelined ones in order", async () => {
  for (const v of [4, 5] as const) {
    await using b = await startBroker();
    await using c = await RawClient.connect(b.port, v);
    await c.handshake(`ids-${v}`, v);
    const ids = [0xbeef, 1, 65535, 0x0100];
    const props = v === 5 ? [] : null;
    const bytes = ids.map((id, i) => subscribeBytes(id, [[`ids/${i}`, 1]], props));
    await c.send(bytes.flatMap((x) => [...x]));
    for (const id of ids) {
      const ack = await c.expect("suback");
      assert.equal(ack.messageId, id);
      assert.deepEqual(ack.granted, [1]);
    }
  }
});

Deno.test("[MQTT-3.8.3-1] a SUBSCRIBE whose Topic Filter is ill-formed UTF-8 is malformed: DISCONNECT 0x81 (3.1.1: a close)", async () => {
  await assertRefused(
    subscribeBytes(1, [[BAD_UTF8, 0]]),
    0x81,
    { v4Bytes: subscribeBytes(1, [[BAD_UTF8, 0]], null) },
  );
});

Deno.test("[MQTT-4.7.3-2] a SUBSCRIBE whose Topic Filter contains U+0000 is malformed: DISCONNECT 0x81 (3.1.1: a close)", async () => {
  await assertRefused(
    subscribeBytes(1, [[WITH_NUL, 0]]),
    0x81,
    { v4Bytes: subscribeBytes(1, [[WITH_NUL, 0]], null) },
  );
});

for (const bit of [0x40, 0x80]) {
  Deno.test(`[MQTT-3.8.3-5] a SUBSCRIBE with reserved option bit 0x${bit.toString(16)} set is malformed: DISCONNECT 0x81`, async () => {
    await assertRefused(subscribeBytes(1, [["ok/1", 1], ["ok/2", 1 | bit]]), 0x81);
  });
}

Deno.test("3.8.3.1: Retain Handling 3 and Maximum QoS 3 are Protocol Errors: DISCONNECT 0x82", async () => {
  await assertRefused(subscribeBytes(1, [["rh", 0x30]]), 0x82);
  await assertRefused(subscribeBytes(1, [["q3", 0x03]]), 0x82);
});

Deno.test("3.8.2.1.2: a Subscription Identifier of 0, or given twice, is a Protocol Error: DISCONNECT 0x82", async () => {
  await assertRefused(subscribeBytes(1, [["sid", 0]], [0x0b, 0x00]), 0x82);
  await assertRefused(subscribeBytes(1, [["sid", 0]], [0x0b, 0x01, 0x0b, 0x02]), 0x82);
});

Deno.test("[MQTT-3.8.4-4] replacing a subscription loses no publication: every QoS 1 message published meanwhile arrives once, in order", async () => {
  await using b = await startBroker();
  await using sub = await connectClient(b.port, { clientId: "replace-sub" });
  const inbox = collect(sub);
  await sub.subscribeAsync("rep/#", { qos: 1 });
  await using pub = await connectClient(b.port, { clientId: "replace-pub" });
  const n = 200;
  const published = (async () => {
    for (let i = 0; i < n; i++) await pub.publishAsync("rep/x", String(i), { qos: 1 });
    await pub.publishAsync("end", "", { qos: 1 });
  })();
  await sub.subscribeAsync("end", { qos: 1 });
  // Resubscribe to the same filter (changing its QoS and options) while the stream runs.
  for (let k = 0; k < 20; k++) {
    await sub.subscribeAsync("rep/#", { qos: (k % 2 + 1) as 1 | 2, rap: k % 2 === 0 });
  }
  await published;
  const got = (await receivedBefore(inbox)).map((m) => Number(m.payload));
  assert.deepEqual(got, Array.from({ length: n }, (_, i) => i));
});

Deno.test("[MQTT-3.8.4-5, MQTT-3.10.4-6] a filter given twice in one SUBSCRIBE or UNSUBSCRIBE is handled as two packets in a row", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("twice");
  await c.send(subscribeBytes(1, [["tw/#", 0], ["tw/#", 1], ["end", 0]]));
  assert.deepEqual((await c.expect("suback")).granted, [0, 1, 0]);
  await using pub = await connectClient(b.port, { clientId: "tw-pub" });
  await pub.publishAsync("tw/x", "m", { qos: 1 });
  await pub.publishAsync("end", "", { qos: 0 });
  // One subscription, the second one's QoS.
  const m = await c.expect("publish");
  assert.equal(m.qos, 1);
  await c.sendPacket({ cmd: "puback", messageId: m.messageId });
  assert.equal((await c.expect("publish")).topic, "end");
  await c.send(unsubscribeBytes(2, ["tw/#", "tw/#"]));
  assert.deepEqual((await c.expect("unsuback")).granted, [0x00, 0x11]);
});

// ---- UNSUBSCRIBE ----------------------------------------------------------------------------

Deno.test("[MQTT-3.10.1-1] an UNSUBSCRIBE with reserved header flags 0000 is malformed: DISCONNECT 0x81 (3.1.1: a close)", async () => {
  await assertRefused(
    unsubscribeBytes(1, ["a"], [], 0x00),
    0x81,
    { v4Bytes: unsubscribeBytes(1, ["a"], null, 0x00) },
  );
});

Deno.test("[MQTT-3.10.3-1] an UNSUBSCRIBE whose Topic Filter is ill-formed UTF-8 is malformed: DISCONNECT 0x81 (3.1.1: a close)", async () => {
  await assertRefused(
    unsubscribeBytes(1, ["ok", BAD_UTF8]),
    0x81,
    { v4Bytes: unsubscribeBytes(1, [BAD_UTF8], null) },
  );
});

Deno.test("[MQTT-3.10.3-2] an UNSUBSCRIBE without a Topic Filter is a Protocol Error: DISCONNECT 0x82 (3.1.1: a close)", async () => {
  await assertRefused(unsubscribeBytes(1, []), 0x82, {
    v4Bytes: unsubscribeBytes(1, [], null),
  });
});

Deno.test("[MQTT-3.10.4-1] UNSUBSCRIBE compares filters character by character: a filter that only matches or overlaps removes nothing", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("exact");
  await c.sendPacket({
    cmd: "subscribe",
    messageId: 1,
    subscriptions: [{ topic: "a/b", qos: 0 }, { topic: "x/+", qos: 0 }, { topic: "end", qos: 0 }],
  });
  await c.expect("suback");
  await c.sendPacket({
    cmd: "unsubscribe",
    messageId: 2,
    unsubscriptions: ["a/+", "a/#", "x/b", "x/#", "A/b", "a/b/"],
  });
  const ack = await c.expect("unsuback");
  assert.deepEqual(ack.granted, [0x11, 0x11, 0x11, 0x11, 0x11, 0x11]);
  await using pub = await connectClient(b.port, { clientId: "exact-pub" });
  for (const t of ["a/b", "x/b", "end"]) await pub.publishAsync(t, t, { qos: 1 });
  assert.deepEqual(
    [await c.expect("publish"), await c.expect("publish"), await c.expect("publish")].map((p) =>
      p.topic
    ),
    ["a/b", "x/b", "end"],
  );
  await c.sendPacket({ cmd: "unsubscribe", messageId: 3, unsubscriptions: ["x/+", "a/b"] });
  assert.deepEqual((await c.expect("unsuback")).granted, [0x00, 0x00]);
});

Deno.test("[MQTT-3.10.4-3] a QoS 2 delivery under way when its subscription is removed is completed: PUBREC still gets PUBREL", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("unsub-q2");
  await c.subscribe("q2/#", 2);
  await using pub = await connectClient(b.port, { clientId: "q2-pub" });
  await pub.publishAsync("q2/x", "in flight", { qos: 2 });
  const p = await c.expect("publish");
  assert.equal(text(p), "in flight");
  await c.sendPacket({ cmd: "unsubscribe", messageId: 2, unsubscriptions: ["q2/#"] });
  assert.deepEqual((await c.expect("unsuback")).granted, [0]);
  await c.sendPacket({ cmd: "pubrec", messageId: p.messageId });
  const rel = await c.expect("pubrel");
  assert.equal(rel.messageId, p.messageId);
  assert.equal(rel.reasonCode ?? 0, 0);
  await c.sendPacket({ cmd: "pubcomp", messageId: p.messageId });
  await pub.publishAsync("q2/x", "after", { qos: 2 });
  await expectSilence(c, 150);
});

Deno.test("[MQTT-3.10.4-3] a QoS 1 message sent but unacknowledged when its subscription is removed is resent on reconnect", async () => {
  await using b = await startBroker();
  const session = { clean: false, properties: { sessionExpiryInterval: 60 } };
  const c = await RawClient.connect(b.port, 5);
  await c.handshake("unsub-q1", 5, session);
  await c.subscribe("q1/#", 1);
  await using pub = await connectClient(b.port, { clientId: "q1-pub" });
  await pub.publishAsync("q1/x", "in flight", { qos: 1 });
  const p = await c.expect("publish");
  await c.sendPacket({ cmd: "unsubscribe", messageId: 2, unsubscriptions: ["q1/#"] });
  await c.expect("unsuback");
  await c[Symbol.asyncDispose]();
  await using again = await RawClient.connect(b.port, 5);
  const ack = await again.handshake("unsub-q1", 5, session);
  assert.equal(ack.sessionPresent, true);
  const resent = await again.expect("publish");
  assert.equal(text(resent), "in flight");
  assert.equal(resent.messageId, p.messageId);
  assert.equal(resent.dup, true);
});

Deno.test("[MQTT-3.10.4-4, MQTT-3.10.4-5] UNSUBACK carries the UNSUBSCRIBE's Packet Identifier, also when nothing was removed", async () => {
  for (const v of [4, 5] as const) {
    await using b = await startBroker();
    await using c = await RawClient.connect(b.port, v);
    await c.handshake(`unsub-ids-${v}`, v);
    const props = v === 5 ? [] : null;
    const ids = [0xbeef, 65535, 1];
    await c.send(ids.flatMap((id) => [...unsubscribeBytes(id, ["never/subscribed"], props)]));
    for (const id of ids) {
      const ack = await c.expect("unsuback");
      assert.equal(ack.messageId, id);
      if (v === 5) assert.deepEqual(ack.granted, [0x11]);
    }
  }
});

// ---- 4.7 topic filters --------------------------------------------------------------------

Deno.test('4.7.1.3: "+" matches an empty level, and "+" alone does not match "/x"', async () => {
  await using b = await startBroker();
  await using sub = await connectClient(b.port, { clientId: "empty-lvl" });
  const inbox = collect(sub);
  await sub.subscribeAsync(["+", "+/x", "a/+/b", "end"], { qos: 1 });
  await using pub = await connectClient(b.port, { clientId: "empty-pub" });
  for (const t of ["/x", "a//b", "one", "x/y/z"]) await pub.publishAsync(t, t, { qos: 1 });
  await pub.publishAsync("end", "", { qos: 1 });
  const got = (await receivedBefore(inbox)).map((m) => m.topic);
  // "/x" matches "+/x" (once: "+" has one level), "a//b" matches "a/+/b", "one" matches "+".
  assert.deepEqual(got, ["/x", "a//b", "one"]);
});

// Clients cannot publish to "$" topics; the broker's own ones go through the router.
Deno.test('[MQTT-4.7.2-1] shared subscriptions whose filter starts with a wildcard do not get "$" topics either', async () => {
  await using b = await startBroker();
  await using sub = await connectClient(b.port, { clientId: "shared-dollar" });
  const inbox = collect(sub);
  await sub.subscribeAsync(
    ["$share/g/#", "$share/h/+/broker/uptime", "$share/k/$SYS/#", "end"],
    { qos: 0 },
  );
  for (const topic of ["$SYS/broker/uptime", "end"]) {
    const bytes = new TextEncoder().encode(topic);
    b.broker.router.publish(new Message(topic, bytes, bytes, 0, false, null, 0, ""));
  }
  const got = await receivedBefore(inbox);
  // Only "$share/k/$SYS/#" matches: one copy.
  assert.deepEqual(got.map((m) => m.topic), ["$SYS/broker/uptime"]);
});

Deno.test("[MQTT-3.8.3-3, MQTT-3.3.4-2, MQTT-3.3.4-3] overlapping subscriptions where one has No Local: the client's own message comes once, by the other subscription's QoS and identifier", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("nl-overlap");
  for (const [id, topic, qos, nl] of [[1, "nl/#", 2, true], [2, "nl/x", 0, false]] as const) {
    await c.sendPacket({
      cmd: "subscribe",
      messageId: id,
      properties: { subscriptionIdentifier: id },
      subscriptions: [{ topic, qos, nl }],
    });
    await c.expect("suback");
  }
  const ids = (p: Fields) => {
    const v = (p.properties as { subscriptionIdentifier?: number | number[] } | undefined)
      ?.subscriptionIdentifier;
    return v === undefined ? [] : (Array.isArray(v) ? [...v] : [v]).sort();
  };
  await c.send(frame(0x34, [...str("nl/x"), 0, 9, 0, ...new TextEncoder().encode("own")]));
  // Its PUBREC may come before or after the delivery.
  const nextPublish = async () => {
    for (;;) {
      const p = await c.next() as Fields | null;
      if (p === null) throw new Error("closed");
      if (p.cmd === "publish") return p;
      assert.equal(p.cmd, "pubrec");
    }
  };
  const own = await nextPublish();
  assert.equal(text(own), "own");
  assert.equal(own.qos, 0);
  assert.deepEqual(ids(own), [2]);
  await using pub = await connectClient(b.port, { clientId: "nl-other" });
  await pub.publishAsync("nl/x", "other", { qos: 2 });
  const other = await nextPublish();
  assert.equal(text(other), "other");
  assert.equal(other.qos, 2);
  assert.deepEqual(ids(other), [1, 2]);
});

Deno.test("[MQTT-3.1.2-24] a SUBACK or UNSUBACK larger than the client's Maximum Packet Size is not sent: DISCONNECT 0x95", async () => {
  await using b = await startBroker();
  const filters = (n: number) => Array.from({ length: n }, (_, i) => `f/${i}`);
  for (const kind of ["subscribe", "unsubscribe"] as const) {
    await using c = await RawClient.connect(b.port, 5);
    await c.handshake(`small-${kind}`, 5, { properties: { maximumPacketSize: 64 } });
    // 40 codes: a 45-byte SUBACK fits.
    await c.sendPacket({
      cmd: "subscribe",
      messageId: 1,
      subscriptions: filters(40).map((topic) => ({ topic, qos: 0 })),
    });
    assert.equal(((await c.expect("suback")).granted as number[]).length, 40);
    // 70 codes: 75 bytes.
    await c.sendPacket(
      kind === "subscribe"
        ? {
          cmd: "subscribe",
          messageId: 2,
          subscriptions: filters(70).map((topic) => ({ topic, qos: 0 })),
        }
        : { cmd: "unsubscribe", messageId: 2, unsubscriptions: filters(70) },
    );
    const d = await c.expect("disconnect");
    assert.equal(d.reasonCode, 0x95);
    assert.ok((d.length as number) <= 64);
    await c.expectClosed();
  }
  await bystanders(b.port);
});
