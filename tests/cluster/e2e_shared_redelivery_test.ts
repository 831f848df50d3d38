/**
 * A shared subscription's member whose session ends with QoS 1 messages it never acknowledged
 * has them handed to another member of the group (section 4.8.2): on its own node when one is
 * there, else, in a cluster, on another node that holds the group. Two broker processes on one
 * redis-server; the member that leaves is a raw client that never sends PUBACK.
 */
import assert from "node:assert/strict";
import { collect, connectClient, delay, RawClient } from "../helpers/broker.ts";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

/**
 * Nodes a and b serving a share group locally while they have a member ("local"): every message
 * published on a goes to the member on a.
 */
function twoNodes(): Promise<TestCluster> {
  return TestCluster.start({ names: ["a", "b"], args: ["--cluster.shared_policy=local"] });
}

/** A raw member of `$share/g/job/#` on `port` that never sends PUBACK. */
async function leavingMember(port: number): Promise<RawClient> {
  const leaving = await RawClient.connect(port, 5);
  await leaving.handshake("leaving");
  await leaving.sendPacket({
    cmd: "subscribe",
    messageId: 1,
    subscriptions: [{ topic: "$share/g/job/#", qos: 1 }],
  });
  await leaving.expect("suback");
  return leaving;
}

Deno.test({
  name:
    "cluster: a share group member's unacknowledged messages go to a member on another node when it leaves",
  ...opts,
  async fn() {
    // "local": a node serves the group itself while it has a member, so every message goes to
    // the member on a, which never acknowledges.
    await using cluster = await twoNodes();
    const [a, b] = cluster.nodes;
    const leaving = await leavingMember(a.port);
    const staying = await connectClient(b.port, { clientId: "staying" });
    const box = collect(staying);
    await staying.subscribeAsync("$share/g/job/#", { qos: 1 });
    await using watcher = await connectClient(b.port, { clientId: "watcher" });
    const watched = collect(watcher);
    await watcher.subscribeAsync("job/#", { qos: 1 });

    const pub = await connectClient(a.port, { clientId: "pub" });
    const N = 10;
    for (let i = 0; i < N; i++) await pub.publishAsync(`job/${i}`, `j${i}`, { qos: 1 });
    const got: string[] = [];
    for (let i = 0; i < N; i++) {
      const p = await leaving.expect("publish") as { payload: Uint8Array };
      got.push(new TextDecoder().decode(p.payload));
    }
    assert.deepEqual(got, Array.from({ length: N }, (_, i) => `j${i}`));
    await eventually("the watcher's copies", () => watched.messages.length === N);
    assert.equal(box.messages.length, 0, "the group's messages all went to the member on a");

    // The member on a goes away without acknowledging (its session ends: no expiry).
    leaving.close();
    await eventually("the leftovers on b", () => box.messages.length >= N, 5000);
    await delay(300);
    assert.deepEqual(box.messages.map((m) => m.payload), got);
    // Not published again: the plain subscriber on b has its one copy of each.
    assert.equal(watched.messages.length, N);
    await pub.endAsync();
    await staying.endAsync();
  },
});

/** Resumes persistent session `clientId` on `port`; the payloads that arrive until a pause. */
async function resumed(port: number, clientId: string): Promise<string[]> {
  await using s = await RawClient.connect(port, 5);
  await s.handshake(clientId, 5, { clean: false, properties: { sessionExpiryInterval: 3600 } });
  return (await s.drainPublishes()).map((p) => new TextDecoder().decode(p));
}

Deno.test({
  name:
    "cluster: leftovers handed to a node that dies before reading them reach its adopted group member only",
  ...opts,
  async fn() {
    await using cluster = await twoNodes();
    const [a, b] = cluster.nodes;
    const leaving = await leavingMember(a.port);
    // On b, offline persistent sessions: a member of the group and a plain subscriber.
    for (const [clientId, topic] of [["staying", "$share/g/job/#"], ["watcher", "job/#"]]) {
      await using s = await RawClient.connect(b.port, 5);
      await s.handshake(clientId, 5, { clean: false, properties: { sessionExpiryInterval: 3600 } });
      await s.sendPacket({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic, qos: 1 }] });
      await s.expect("suback");
    }
    await delay(300);
    // b stops reading its inbox: the watcher's copies and then the leftovers wait there.
    b.signal("SIGSTOP");
    const pub = await connectClient(a.port, { clientId: "pub" });
    const N = 10;
    const sent = Array.from({ length: N }, (_, i) => `j${i}`);
    for (let i = 0; i < N; i++) await pub.publishAsync(`job/${i}`, sent[i], { qos: 1 });
    for (let i = 0; i < N; i++) await leaving.expect("publish");
    leaving.close();
    await delay(300);
    await b.kill();
    await eventually("b's sessions adopted", () => /adopted 2 of its/.test(a.output()), 15_000);
    await delay(500);
    // Before: the leftovers were published to the adopted sessions, the watcher had each twice.
    assert.deepEqual(await resumed(a.port, "watcher"), sent);
    assert.deepEqual(await resumed(a.port, "staying"), sent);
    await pub.endAsync();
  },
});
