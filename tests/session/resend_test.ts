/**
 * What a persistent session sends again when its client reconnects: the messages
 * still unacknowledged, in order, with DUP set, within the new connection's
 * Receive Maximum, and even when they expired meanwhile.
 */
import assert from "node:assert/strict";
import { connectClient, expectSilence, RawClient, startBroker } from "../helpers/broker.ts";

type Fields = Awaited<ReturnType<RawClient["expect"]>>;

function text(p: Fields): string {
  return new TextDecoder().decode(p.payload as Uint8Array);
}

/** A persistent MQTT 5 session for `id`, subscribed to `filter` at `qos`. */
async function persistentSubscriber(
  port: number,
  id: string,
  receiveMaximum: number,
  filter: string,
  qos: 1 | 2,
): Promise<RawClient> {
  const c = await RawClient.connect(port, 5);
  await c.handshake(id, 5, {
    clean: true,
    properties: { sessionExpiryInterval: 300, receiveMaximum },
  });
  await c.sendPacket({
    cmd: "subscribe",
    messageId: 1,
    subscriptions: [{ topic: filter, qos, nl: false, rap: false, rh: 0 }],
  });
  await c.expect("suback");
  return c;
}

/** Reconnects `id` to its session with Receive Maximum `receiveMaximum`. */
async function resume(port: number, id: string, receiveMaximum: number): Promise<RawClient> {
  const c = await RawClient.connect(port, 5);
  const ack = await c.handshake(id, 5, {
    clean: false,
    properties: { sessionExpiryInterval: 300, receiveMaximum },
  });
  assert.equal(ack.sessionPresent, true);
  return c;
}

Deno.test("after a reconnect the unacknowledged messages are resent within the new Receive Maximum, the rest as PUBACKs free room [MQTT-3.3.4-9]", async () => {
  await using b = await startBroker();
  const first = await persistentSubscriber(b.port, "rs-window", 10, "rs/w", 1);
  await using pub = await connectClient(b.port, { clientId: "rs-pub" });
  for (const m of ["1", "2", "3", "4", "5"]) await pub.publishAsync("rs/w", m, { qos: 1 });
  const ids: number[] = [];
  for (let i = 0; i < 5; i++) ids.push((await first.expect("publish")).messageId as number);
  await first[Symbol.asyncDispose]();

  await using again = await resume(b.port, "rs-window", 2);
  const a = await again.expect("publish");
  const c = await again.expect("publish");
  assert.deepEqual([text(a), text(c)], ["1", "2"]);
  assert.deepEqual([a.messageId, c.messageId], ids.slice(0, 2));
  assert.equal(a.dup, true);
  // Two unacknowledged: the window is full.
  await expectSilence(again);
  // A message published now waits behind the resends.
  await pub.publishAsync("rs/w", "6", { qos: 1 });
  await expectSilence(again, 150);

  await again.sendPacket({ cmd: "puback", messageId: a.messageId, reasonCode: 0 });
  const third = await again.expect("publish");
  assert.equal(text(third), "3");
  assert.equal(third.messageId, ids[2]);
  assert.equal(third.dup, true);
  await expectSilence(again, 150);

  // The rest, in order: resends first, then the new message (not a resend).
  const rest: string[] = [];
  let last = third;
  for (const expected of ["4", "5", "6"]) {
    await again.sendPacket({ cmd: "puback", messageId: last.messageId, reasonCode: 0 });
    last = await again.expect("publish");
    rest.push(`${text(last)}:${last.dup}`);
    assert.equal(text(last), expected);
  }
  assert.deepEqual(rest, ["4:true", "5:true", "6:false"]);
});

Deno.test("after a reconnect a released QoS 2 message holds its slot until PUBCOMP: its PUBREL goes first, the next PUBLISH after PUBCOMP", async () => {
  await using b = await startBroker();
  const first = await persistentSubscriber(b.port, "rs-rel", 10, "rs/q2", 2);
  await using pub = await connectClient(b.port, { clientId: "rs-pub2" });
  await pub.publishAsync("rs/q2", "x", { qos: 2 });
  await pub.publishAsync("rs/q2", "y", { qos: 2 });
  const x = await first.expect("publish");
  const y = await first.expect("publish");
  // x is received (PUBREC) and released (PUBREL), but not completed before the link drops.
  await first.sendPacket({ cmd: "pubrec", messageId: x.messageId, reasonCode: 0 });
  await first.expect("pubrel");
  await first[Symbol.asyncDispose]();

  await using again = await resume(b.port, "rs-rel", 1);
  const rel = await again.expect("pubrel");
  assert.equal(rel.messageId, x.messageId);
  await expectSilence(again);
  await again.sendPacket({ cmd: "pubcomp", messageId: x.messageId, reasonCode: 0 });
  const resent = await again.expect("publish");
  assert.equal(text(resent), "y");
  assert.equal(resent.messageId, y.messageId);
  assert.equal(resent.dup, true);
});

Deno.test("a message in flight that expires before the client is back is still resent, with a Message Expiry Interval of 1 [MQTT-4.3.3-7]", async () => {
  await using b = await startBroker();
  const first = await persistentSubscriber(b.port, "rs-exp", 10, "rs/e", 2);
  await using pub = await connectClient(b.port, { clientId: "rs-pub3" });
  await pub.publishAsync("rs/e", "short", {
    qos: 2,
    properties: { messageExpiryInterval: 1 },
  });
  const sent = await first.expect("publish");
  assert.equal((sent.properties as Record<string, unknown>).messageExpiryInterval, 1);
  await first[Symbol.asyncDispose]();
  await new Promise((r) => setTimeout(r, 1_500));

  await using again = await resume(b.port, "rs-exp", 10);
  const resent = await again.expect("publish");
  assert.equal(text(resent), "short");
  assert.equal(resent.messageId, sent.messageId);
  assert.equal(resent.dup, true);
  assert.equal((resent.properties as Record<string, unknown>).messageExpiryInterval, 1);
  // The flow completes on the same packet id.
  await again.sendPacket({ cmd: "pubrec", messageId: resent.messageId, reasonCode: 0 });
  await again.expect("pubrel");
  await again.sendPacket({ cmd: "pubcomp", messageId: resent.messageId, reasonCode: 0 });
  await expectSilence(again, 150);
});

Deno.test("a queued message that expires before its client is back is still dropped", async () => {
  await using b = await startBroker();
  const first = await persistentSubscriber(b.port, "rs-q", 10, "rs/qe", 1);
  await first[Symbol.asyncDispose]();
  await using pub = await connectClient(b.port, { clientId: "rs-pub4" });
  await pub.publishAsync("rs/qe", "gone", { qos: 1, properties: { messageExpiryInterval: 1 } });
  await pub.publishAsync("rs/qe", "kept", { qos: 1 });
  await new Promise((r) => setTimeout(r, 1_500));

  await using again = await resume(b.port, "rs-q", 10);
  const p = await again.expect("publish");
  assert.equal(text(p), "kept");
  assert.equal(p.dup, false);
  await expectSilence(again, 150);
});
