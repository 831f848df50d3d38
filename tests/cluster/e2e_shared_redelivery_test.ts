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

Deno.test({
  name:
    "cluster: a share group member's unacknowledged messages go to a member on another node when it leaves",
  ...opts,
  async fn() {
    // "local": a node serves the group itself while it has a member, so every message goes to
    // the member on a, which never acknowledges.
    await using cluster = await TestCluster.start({
      names: ["a", "b"],
      args: ["--cluster.shared_policy=local"],
    });
    const [a, b] = cluster.nodes;
    const leaving = await RawClient.connect(a.port, 5);
    await leaving.handshake("leaving");
    await leaving.sendPacket({
      cmd: "subscribe",
      messageId: 1,
      subscriptions: [{ topic: "$share/g/job/#", qos: 1 }],
    });
    await leaving.expect("suback");
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
