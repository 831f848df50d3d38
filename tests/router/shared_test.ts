/**
 * Shared subscriptions ($share/{group}/{filter}) end to end: one delivery per
 * group per message, groups independent of each other and of plain
 * subscriptions, No Local refused, no retained messages at subscribe, and
 * members leaving.
 *
 * Every member also has a plain subscription to a marker topic; the marker is
 * published last, so when it has arrived at a member, every earlier message
 * for that member has arrived too.
 */
import assert from "node:assert/strict";
import type { IClientOptions, MqttClient } from "mqtt";
import {
  collect,
  connectClient,
  delay,
  type Inbox,
  RawClient,
  type Received,
  receivedBefore,
  startBroker,
  type TestBroker,
} from "../helpers/broker.ts";

const MARKER = "end";
type Client = MqttClient & AsyncDisposable;

/** Polls until `cond` holds (broker state changes after a socket event). */
async function waitFor(cond: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(10);
  }
}

/** Clients that are all closed when the scope ends. */
class Clients implements AsyncDisposable {
  readonly list: Client[] = [];

  async connect(b: TestBroker, opts: IClientOptions): Promise<{ c: Client; inbox: Inbox }> {
    const c = await connectClient(b.port, opts);
    this.list.push(c);
    return { c, inbox: collect(c) };
  }

  /** Connects a member subscribed to `shareFilter` (and the marker). */
  async member(
    b: TestBroker,
    clientId: string,
    shareFilter: string,
    opts: IClientOptions = {},
  ): Promise<{ c: Client; inbox: Inbox }> {
    const m = await this.connect(b, { clientId, ...opts });
    await m.c.subscribeAsync({ [shareFilter]: { qos: 1 }, [MARKER]: { qos: 1 } });
    return m;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    for (const c of this.list) await c[Symbol.asyncDispose]();
  }
}

/** Publishes `jobs/0..n-1` at QoS 1 (payload = index), then the marker. */
async function publishJobs(pub: MqttClient, n: number): Promise<void> {
  for (let i = 0; i < n; i++) await pub.publishAsync(`jobs/${i}`, String(i), { qos: 1 });
  await pub.publishAsync(MARKER, "", { qos: 1 });
}

/** Payloads as numbers, sorted. */
function indexes(ms: Received[]): number[] {
  return ms.map((m) => Number(m.payload)).sort((a, b) => a - b);
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

Deno.test("a shared subscription delivers each message to exactly one member of the group, spread over several members [4.8.2]", async () => {
  await using b = await startBroker();
  await using clients = new Clients();
  const filter = "$share/workers/jobs/+";
  const members = [
    await clients.member(b, "w1", filter),
    await clients.member(b, "w2", filter),
    // Shared subscriptions are an MQTT 5 feature, but a 3.1.1 client can join a group too.
    await clients.member(b, "w3", filter, { protocolVersion: 4 }),
  ];
  const { c: pub } = await clients.connect(b, { clientId: "pub" });
  await publishJobs(pub, 20);
  const got = await Promise.all(members.map((m) => receivedBefore(m.inbox)));
  // Every message exactly once across the group: no loss, no duplicate.
  assert.deepEqual(indexes(got.flat()), range(20));
  for (const ms of got) assert.ok(ms.every((m) => m.topic === `jobs/${m.payload}`));
  const served = got.filter((ms) => ms.length > 0).length;
  assert.ok(served > 1, `only ${served} member(s) got messages: ${got.map((ms) => ms.length)}`);
});

Deno.test("two share groups each get every message, and a plain subscriber gets every message too", async () => {
  await using b = await startBroker();
  await using clients = new Clients();
  const g1 = [
    await clients.member(b, "a1", "$share/g1/jobs/#"),
    await clients.member(b, "a2", "$share/g1/jobs/#"),
  ];
  // Same filter, different share name: a separate group.
  const g2 = [
    await clients.member(b, "b1", "$share/g2/jobs/#"),
    await clients.member(b, "b2", "$share/g2/jobs/#"),
  ];
  const plain = await clients.member(b, "p", "jobs/+");
  const { c: pub } = await clients.connect(b, { clientId: "pub" });
  await publishJobs(pub, 10);
  const union = async (g: { inbox: Inbox }[]) =>
    indexes((await Promise.all(g.map((m) => receivedBefore(m.inbox)))).flat());
  assert.deepEqual(await union(g1), range(10));
  assert.deepEqual(await union(g2), range(10));
  assert.deepEqual(indexes(await receivedBefore(plain.inbox)), range(10));
});

Deno.test("No Local on a shared subscription is a Protocol Error: DISCONNECT 0x82 [MQTT-3.8.3-4]", async () => {
  await using b = await startBroker();
  await using clients = new Clients();
  const bystander = await clients.member(b, "bystander", "$share/g/t");
  await using c = await RawClient.connect(b.port);
  await c.handshake("nolocal");
  await c.sendPacket({
    cmd: "subscribe",
    messageId: 1,
    subscriptions: [{ topic: "$share/g/t", qos: 1, nl: true }],
  });
  const d = await c.expect("disconnect");
  assert.equal(d.reasonCode, 0x82);
  await c.expectClosed();
  // The group keeps working for its other member.
  const { c: pub } = await clients.connect(b, { clientId: "pub" });
  await pub.publishAsync("t", "still", { qos: 1 });
  assert.equal((await bystander.inbox.next()).payload, "still");
});

Deno.test("retained messages are not sent when a shared subscription is made [3.3.1.3, 3.8.3.1]", async () => {
  await using b = await startBroker();
  await using clients = new Clients();
  const { c: pub } = await clients.connect(b, { clientId: "pub" });
  await pub.publishAsync("jobs/r", "retained", { qos: 1, retain: true });
  // Control: the retained message is there, a plain subscription gets it.
  const plain = await clients.member(b, "plain", "jobs/+");
  const member = await clients.member(b, "member", "$share/g/jobs/+");
  await pub.publishAsync(MARKER, "", { qos: 1 });
  assert.deepEqual((await receivedBefore(plain.inbox)).map((m) => m.payload), ["retained"]);
  assert.deepEqual(await receivedBefore(member.inbox), []);
  // Live messages still reach the group.
  await pub.publishAsync("jobs/r", "live", { qos: 1 });
  assert.equal((await member.inbox.next()).payload, "live");
});

Deno.test("a member that disconnects stops receiving; the remaining members get every message", async () => {
  await using b = await startBroker();
  await using clients = new Clients();
  const filter = "$share/workers/jobs/+";
  const m1 = await clients.member(b, "w1", filter);
  const m2 = await clients.member(b, "w2", filter);
  const m3 = await clients.member(b, "w3", filter);
  const subs = b.broker.router.subscriptionCount;
  await m3.c[Symbol.asyncDispose]();
  // Its session ends (no Session Expiry), so its subscriptions go with it.
  await waitFor(() => b.broker.router.subscriptionCount === subs - 2, "w3's subscriptions to end");
  const { c: pub } = await clients.connect(b, { clientId: "pub" });
  await publishJobs(pub, 10);
  const got = [await receivedBefore(m1.inbox), await receivedBefore(m2.inbox)];
  assert.deepEqual(indexes(got.flat()), range(10));
  assert.equal(m3.inbox.messages.length, 0);
});

Deno.test("an offline member whose session lives on is skipped; the online members get every message", async () => {
  await using b = await startBroker();
  await using clients = new Clients();
  const filter = "$share/workers/jobs/+";
  const m1 = await clients.member(b, "w1", filter);
  const m2 = await clients.member(b, "w2", filter);
  const persistent: IClientOptions = { clean: true, properties: { sessionExpiryInterval: 60 } };
  const m3 = await clients.member(b, "w3", filter, persistent);
  const connections = b.broker.core.connectionCount;
  await m3.c[Symbol.asyncDispose]();
  await waitFor(() => b.broker.core.connectionCount === connections - 1, "w3 to go offline");
  const { c: pub } = await clients.connect(b, { clientId: "pub" });
  await publishJobs(pub, 10);
  const got = [await receivedBefore(m1.inbox), await receivedBefore(m2.inbox)];
  assert.deepEqual(indexes(got.flat()), range(10));
  // Back online, w3 finds no job queued for it: only markers (the one queued
  // while it was away, and one published now) arrive.
  const back = await clients.connect(b, { clientId: "w3", clean: false });
  assert.equal(back.c.connected, true);
  await pub.publishAsync(MARKER, "", { qos: 1 });
  assert.deepEqual(await receivedBefore(back.inbox), []);
});

Deno.test("MQTT 5: unsubscribing from a shared subscription answers per filter and moves all messages to the others [MQTT-3.11.3-1]", async () => {
  await using b = await startBroker();
  await using clients = new Clients();
  const filter = "$share/workers/jobs/+";
  const m1 = await clients.member(b, "w1", filter);
  const m2 = await clients.member(b, "w2", filter);
  const ack = await m2.c.unsubscribeAsync([filter, "$share/other/jobs/+"]);
  assert.deepEqual((ack as { granted?: number[] } | undefined)?.granted, [0x00, 0x11]);
  const { c: pub } = await clients.connect(b, { clientId: "pub" });
  await publishJobs(pub, 6);
  assert.deepEqual(indexes(await receivedBefore(m1.inbox)), range(6));
  assert.deepEqual(await receivedBefore(m2.inbox), []);
});

/**
 * A raw member of `$share/workers/jobs/+` at `qos` that never acknowledges and allows one
 * message in flight (Receive Maximum 1): what the group gives it beyond that waits in its queue.
 */
async function stalledMember(b: TestBroker, qos: 1 | 2): Promise<RawClient> {
  const c = await RawClient.connect(b.port, 5);
  await c.handshake("stalled", 5, { properties: { receiveMaximum: 1 } });
  await c.sendPacket({
    cmd: "subscribe",
    messageId: 1,
    subscriptions: [{ topic: "$share/workers/jobs/+", qos }],
  });
  await c.expect("suback");
  return c;
}

Deno.test("a member whose session ends with QoS 1 jobs unacknowledged or queued: they go to the other member (4.8.2)", async () => {
  await using b = await startBroker();
  await using clients = new Clients();
  const stalled = await stalledMember(b, 1);
  const m2 = await clients.member(b, "w2", "$share/workers/jobs/+");
  const { c: pub } = await clients.connect(b, { clientId: "pub" });
  await publishJobs(pub, 6);
  const kept = indexes(await receivedBefore(m2.inbox));
  // Round robin gave the stalled member half the jobs: one sent (never acknowledged), two queued.
  const first = await stalled.expect("publish");
  assert.equal(kept.length, 3);
  assert.ok(!kept.includes(Number(String(first.payload))));
  // Its socket closes; without Session Expiry its session ends, and those jobs with it unless
  // they are handed on.
  await stalled[Symbol.asyncDispose]();
  const later: Received[] = [];
  while (later.length < 3) later.push(await m2.inbox.next());
  assert.deepEqual(indexes([...later]).concat(kept).sort((a, b) => a - b), range(6));
  assert.equal(b.broker.metrics.sharedRedelivered, 3);
});

Deno.test("a QoS 2 job in flight to a member whose session ends is not sent to another member [MQTT-4.8.2-5]", async () => {
  await using b = await startBroker();
  await using clients = new Clients();
  const stalled = await stalledMember(b, 2);
  const m2 = await clients.member(b, "w2", "$share/workers/jobs/+");
  const { c: pub } = await clients.connect(b, { clientId: "pub" });
  await pub.publishAsync("jobs/0", "0", { qos: 2 });
  const inFlight = await stalled.expect("publish");
  assert.equal(inFlight.qos, 2);
  const connections = b.broker.core.connectionCount;
  await stalled[Symbol.asyncDispose]();
  await waitFor(() => b.broker.core.connectionCount === connections - 1, "the session to end");
  // Its client may have delivered it already: a second copy elsewhere would be a duplicate.
  await publishJobs(pub, 0);
  assert.deepEqual(await receivedBefore(m2.inbox), []);
  assert.equal(b.broker.metrics.sharedRedelivered, 0);
});
