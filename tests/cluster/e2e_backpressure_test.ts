/**
 * Inbox backpressure: a node that falls behind (here frozen by SIGSTOP in a
 * duty cycle shorter than its lease, as a long GC pause or a throttled
 * container would freeze it, so it is slow but never declared dead) must not
 * make Redis grow without bound. With `[cluster] max_inbox_backlog` entries
 * in its inbox, the node that forwards to it holds the acknowledgements of
 * QoS 1 messages for it (the publisher slows to its pace, nothing
 * acknowledged is lost) and drops QoS 0 copies for it, while its own local
 * traffic flows on.
 */
import assert from "node:assert/strict";
import type { MqttClient } from "mqtt";
import { connectClient, delay } from "../helpers/broker.ts";
import { type ClusterNode, eventually, TestCluster } from "../helpers/cluster.ts";
import { metric, scrape } from "../helpers/ops.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";
import { redisQuery } from "../helpers/redis_resp.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

/** `[cluster] max_inbox_backlog` of the nodes, in entries. */
const BOUND = 30;
/** Publishes the held publisher keeps unacknowledged (its window). */
const WINDOW = 8;
/**
 * How far past the bound the inbox may grow: each publish the held publisher
 * has in flight when the bound is reached is still written (one entry at
 * most each), plus the entries of the turn that crossed it.
 */
const SLACK = 2 * WINDOW + 4;

/** Publishes consecutive numbers at QoS 1, `window` at a time, until `stop()`; acks in `acked`. */
function publishUntilStopped(client: MqttClient, topic: string, window: number) {
  const acked: number[] = [];
  let next = 0;
  let running = true;
  const worker = async () => {
    while (running) {
      const i = next++;
      await client.publishAsync(topic, `${i}`, { qos: 1 });
      acked.push(i);
    }
  };
  const done = Promise.all(Array.from({ length: window }, worker));
  return {
    acked,
    stop: async () => {
      running = false;
      await done;
    },
  };
}

/** Collects the numbers received on `client`. */
/** Entries waiting in `node`'s inbox stream. */
async function inboxLength(cluster: TestCluster, node: ClusterNode): Promise<number> {
  return Number(await redisQuery(cluster.redis.port, "XLEN", node.inbox));
}

function numbers(client: MqttClient): Set<number> {
  const got = new Set<number>();
  client.on("message", (_t, payload) => got.add(Number(new TextDecoder().decode(payload))));
  return got;
}

Deno.test({
  name: "cluster: a node behind holds its forwarders' QoS 1 acks at max_inbox_backlog, " +
    "drops QoS 0 copies, loses nothing acknowledged, and local traffic flows on",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({
      names: ["a", "b"],
      args: [`--cluster.max_inbox_backlog=${BOUND}`],
    });
    const [a, b] = cluster.nodes;
    const xlen = () => inboxLength(cluster, b);

    await using remoteSub = await connectClient(b.port, { clientId: "remote-sub" });
    const remote = numbers(remoteSub);
    await remoteSub.subscribeAsync("bp/#", { qos: 1 });
    await using localSub = await connectClient(a.port, { clientId: "local-sub" });
    const local = numbers(localSub);
    await localSub.subscribeAsync("local/x", { qos: 1 });

    await using pub = await connectClient(a.port, { clientId: "pub" });
    await using localPub = await connectClient(a.port, { clientId: "local-pub" });
    await using q0Pub = await connectClient(a.port, { clientId: "q0-pub" });
    // The routes are in place once a message crosses.
    await pub.publishAsync("bp/warmup", "-1", { qos: 1 });
    await eventually("route to b", () => remote.has(-1));

    const held = publishUntilStopped(pub, "bp/x", WINDOW);
    const localRun = publishUntilStopped(localPub, "local/x", WINDOW);
    let q0Running = true;
    const q0 = (async () => {
      for (let i = 0; q0Running; i++) {
        q0Pub.publish("bp/q0", `q${i}`, { qos: 0 });
        await delay(2);
      }
    })();

    let maxLen = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        maxLen = Math.max(maxLen, await xlen());
        await delay(20);
      }
    })();

    // b runs 300 ms, then is frozen 700 ms (its lease lasts 2.5 s: slow, never declared dead).
    const phases: { acked: number; local: number }[] = [];
    // What b's /readyz said while it ran, behind: a node that cannot keep up takes no new clients.
    const readiness: { status: number; problems: string[] }[] = [];
    try {
      for (let cycle = 0; cycle < 5; cycle++) {
        // b learns it is behind at its next inbox measurement after it wakes (an XLEN round
        // trip), not at once: ask throughout its 300 ms of running, not only as it wakes.
        const runUntil = Date.now() + 300;
        while (cycle > 0 && Date.now() < runUntil - 60) {
          readiness.push(await b.readiness());
          await delay(50);
        }
        await delay(Math.max(0, runUntil - Date.now()));
        const acked0 = held.acked.length;
        const local0 = localRun.acked.length;
        b.signal("SIGSTOP");
        await delay(700);
        phases.push({
          acked: held.acked.length - acked0,
          local: localRun.acked.length - local0,
        });
        b.signal("SIGCONT");
      }
    } finally {
      b.signal("SIGCONT");
    }
    await delay(300);
    q0Running = false;
    await q0;
    await Promise.all([held.stop(), localRun.stop()]);
    sampling = false;
    await sampler;

    const m = await scrape(await a.httpUrl());
    console.log(
      `max inbox length ${maxLen} (bound ${BOUND}); per frozen phase: ${
        phases.map((p) => `${p.acked} held-publisher / ${p.local} local acks`).join(", ")
      }; held ${metric(m, "mcloudtt_cluster_forwards_held_total")}, dropped ${
        metric(m, "mcloudtt_cluster_forwards_dropped_total")
      }; ${held.acked.length} acknowledged for b, ${localRun.acked.length} local`,
    );

    assert.ok(maxLen <= BOUND + SLACK, `b's inbox grew to ${maxLen} (bound ${BOUND} + ${SLACK})`);
    for (const p of phases) {
      // While b is frozen, its publisher gets at most the acknowledgements of what filled the
      // inbox up to the bound (an entry holds what one turn read: at most its window), then waits.
      assert.ok(p.acked <= (BOUND + SLACK) * WINDOW, `acknowledged while b was frozen: ${p.acked}`);
      // The local pair on a never waits for b.
      assert.ok(p.local >= 100, `local acknowledgements while b was frozen: ${p.local}`);
    }
    assert.ok(metric(m, "mcloudtt_cluster_forwards_held_total") > 0);
    assert.ok(metric(m, "mcloudtt_cluster_forwards_dropped_total") > 0);

    // Nothing acknowledged is lost: every acknowledged number reaches b's subscriber, every local
    // one the local subscriber.
    await eventually(
      "every acknowledged message delivered on b",
      () => held.acked.every((i) => remote.has(i)),
      15_000,
    );
    await eventually(
      "every local message delivered",
      () => localRun.acked.every((i) => local.has(i)),
    );
    await eventually("b's inbox drained", async () => await xlen() === 0);
    assert.ok(
      readiness.some((r) => r.status === 503 && r.problems.some((p) => p.includes("own inbox"))),
      `b reported itself behind on /readyz: ${JSON.stringify(readiness)}`,
    );
    await eventually("b is ready again once caught up", async () => {
      const r = await b.readiness();
      return r.status === 200;
    }, 15_000);
    const mb = await scrape(await b.httpUrl());
    assert.equal(metric(mb, "mcloudtt_cluster_inbox_backlog") >= 0, true);
  },
});

Deno.test({
  name: "cluster: a publisher ignoring Receive Maximum is not read while its acks wait for a " +
    "node behind, so the inbox stays bounded; every message arrives once the node catches up",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({
      names: ["a", "b"],
      args: [`--cluster.max_inbox_backlog=${BOUND}`, `--limits.receive_maximum=${WINDOW}`],
    });
    const [a, b] = cluster.nodes;
    const xlen = () => inboxLength(cluster, b);

    await using sub = await connectClient(b.port, { clientId: "sub" });
    const got = numbers(sub);
    await sub.subscribeAsync("flood/#", { qos: 1 });
    // MQTT 3.1.1 has no Receive Maximum, and MQTT.js does not keep to the broker's anyway.
    await using pub = await connectClient(a.port, { clientId: "flood", protocolVersion: 4 });
    await pub.publishAsync("flood/warmup", "-1", { qos: 1 });
    await eventually("route to b", () => got.has(-1));

    const N = 500;
    const acks: Promise<unknown>[] = [];
    let maxLen = 0;
    b.signal("SIGSTOP");
    const frozenAt = Date.now();
    try {
      // One publish a millisecond, none waiting for its acknowledgement: each arrives in a read
      // of its own, so each would be an inbox entry of its own.
      for (let i = 0; i < N; i++) {
        acks.push(pub.publishAsync("flood/x", `${i}`, { qos: 1 }));
        if (i % 50 === 0) maxLen = Math.max(maxLen, await xlen());
        await delay(1);
      }
      maxLen = Math.max(maxLen, await xlen());
    } finally {
      b.signal("SIGCONT");
    }
    const frozen = Date.now() - frozenAt;
    console.log(
      `max inbox length ${maxLen} while ${N} publishes came without waiting (${frozen} ms)`,
    );
    // Past the bound: what the connection read before more than Receive Maximum acks waited.
    assert.ok(maxLen <= BOUND + WINDOW + SLACK, `b's inbox grew to ${maxLen}`);
    await Promise.all(acks);
    await eventually("every message delivered on b", () => got.size === N + 1, 15_000).catch(
      (e) => {
        console.log(`received ${got.size}; b: ${b.output().slice(-3000)}`);
        throw e;
      },
    );
    assert.ok(a.alive && pub.connected, "the publisher was throttled, not disconnected");
  },
});
