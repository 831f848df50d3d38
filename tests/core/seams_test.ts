/**
 * The seams of the core, observed from outside: every message published on a
 * node (client publishes and wills alike) reaches the topic log; a durable
 * store receives every session and retained change, and a broker started on
 * that store resumes the sessions and retained messages of the one before.
 */
import assert from "node:assert/strict";
import { MemorySink, MemoryStore } from "../../mod.ts";
import { connectClient, delay, RawClient, startBroker, subscriber } from "../helpers/broker.ts";
import { loadRetained } from "../store/fixtures.ts";

const text = (b: Uint8Array) => new TextDecoder().decode(b);

Deno.test("the sink sees client publishes and wills, with who published them", async () => {
  const sink = new MemorySink();
  await using b = await startBroker({}, { sink });
  await using pub = await connectClient(b.port, { clientId: "p1", username: "ann" });
  await pub.publishAsync("log/a", "one", { qos: 1 });
  const w = await RawClient.connect(b.port, 5);
  await w.handshake("dying", 5, {
    will: { topic: "log/will", payload: "gone", qos: 0, retain: false },
  });
  await w.send([0xe0, 0x01, 0x04]); // DISCONNECT 0x04: disconnect with will
  await w.expectClosed();
  await delay(50);
  const seen = sink.records.map((
    r,
  ) => [r.msg.topic, text(r.msg.payload), r.info.kind, r.info.clientId]);
  assert.deepEqual(seen, [
    ["log/a", "one", "client", "p1"],
    ["log/will", "gone", "will", "dying"],
  ]);
  assert.equal(sink.records[0].info.username, "ann");
});

Deno.test("a broker on the same durable store resumes sessions, queues and retained messages", async () => {
  const store = new MemoryStore(true);
  {
    await using b = await startBroker({}, { store });
    const sub = await connectClient(b.port, {
      clientId: "keeper",
      username: "kim",
      clean: false,
      properties: { sessionExpiryInterval: 600 },
    });
    await sub.subscribeAsync("q/#", { qos: 2 });
    sub.end(true);
    await delay(50);
    await using pub = await connectClient(b.port, { clientId: "pub" });
    await pub.publishAsync("q/1", "first", { qos: 1 });
    await pub.publishAsync("q/2", "second", { qos: 2 });
    await pub.publishAsync("r/kept", "retained", { qos: 1, retain: true });
    // The PUBACKs above came after the store write: the state is there now.
    const state = await store.loadSession("keeper");
    assert.ok(state !== null);
    assert.equal(state.owner, "kim");
    assert.deepEqual(state.subscriptions.map((s) => s.key), ["q/#"]);
    assert.deepEqual(state.queue.map((q) => text(q.msg.payload)), ["first", "second"]);
    assert.deepEqual((await loadRetained(store)).map((m) => m.topic), ["r/kept"]);
  }
  // A new broker process on the same store.
  await using b2 = await startBroker({}, { store });
  const c = await RawClient.connect(b2.port, 5);
  const ack = await c.handshake("keeper", 5, {
    clean: false,
    username: "kim",
    properties: { sessionExpiryInterval: 600 },
  });
  assert.equal(ack.sessionPresent, true);
  const m1 = await c.expect("publish");
  const m2 = await c.expect("publish");
  assert.deepEqual([text(m1.payload as Uint8Array), text(m2.payload as Uint8Array)], [
    "first",
    "second",
  ]);
  await c.sendPacket({ cmd: "puback", messageId: m1.messageId });
  await c.sendPacket({ cmd: "pubrec", messageId: m2.messageId });
  await c.expect("pubrel");
  await c.sendPacket({ cmd: "pubcomp", messageId: m2.messageId });
  await c.sendPacket({ cmd: "disconnect" });
  await c.expectClosed();
  // Acknowledged deliveries left the store; the session stays (expiry 600 s).
  await delay(20);
  const after = await store.loadSession("keeper");
  assert.equal(after?.queue.length, 0);
  assert.deepEqual(after?.inflight.map((f) => [f.packetId, f.released, f.qos]), []);
  // The retained message survived, and the owner is still enforced after the restart.
  await using late = await subscriber(b2.port, "r/#", 1, { clientId: "late" });
  assert.equal((await late.inbox.next()).payload, "retained");
  await assert.rejects(
    connectClient(b2.port, { clientId: "keeper", username: "eve", clean: false }),
    /Not authorized/i,
  );
});

Deno.test("a session that ends is deleted from the durable store", async () => {
  const store = new MemoryStore(true);
  await using b = await startBroker({}, { store });
  const c = await connectClient(b.port, {
    clientId: "short",
    clean: false,
    properties: { sessionExpiryInterval: 600 },
  });
  await c.subscribeAsync("x", { qos: 1 });
  await c.endAsync();
  await delay(20);
  assert.ok((await store.loadSession("short")) !== null);
  // Clean Start 1 discards it.
  await using _again = await connectClient(b.port, { clientId: "short", clean: true });
  await delay(20);
  assert.equal(await store.loadSession("short"), null);
});
