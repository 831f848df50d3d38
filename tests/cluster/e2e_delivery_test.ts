/**
 * Three broker processes on one redis-server, seen by MQTT.js clients: a
 * publish on any node reaches every matching subscriber on every node once,
 * at the granted QoS, in publish order; a topic nobody elsewhere wants costs
 * no Redis write and forwarding is batched; a shared subscription with
 * members on several nodes delivers each message to exactly one of them.
 */
import assert from "node:assert/strict";
import { collect, connectClient, delay, type Received, subscriber } from "../helpers/broker.ts";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";
import { commandStats } from "../helpers/redis_resp.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

/** Payload `<publisher>:<n>`: the numbers each subscriber saw per publisher, in arrival order. */
function byPublisher(messages: Received[]): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const m of messages) {
    const [who, n] = m.payload.split(":");
    let list = out.get(who);
    if (list === undefined) out.set(who, list = []);
    list.push(Number(n));
  }
  return out;
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

Deno.test({
  name: "cluster: every subscriber on every node gets each message once, in order, at its QoS",
  ...opts,
  async fn() {
    // Every publish is sent at once: each subscriber's queue must hold all of them (as on one node).
    await using cluster = await TestCluster.start({
      names: ["a", "b", "c"],
      args: ["--limits.max_queued_messages=10000"],
    });
    const nodes = cluster.nodes;
    const N = 700; // per publisher; three publishers: 2,100 numbered messages
    // Subscribers: QoS 1 on every node, QoS 0 and QoS 2 on other nodes than their publishers.
    const subs = await Promise.all(
      nodes.map((n, i) => connectClient(n.port, { clientId: `sub-${i}` })),
    );
    const inboxes = subs.map(collect);
    await Promise.all(subs.map((s) => s.subscribeAsync("num/#", { qos: 1 })));
    await using q0 = await subscriber(nodes[1].port, "num/#", 0, { clientId: "q0" });
    await using q2 = await subscriber(nodes[2].port, "exact/#", 2, { clientId: "q2" });
    // No sleep after SUBACK: the SUBACK waits until every node routes to the subscriber.
    const pubs = await Promise.all(
      nodes.map((n, i) => connectClient(n.port, { clientId: `pub-${i}` })),
    );
    await Promise.all(
      pubs.map((p, i) =>
        Promise.all(range(N).map((k) => p.publishAsync(`num/${i}`, `p${i}:${k}`, { qos: 1 })))
      ),
    );
    await pubs[0].publishAsync("exact/x", "once", { qos: 2 });
    const total = N * nodes.length;
    await eventually(
      "every QoS 1 subscriber has every message",
      () => inboxes.every((b) => b.messages.length >= total),
      30_000,
    ).catch((e) => {
      const seen = inboxes.map((b) =>
        [...byPublisher(b.messages)].map(([k, v]) => `${k}:${v.length}`)
      );
      throw new Error(`${e.message}: ${JSON.stringify(seen)}`);
    });
    const q2msg = await q2.inbox.next(5000);
    await delay(300); // anything extra (duplicates) would show up now
    for (const [i, box] of inboxes.entries()) {
      assert.equal(box.messages.length, total, `subscriber ${i}: no duplicates`);
      const seen = byPublisher(box.messages);
      for (let p = 0; p < nodes.length; p++) {
        assert.deepEqual(seen.get(`p${p}`), range(N), `subscriber ${i}, publisher ${p}: in order`);
      }
      assert.ok(box.messages.every((m) => m.packet.qos === 1 && !m.packet.dup));
    }
    // The QoS 0 subscriber is downgraded; on loopback nothing is lost, so all arrive in order.
    await eventually("QoS 0 subscriber has every message", () => q0.inbox.messages.length >= total);
    assert.ok(q0.inbox.messages.every((m) => m.packet.qos === 0));
    const q0seen = byPublisher(q0.inbox.messages);
    for (let p = 0; p < nodes.length; p++) assert.deepEqual(q0seen.get(`p${p}`), range(N));
    assert.equal(q2msg.payload, "once");
    assert.equal(q2msg.packet.qos, 2);
    assert.equal(q2.inbox.messages.length, 1);
    await Promise.all([...subs, ...pubs].map((c) => c.endAsync()));
  },
});

Deno.test({
  name: "cluster: no Redis write for a topic nobody elsewhere wants; forwarding is batched",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b"] });
    const [a, b] = cluster.nodes;
    await using localSub = await subscriber(a.port, "local/#", 1, { clientId: "local-sub" });
    await using remoteSub = await subscriber(b.port, "wanted/#", 0, { clientId: "remote-sub" });
    await using pub = await connectClient(a.port, { clientId: "pub" });

    await cluster.redis.command("CONFIG", "RESETSTAT");
    const N = 500;
    await Promise.all(range(N).map((i) => pub.publishAsync(`local/${i % 7}`, `${i}`, { qos: 1 })));
    await Promise.all(range(N).map((i) => pub.publishAsync(`nobody/${i}`, `${i}`, { qos: 1 })));
    await eventually(
      "local subscriber has its messages",
      () => localSub.inbox.messages.length >= N,
    );
    const quiet = await commandStats(cluster.redis);
    assert.equal(quiet.get("xadd") ?? 0, 0, "no XADD for topics only this node wants");

    // QoS 0 messages written back to back: the broker reads many per turn and forwards them as
    // one stream entry per turn (one XADD), not one per message.
    await cluster.redis.command("CONFIG", "RESETSTAT");
    for (let i = 0; i < N; i++) pub.publish(`wanted/${i % 3}`, `${i}`, { qos: 0 });
    await eventually(
      "remote subscriber has every message",
      () => remoteSub.inbox.messages.length >= N,
    );
    const busy = await commandStats(cluster.redis);
    const xadds = busy.get("xadd") ?? 0;
    assert.ok(xadds >= 1 && xadds <= N / 5, `${xadds} XADDs for ${N} forwarded messages`);
    assert.deepEqual(remoteSub.inbox.messages.map((m) => Number(m.payload)), range(N));
    console.log(`forwarding: ${N} messages in ${xadds} XADDs (${(N / xadds).toFixed(1)} per XADD)`);
  },
});

Deno.test({
  name: "cluster: $share members on three nodes get each message exactly once cluster-wide",
  ...opts,
  async fn() {
    for (const policy of ["local", "round_robin"]) {
      await using cluster = await TestCluster.start({
        names: ["a", "b", "c"],
        args: [`--cluster.shared_policy=${policy}`],
      });
      const [a, b, c] = cluster.nodes;
      // Members on a and b (two on b), none on c; publishers on every node.
      const members = await Promise.all(
        [a, b, b].map((n, i) => connectClient(n.port, { clientId: `m${i}` })),
      );
      const boxes = members.map(collect);
      await Promise.all(members.map((m) => m.subscribeAsync("$share/g/job/#", { qos: 1 })));
      // A plain subscriber on c sees every message, whatever the group does.
      await using watcher = await subscriber(c.port, "job/#", 1, { clientId: "watch" });
      const N = 200;
      const pubs = await Promise.all(
        [a, b, c].map((n, i) => connectClient(n.port, { clientId: `pub${i}` })),
      );
      await Promise.all(
        pubs.map((p, i) =>
          Promise.all(range(N).map((k) => p.publishAsync(`job/${i}`, `p${i}:${k}`, { qos: 1 })))
        ),
      );
      await eventually(
        "the watcher saw every message",
        () => watcher.inbox.messages.length >= 3 * N,
      );
      await eventually(
        "the group got every message",
        () => boxes.reduce((n, b) => n + b.messages.length, 0) >= 3 * N,
      );
      await delay(300);
      const all = boxes.flatMap((b) => b.messages.map((m) => m.payload));
      assert.equal(all.length, 3 * N, `${policy}: no message went to two members`);
      assert.equal(new Set(all).size, 3 * N, `${policy}: each message once`);
      const counts = boxes.map((b) => b.messages.length);
      // Published on c (no member there): served by members on other nodes.
      const fromC = boxes.map((b) => b.messages.filter((m) => m.payload.startsWith("p2:")).length);
      assert.equal(fromC.reduce((x, y) => x + y), N);
      if (policy === "local") {
        // Members on the publisher's node are preferred.
        const fromA = boxes[0].messages.filter((m) => m.payload.startsWith("p0:")).length;
        assert.equal(fromA, N, `local policy: a's member got all of a's messages (${counts})`);
      } else {
        assert.ok(counts.every((n) => n > 0), `round robin reaches every member (${counts})`);
      }
      await Promise.all([...members, ...pubs].map((m) => m.endAsync()));
    }
  },
});

Deno.test({
  name: "cluster: a publish whose only subscriber is on another node is not told 'no subscribers'",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b"] });
    const [a, b] = cluster.nodes;
    await using sub = await subscriber(b.port, "remote/#", 1, { clientId: "remote-sub" });
    await using pub = await connectClient(a.port, { clientId: "remote-pub" });
    // MQTT 5 PUBACK/PUBREC: 0x00 when someone cluster-wide matches, 0x10 when nobody does.
    // (MQTT.js resolves a publish with the PUBLISH it sent: the acknowledgement is read here.)
    const acks = new Map<number, number>();
    pub.on("packetreceive", (p) => {
      if ((p.cmd === "puback" || p.cmd === "pubrec") && p.messageId !== undefined) {
        acks.set(p.messageId, (p as { reasonCode?: number }).reasonCode ?? 0);
      }
    });
    const reason = async (topic: string, qos: 1 | 2) => {
      const sent = await pub.publishAsync(topic, "x", { qos }) as { messageId?: number };
      const code = acks.get(sent.messageId!);
      assert.notEqual(code, undefined, `no acknowledgement seen for ${topic}`);
      return code;
    };
    assert.equal(await reason("remote/1", 1), 0, "QoS 1 to a subscriber on the other node");
    assert.equal(await reason("remote/2", 2), 0, "QoS 2 to a subscriber on the other node");
    assert.equal(await reason("nobody/1", 1), 0x10, "QoS 1 nobody subscribes to");
    await eventually("both reached the other node", () => sub.inbox.messages.length >= 2, 10_000);
  },
});
