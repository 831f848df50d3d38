/**
 * MQTT 5.0 conformance audit, delivery side (sections 4.3 to 4.6, 4.8 to 4.11 and 4.13 of the
 * specification): the server statements no other test covered, each checked over a real
 * socket. Statement ids are the specification's; the connection side is in
 * spec_audit_connect_test and spec_audit_connack_test.
 */
import assert from "node:assert/strict";
import {
  connectClient,
  delay,
  expectSilence,
  type Packet,
  RawClient,
  startBroker,
  subscriber,
} from "../helpers/broker.ts";
import { frame, str, varint } from "../helpers/wire.ts";

const enc = new TextEncoder();
type Fields = Packet & Record<string, unknown>;

function text(p: Fields): string {
  return new TextDecoder().decode(p.payload as Uint8Array);
}

/** A raw MQTT 5 client with a session of `expiry` seconds, subscribed to `filter` at `qos`. */
async function rawSubscriber(
  port: number,
  clientId: string,
  filter: string,
  qos: 0 | 1 | 2,
  expiry = 0,
): Promise<RawClient> {
  const c = await RawClient.connect(port, 5);
  await c.handshake(clientId, 5, { properties: { sessionExpiryInterval: expiry } });
  await c.subscribe(filter, qos);
  return c;
}

/** Reconnects `clientId` with Clean Start 0 and its session of `expiry` seconds. */
async function resume(port: number, clientId: string, expiry = 60): Promise<RawClient> {
  const c = await RawClient.connect(port, 5);
  const ack = await c.handshake(clientId, 5, {
    clean: false,
    properties: { sessionExpiryInterval: expiry },
  });
  assert.equal(ack.sessionPresent, true);
  return c;
}

/**
 * The next PUBLISH that reaches either of two clients, and which one got it. Polls each in
 * turn with short timeouts: a take that timed out consumes nothing.
 */
async function firstPublish(
  a: RawClient,
  b: RawClient,
  timeoutMs = 3000,
): Promise<{ got: RawClient; other: RawClient; p: Fields }> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    for (const [got, other] of [[a, b], [b, a]]) {
      const p = await got.next(25).catch(() => undefined);
      if (p === undefined) continue;
      if (p === null) throw new Error("a member's connection closed");
      assert.equal(p.cmd, "publish", JSON.stringify(p));
      return { got, other, p: p as Fields };
    }
  }
  throw new Error("no member got the message");
}

// ---- 4.3 QoS delivery protocols -----------------------------------------------------------

Deno.test("[MQTT-4.3.3-9] after the server's PUBREC with a code of 0x80 or more, the same Packet Identifier is a new message: delivered, and its PUBREL completed; a PUBREL for the refused one gets PUBCOMP 0x92", async () => {
  await using b = await startBroker();
  await using sub = await subscriber(b.port, "q2/#", 2, { clientId: "q2-sub" });
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("q2-pub");
  // "$" topics are refused for clients here: PUBREC 0x87.
  await c.sendPacket({ cmd: "publish", topic: "$q2/t", qos: 2, messageId: 6, payload: "no" });
  assert.deepEqual([(await c.expect("pubrec")).reasonCode], [0x87]);
  await c.sendPacket({ cmd: "pubrel", messageId: 6 });
  const comp = await c.expect("pubcomp");
  assert.deepEqual([comp.messageId, comp.reasonCode], [6, 0x92]);

  await c.sendPacket({ cmd: "publish", topic: "$q2/t", qos: 2, messageId: 5, payload: "no" });
  assert.equal((await c.expect("pubrec")).reasonCode, 0x87);
  // The same id again, DUP 0, to a topic it may publish to: a new message.
  await c.sendPacket({ cmd: "publish", topic: "q2/t", qos: 2, messageId: 5, payload: "yes" });
  const rec = await c.expect("pubrec");
  assert.deepEqual([rec.messageId, rec.reasonCode], [5, 0]);
  await c.sendPacket({ cmd: "pubrel", messageId: 5 });
  const done = await c.expect("pubcomp");
  assert.deepEqual([done.messageId, done.reasonCode], [5, 0]);
  assert.equal((await sub.inbox.next()).payload, "yes");
  await sub.inbox.none(200);
});

Deno.test("[MQTT-4.3.3-13] a QoS 2 message that expired on arrival (Message Expiry Interval 0) still gets its whole acknowledgement flow, and is not delivered", async () => {
  await using b = await startBroker();
  await using sub = await subscriber(b.port, "exp0/#", 2, { clientId: "exp-sub" });
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("exp-pub");
  const props = [0x02, 0, 0, 0, 0]; // Message Expiry Interval 0
  const publish = (dup: number) =>
    frame(0x34 | dup, [
      ...str("exp0/t"),
      0,
      9,
      ...varint(props.length),
      ...props,
      ...enc.encode("x"),
    ]);
  await c.send(publish(0));
  const rec = await c.expect("pubrec");
  assert.equal(rec.messageId, 9);
  assert.ok(
    (rec.reasonCode as number) < 0x80,
    `PUBREC 0x${(rec.reasonCode as number).toString(16)}`,
  );
  // Resent before PUBREL: PUBREC again [MQTT-4.3.3-10].
  await c.send(publish(0x08));
  assert.equal((await c.expect("pubrec")).messageId, 9);
  await c.sendPacket({ cmd: "pubrel", messageId: 9 });
  const comp = await c.expect("pubcomp");
  assert.deepEqual([comp.messageId, comp.reasonCode ?? 0], [9, 0]);
  await sub.inbox.none(200);
});

// ---- 4.4 message delivery retry -----------------------------------------------------------

Deno.test("[MQTT-4.4.0-2] a PUBACK with a code of 0x80 or more acknowledges the message: it is not resent on reconnect, while an unacknowledged one is", async () => {
  await using b = await startBroker();
  const s = await rawSubscriber(b.port, "nack", "nack/t", 1, 60);
  await using pub = await connectClient(b.port, { clientId: "nack-pub" });
  await pub.publishAsync("nack/t", "refused", { qos: 1 });
  await pub.publishAsync("nack/t", "unacked", { qos: 1 });
  const first = await s.expect("publish");
  assert.equal(text(first), "refused");
  await s.sendPacket({ cmd: "puback", messageId: first.messageId, reasonCode: 0x80 });
  assert.equal(text(await s.expect("publish")), "unacked");
  // The PUBACK was read before the socket closes: a PINGRESP after it proves it.
  await s.send([0xc0, 0]);
  await s.expect("pingresp");
  await s[Symbol.asyncDispose]();
  await using back = await resume(b.port, "nack");
  const again = await back.expect("publish");
  assert.deepEqual([text(again), again.dup], ["unacked", true]);
  await back.sendPacket({ cmd: "puback", messageId: again.messageId });
  await expectSilence(back, 300);
});

// ---- 4.6 message ordering -----------------------------------------------------------------

Deno.test("[MQTT-4.6.0-5, MQTT-4.6.0-6] messages queued while a subscriber was away and those published while it comes back arrive in the order they were published", async () => {
  await using b = await startBroker();
  const away = await rawSubscriber(b.port, "ord", "ord/t", 1, 60);
  await away.sendPacket({ cmd: "disconnect" });
  await away.expectClosed();
  await using pub = await connectClient(b.port, { clientId: "ord-pub" });
  for (let i = 0; i < 50; i++) await pub.publishAsync("ord/t", String(i), { qos: 1 });
  // Publishing goes on while the subscriber reconnects and its queue is sent.
  const more = (async () => {
    for (let i = 50; i < 100; i++) await pub.publishAsync("ord/t", String(i), { qos: 1 });
  })();
  const got: string[] = [];
  await using back = await connectClient(
    b.port,
    { clientId: "ord", clean: false, properties: { sessionExpiryInterval: 60 } },
    (client) => client.on("message", (_t, payload) => got.push(new TextDecoder().decode(payload))),
  );
  await more;
  const deadline = Date.now() + 5000;
  while (got.length < 100 && Date.now() < deadline) await delay(20);
  assert.deepEqual(got, Array.from({ length: 100 }, (_, i) => String(i)));
  void back;
});

// ---- 4.8 shared subscriptions -------------------------------------------------------------

Deno.test("[MQTT-4.8.2-3] each member of a share group gets messages at the QoS it was granted: the lower of its subscription's and the message's", async () => {
  await using b = await startBroker();
  await using low = await subscriber(b.port, "$share/g/sq/t", 0, { clientId: "low" });
  await using high = await subscriber(b.port, "$share/g/sq/t", 2, { clientId: "high" });
  await using pub = await connectClient(b.port, { clientId: "sq-pub" });
  const sent: [string, 1 | 2][] = [];
  for (let i = 0; i < 8; i++) sent.push([`m${i}`, i % 2 === 0 ? 1 : 2]);
  for (const [payload, qos] of sent) await pub.publishAsync("sq/t", payload, { qos });
  const deadline = Date.now() + 3000;
  const total = () => low.inbox.messages.length + high.inbox.messages.length;
  while (total() < sent.length && Date.now() < deadline) await delay(20);
  await delay(100);
  assert.equal(total(), sent.length, "each message once, to one member");
  const qosOf = new Map(sent);
  for (const m of low.inbox.messages) assert.equal(m.packet.qos, 0, m.payload);
  for (const m of high.inbox.messages) assert.equal(m.packet.qos, qosOf.get(m.payload), m.payload);
  assert.ok(low.inbox.messages.length > 0 && high.inbox.messages.length > 0, "one member got all");
});

Deno.test("[MQTT-4.8.2-4] a share group member whose connection drops with its session kept gets its unacknowledged message when it reconnects, and no other member gets it", async () => {
  await using b = await startBroker();
  const a = await rawSubscriber(b.port, "ma", "$share/g/sd/t", 1, 60);
  const c = await rawSubscriber(b.port, "mc", "$share/g/sd/t", 1, 60);
  await using pub = await connectClient(b.port, { clientId: "sd-pub" });
  await pub.publishAsync("sd/t", "one", { qos: 1 });
  const { got, other, p } = await firstPublish(a, c);
  assert.equal(text(p), "one");
  const gotId = got === a ? "ma" : "mc";
  await got[Symbol.asyncDispose](); // no DISCONNECT, no PUBACK
  await expectSilence(other, 400);
  await using back = await resume(b.port, gotId);
  const again = await back.expect("publish");
  assert.deepEqual([text(again), again.dup], ["one", true]);
  await back.sendPacket({ cmd: "puback", messageId: again.messageId });
  await expectSilence(other, 200);
  await other[Symbol.asyncDispose]();
});

for (const qos of [1, 2] as const) {
  const ack = qos === 1 ? "puback" : "pubrec";
  Deno.test(`[MQTT-4.8.2-6] a share group member answering QoS ${qos} with ${ack.toUpperCase()} 0x80: the message goes to no other member, not even when that member's session ends`, async () => {
    await using b = await startBroker();
    const a = await rawSubscriber(b.port, "na", "$share/g/sn/t", qos, 0);
    const c = await rawSubscriber(b.port, "nc", "$share/g/sn/t", qos, 0);
    await using pub = await connectClient(b.port, { clientId: "sn-pub" });
    await pub.publishAsync("sn/t", "refused", { qos });
    const { got, other, p } = await firstPublish(a, c);
    await got.sendPacket({ cmd: ack, messageId: p.messageId, reasonCode: 0x80 });
    await expectSilence(other, 300);
    // Its session ends (Session Expiry 0): what it had unacknowledged would go to another
    // member (section 4.8.2), but this one was acknowledged.
    await got.sendPacket({ cmd: "disconnect" });
    await got.expectClosed();
    await expectSilence(other, 400);
    await other[Symbol.asyncDispose]();
  });
}

Deno.test("4.8.2 (control for the test above): a member whose session ends with a QoS 1 message unacknowledged has it sent to another member", async () => {
  await using b = await startBroker();
  const a = await rawSubscriber(b.port, "ka", "$share/g/sk/t", 1, 0);
  const c = await rawSubscriber(b.port, "kc", "$share/g/sk/t", 1, 0);
  await using pub = await connectClient(b.port, { clientId: "sk-pub" });
  await pub.publishAsync("sk/t", "handed", { qos: 1 });
  const { got, other } = await firstPublish(a, c);
  await got.sendPacket({ cmd: "disconnect" });
  await got.expectClosed();
  assert.equal(text(await other.expect("publish")), "handed");
  await other[Symbol.asyncDispose]();
});
