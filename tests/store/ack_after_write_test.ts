/**
 * What an acknowledgement promises with a durable store, observed on a store
 * whose writes are slow (so "not written yet" lasts long enough to look at):
 * with `sync = "ack-after-write"` every packet that lets a client forget
 * something (PUBACK/PUBREC to a publisher, PUBCOMP to a publisher, PUBREL to
 * a subscriber) leaves only once the store holds the state a restart needs;
 * with `sync = "async"` acknowledgements do not wait.
 */
import assert from "node:assert/strict";
import { delay, RawClient, startBroker } from "../helpers/broker.ts";
import { withTempDir } from "../helpers/fs.ts";
import { SlowStore } from "../helpers/slow_store.ts";

const WRITE_DELAY = 150;
const PERSISTENT = { clean: false, properties: { sessionExpiryInterval: 600 } };

/** Polls until `check` holds (the slow store catches up), failing after `ms`. */
async function eventually(check: () => Promise<boolean>, what: string, ms = 3000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await delay(10);
  }
}

async function offlineSubscriber(port: number, id: string, filter: string, qos: 1 | 2) {
  const s = await RawClient.connect(port);
  await s.handshake(id, 5, PERSISTENT);
  await s.sendPacket({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic: filter, qos }] });
  await s.expect("suback");
  await s.sendPacket({ cmd: "disconnect" });
  await s.expectClosed();
}

for (const qos of [1, 2] as const) {
  Deno.test(`ack-after-write: the QoS ${qos} acknowledgement comes once the store holds the queued message`, () =>
    withTempDir(async (dir) => {
      const store = new SlowStore(dir, WRITE_DELAY);
      await using b = await startBroker({ storage: { sync: "ack-after-write" } }, { store });
      await offlineSubscriber(b.port, "keeper", "q/#", qos);
      await eventually(async () => (await store.loadSession("keeper")) !== null, "stored");
      await using pub = await RawClient.connect(b.port);
      await pub.handshake("pub");
      const sent = Date.now();
      await pub.sendPacket({ cmd: "publish", topic: "q/1", payload: "m", qos, messageId: 9 });
      await pub.expect(qos === 1 ? "puback" : "pubrec");
      const waited = Date.now() - sent;
      // The message is in the database at the moment the publisher may forget it.
      const queue = (await store.loadSession("keeper"))!.queue;
      assert.deepEqual(queue.map((q) => new TextDecoder().decode(q.msg.payload)), ["m"]);
      assert.ok(waited >= WRITE_DELAY - 10, `acknowledged after ${waited} ms`);
    }));
}

Deno.test("async: acknowledgements do not wait for the store (the write may come later)", () =>
  withTempDir(async (dir) => {
    const store = new SlowStore(dir, WRITE_DELAY);
    await using b = await startBroker({ storage: { sync: "async" } }, { store });
    await offlineSubscriber(b.port, "keeper", "q/#", 1);
    await eventually(async () => (await store.loadSession("keeper")) !== null, "stored");
    await using pub = await RawClient.connect(b.port);
    await pub.handshake("pub");
    for (const [i, qos] of [[1, 1], [2, 2]] as const) {
      const sent = Date.now();
      await pub.sendPacket({ cmd: "publish", topic: `q/${i}`, payload: "m", qos, messageId: i });
      await pub.expect(qos === 1 ? "puback" : "pubrec");
      const waited = Date.now() - sent;
      assert.ok(waited < WRITE_DELAY / 2, `acknowledged after ${waited} ms`);
    }
    // Not yet in the database when acknowledged: a crash now would lose them. They get there.
    assert.equal((await store.loadSession("keeper"))!.queue.length, 0);
    await eventually(
      async () => (await store.loadSession("keeper"))!.queue.length === 2,
      "written",
    );
  }));

Deno.test("ack-after-write: PUBCOMP comes once the store has forgotten the released packet id", () =>
  withTempDir(async (dir) => {
    const store = new SlowStore(dir, WRITE_DELAY);
    await using b = await startBroker({ storage: { sync: "ack-after-write" } }, { store });
    await using pub = await RawClient.connect(b.port);
    await pub.handshake("pub", 5, PERSISTENT);
    await pub.sendPacket({ cmd: "publish", topic: "nobody", payload: "m", qos: 2, messageId: 7 });
    await pub.expect("pubrec");
    const ids = async () => (await store.loadSession("pub"))?.incomingQos2 ?? [];
    await eventually(async () => (await ids()).includes(7), "packet id 7 is stored");
    await pub.sendPacket({ cmd: "pubrel", messageId: 7 });
    await pub.expect("pubcomp");
    // After PUBCOMP the publisher may use 7 for a new message: a restart that still knew 7
    // would take that message for a resend and drop it.
    assert.deepEqual(await ids(), []);
  }));

Deno.test("ack-after-write: PUBREL to a subscriber comes once the store records its PUBREC", () =>
  withTempDir(async (dir) => {
    const store = new SlowStore(dir, WRITE_DELAY);
    await using b = await startBroker({ storage: { sync: "ack-after-write" } }, { store });
    await using sub = await RawClient.connect(b.port);
    await sub.handshake("sub", 5, PERSISTENT);
    await sub.sendPacket({
      cmd: "subscribe",
      messageId: 1,
      subscriptions: [{ topic: "t", qos: 2 }],
    });
    await sub.expect("suback");
    await using pub = await RawClient.connect(b.port);
    await pub.handshake("pub");
    await pub.sendPacket({ cmd: "publish", topic: "t", payload: "once", qos: 2, messageId: 1 });
    const m = await sub.expect("publish");
    const inflight = async () => (await store.loadSession("sub"))?.inflight ?? [];
    await eventually(async () => (await inflight()).length === 1, "the delivery is stored");
    await sub.sendPacket({ cmd: "pubrec", messageId: m.messageId });
    await sub.expect("pubrel");
    // The subscriber hands the message to its application on PUBREL and forgets the packet id
    // on PUBCOMP: a restart must resend PUBREL, never the PUBLISH (a second delivery).
    assert.deepEqual((await inflight()).map((f) => [f.packetId, f.released]), [
      [m.messageId, true],
    ]);
    await sub.sendPacket({ cmd: "pubcomp", messageId: m.messageId });
    await eventually(async () => (await inflight()).length === 0, "the delivery is done");
  }));

Deno.test("ack-after-write: SUBACK and UNSUBACK come once the store holds the change", () =>
  withTempDir(async (dir) => {
    const store = new SlowStore(dir, WRITE_DELAY);
    await using b = await startBroker({ storage: { sync: "ack-after-write" } }, { store });
    await using c = await RawClient.connect(b.port);
    await c.handshake("sub", 5, PERSISTENT);
    const keys = async () => (await store.loadSession("sub"))?.subscriptions.map((s) => s.key);
    await c.sendPacket({
      cmd: "subscribe",
      messageId: 1,
      subscriptions: [{ topic: "a/#", qos: 1 }, { topic: "b", qos: 2 }],
    });
    await c.expect("suback");
    // A subscription the client was told about survives a crash from now on.
    assert.deepEqual(await keys(), ["a/#", "b"]);
    await c.sendPacket({ cmd: "unsubscribe", messageId: 2, unsubscriptions: ["a/#"] });
    await c.expect("unsuback");
    assert.deepEqual(await keys(), ["b"]);
  }));
