/**
 * Redis faults under a two-node cluster of broker processes: killed Redis
 * connections and a Redis restart (with its append-only file) in the middle
 * of QoS 1/2 traffic lose no acknowledged message; while Redis is down each
 * node keeps serving its connected clients locally; after a Redis restart
 * that lost everything the nodes re-announce their routes and cross-node
 * delivery works again.
 */
import assert from "node:assert/strict";
import type { MqttClient } from "mqtt";
import { connectClient, delay, RawClient, type Received, subscriber } from "../helpers/broker.ts";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

/**
 * Publishes at least `n` numbered messages (QoS 1 and 2 alternating), and more for as long as
 * `more()` says, at most `window` unacknowledged; a refused one (PUBACK/PUBREC with an error:
 * Redis did not take it) is sent again. Returns the numbers acknowledged, how many were
 * published and how many sends were refused.
 */
async function publishAll(
  pub: MqttClient,
  topic: string,
  n: number,
  more: () => boolean,
  window = 10,
): Promise<{ acked: number[]; published: number; refused: number; refusedIds: Set<number> }> {
  const acked: number[] = [];
  const refusedIds = new Set<number>();
  let refused = 0;
  let next = 0;
  // A hang is a failure: give up after a minute, or at once when the publisher lost its connection.
  const deadline = Date.now() + 60_000;
  const worker = async () => {
    while (next < n || more()) {
      const i = next++;
      for (;;) {
        if (!pub.connected) throw new Error(`publisher disconnected before publish ${i} was acked`);
        if (Date.now() > deadline) throw new Error(`publish ${i} still refused after 60 s`);
        let timer: ReturnType<typeof setTimeout> | undefined;
        const unanswered = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`publish ${i} was never answered`)), 10_000);
        });
        try {
          await Promise.race([
            pub.publishAsync(topic, `${i}`, { qos: i % 2 === 0 ? 1 : 2 }),
            unanswered,
          ]);
          acked.push(i);
          break;
        } catch (e) {
          if (e instanceof Error && e.message.includes("never answered")) throw e;
          refused++;
          refusedIds.add(i);
          await delay(50);
        } finally {
          clearTimeout(timer);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: window }, worker));
  return { acked, published: next, refused, refusedIds };
}

/** `p`, or a rejection naming `what` when it has not settled within `ms`. */
function answered<T>(p: Promise<T>, what: string, ms = 10_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} was never answered`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

function received(box: { messages: Received[] }): Map<number, number> {
  const seen = new Map<number, number>();
  for (const m of box.messages) seen.set(Number(m.payload), (seen.get(Number(m.payload)) ?? 0) + 1);
  return seen;
}

Deno.test({
  name: "cluster: killed Redis connections and a Redis restart (AOF) lose no acknowledged message",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b"], aof: true });
    const [a, b] = cluster.nodes;
    const redis = cluster.redis;
    await using sub = await subscriber(b.port, "blip/#", 2, { clientId: "sub" });
    await using pub = await connectClient(a.port, { clientId: "pub" });
    const N = 600;
    let faults = 0;
    let faulted = false;
    // The traffic goes on until every fault has happened, however fast the machine publishes.
    const faulting = (async () => {
      await delay(150);
      for (let k = 0; k < 4; k++) {
        // Every client connection of every node (commands, route tail, inbox reader, store).
        await redis.command("CLIENT", "KILL", "TYPE", "normal");
        faults++;
        await delay(200);
      }
      await redis.restart(); // kill -9 and start again: the AOF brings the data back
      faults++;
    })().finally(() => faulted = true);
    const { acked, published, refused } = await publishAll(pub, "blip/x", N, () => !faulted)
      .catch((e) => {
        console.log(a.output(), b.output());
        throw e;
      });
    await faulting;
    await eventually("every acknowledged message arrived", () => {
      const seen = received(sub.inbox);
      return acked.every((i) => seen.has(i));
    }, 15_000).catch((e) => {
      const seen = received(sub.inbox);
      throw new Error(`${e.message}: missing ${acked.filter((i) => !seen.has(i)).slice(0, 20)}`);
    });
    const seen = received(sub.inbox);
    const dups = [...seen.values()].filter((c) => c > 1).length;
    console.log(
      `${published} messages, ${faults} Redis faults, ${refused} publishes refused and resent, ` +
        `${dups} delivered more than once`,
    );
    assert.equal(acked.length, published);
    assert.equal(faults, 5, "every fault happened during the traffic");
  },
});

Deno.test({
  name: "cluster: without Redis nodes serve local clients; after a Redis wipe routes come back",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b"] });
    const [a, b] = cluster.nodes;
    const redis = cluster.redis;
    await using subA = await subscriber(a.port, "local/#", 1, { clientId: "sub-a" });
    await using subB = await subscriber(b.port, "cross/#", 1, { clientId: "sub-b" });
    await using pubA = await connectClient(a.port, { clientId: "pub-a" });
    await pubA.publishAsync("cross/before", "before", { qos: 1 });
    assert.equal((await subB.inbox.next()).payload, "before");

    await redis.kill();
    // Local traffic goes on: QoS 0 and QoS 1 between clients of the same node.
    for (let i = 0; i < 10; i++) {
      await answered(
        pubA.publishAsync("local/x", `down-${i}`, { qos: (i % 2) as 0 | 1 }),
        `local publish ${i}`,
      );
    }
    await eventually("local delivery while Redis is down", () => subA.inbox.messages.length === 10);
    assert.deepEqual(
      subA.inbox.messages.map((m) => m.payload),
      Array.from({ length: 10 }, (_, i) => `down-${i}`),
    );
    // A QoS 1 message for another node cannot be stored: refused, not acknowledged and lost.
    await assert.rejects(
      answered(pubA.publishAsync("cross/down", "down", { qos: 1 }), "cross publish"),
      /Unspecified error/,
    );
    assert.ok(subA.connected && subB.connected && pubA.connected, "clients stay connected");

    // Redis comes back empty (no persistence): routes, leases and inboxes are rebuilt.
    await redis.restart(true);
    await eventually(
      "b's route is back in Redis",
      async () => (await redis.command("HLEN", "mcloudtt:{rt}:table")) !== "0",
      10_000,
    );
    // Cross-node delivery works again (retried while the nodes resynchronise).
    const deadline = Date.now() + 10_000;
    let delivered = false;
    for (let i = 0; !delivered && Date.now() < deadline; i++) {
      try {
        await answered(
          pubA.publishAsync("cross/after", `after-${i}`, { qos: 1 }),
          `publish ${i} after the wipe`,
        );
        await eventually(
          "delivered",
          () => subB.inbox.messages.some((m) => m.topic === "cross/after"),
          500,
        );
        delivered = true;
      } catch (e) {
        if (e instanceof Error && e.message.includes("never answered")) throw e;
      }
    }
    assert.ok(delivered, "a message published on a reaches b's subscriber after the wipe");
    // Delivery works once either side re-announced; the other's log line may come a moment later.
    for (const n of [a, b]) {
      await eventually(
        `${n.name} resynced`,
        () => /redis lost the cluster state|resynchronised/.test(n.output()),
        15_000,
      );
    }
  },
});

Deno.test({
  name: "cluster: a QoS 2 PUBLISH refused while Redis is down frees its packet id (no 0x93)",
  ...opts,
  async fn() {
    // Receive Maximum 4, so that a few refusals are more than it; and the nodes stop without
    // Redis, so their goodbye waits for shutdown_timeout (10 s by default).
    await using cluster = await TestCluster.start({
      names: ["a", "b"],
      args: ["--limits.receive_maximum=4", "--general.shutdown_timeout=1"],
    });
    const [a, b] = cluster.nodes;
    await using subB = await connectClient(b.port, { clientId: "sub-q2" });
    await subB.subscribeAsync("q2/#", { qos: 2 });
    const pub = await RawClient.connect(a.port);
    const ack = await pub.handshake("pub-q2", 5);
    assert.equal(ack.reasonCode, 0);
    await cluster.redis.kill();
    assert.equal((ack.properties as { receiveMaximum?: number }).receiveMaximum, 4);
    // More refusals than Receive Maximum, all with one packet id: each is a new message the
    // broker did not accept, so each gets its own PUBREC refusal and the connection stays.
    for (let i = 0; i < 10; i++) {
      await pub.sendPacket({
        cmd: "publish",
        topic: "q2/x",
        payload: `m${i}`,
        qos: 2,
        messageId: 7,
      });
      const rec = await pub.expect("pubrec", 10_000);
      assert.equal(rec.messageId, 7);
      assert.ok((rec.reasonCode as number) >= 0x80, `PUBREC ${i} refused: ${rec.reasonCode}`);
    }
    assert.equal(pub.closed, false, "still connected");
    pub.close();
  },
});

Deno.test({
  name:
    "cluster: a forwarding XADD run twice (its connection killed mid-write) delivers QoS 2 once",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b"] });
    const [a, b] = cluster.nodes;
    const redis = cluster.redis;
    await using sub = await subscriber(b.port, "twice/#", 2, { clientId: "sub" });
    await using pub = await connectClient(a.port, { clientId: "pub" });
    // ioredis sends the commands in flight again on its new connection; Redis may have run them
    // on the old one already: the XADD of a batch of forwarded messages lands twice.
    let done = false;
    let kills = 0;
    const killing = (async () => {
      await delay(200);
      while (!done) {
        const list = await redis.command("CLIENT", "LIST");
        for (const line of list.split("\n")) {
          const id = line.match(/^id=(\d+)/)?.[1];
          if (id !== undefined && / name=mcloudtt:bus:a/.test(line)) {
            await redis.command("CLIENT", "KILL", "ID", id).catch(() => "");
            kills++;
          }
        }
        await delay(50);
      }
    })();
    const N = 2500;
    const refusedOnce = new Set<number>();
    let next = 0;
    const worker = async () => {
      while (next < N) {
        const i = next++;
        for (let attempt = 0;; attempt++) {
          if (attempt > 200) throw new Error(`publish ${i} refused 200 times`);
          try {
            await answered(pub.publishAsync("twice/x", `${i}`, { qos: 2 }), `publish ${i}`);
            break;
          } catch (e) {
            if (!pub.connected) throw e;
            // Refused (PUBREC 0x80): Redis did not answer in time, so the first copy may have
            // been forwarded all the same and the one sent again is a new message.
            refusedOnce.add(i);
            await delay(20);
          }
        }
      }
    };
    try {
      await Promise.all(Array.from({ length: 16 }, worker));
    } finally {
      done = true;
      await killing;
    }
    await eventually("every message arrived", () => received(sub.inbox).size === N, 15_000);
    await delay(500);
    const twice = [...received(sub.inbox)].filter(([i, n]) => n > 1 && !refusedOnce.has(i));
    console.log(
      `${kills} kills of a's bus connection, ${refusedOnce.size} publishes refused at least once, ` +
        `${twice.length} acknowledged at once and delivered twice`,
    );
    assert.deepEqual(twice, [], "QoS 2 messages acknowledged once were delivered twice");
    assert.ok(kills > 5, `only ${kills} kills: the fault did not happen during the traffic`);
  },
});

Deno.test({
  name: "cluster: forwards Redis ran late (frozen past command_timeout_ms) are written again " +
    "with their ids, not refused: every QoS 1/2 message arrives once",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({
      names: ["a", "b"],
      args: ["--redis.command_timeout_ms=1000"],
    });
    const [a, b] = cluster.nodes;
    const redis = cluster.redis;
    await using sub = await subscriber(b.port, "late/#", 2, { clientId: "sub-late" });
    await using pub = await connectClient(a.port, { clientId: "pub-late" });
    let done = false;
    let freezes = 0;
    // Frozen longer than command_timeout_ms: the broker gives up on the writes in flight, and
    // Redis runs them when it wakes up. Shorter than twice that: they are written again in time.
    const freezing = (async () => {
      await delay(300);
      while (!done && freezes < 2) {
        redis.signal("SIGSTOP");
        await delay(1500);
        redis.signal("SIGCONT");
        freezes++;
        await delay(700);
      }
    })();
    let result: Awaited<ReturnType<typeof publishAll>>;
    try {
      result = await publishAll(pub, "late/x", 400, () => freezes < 2, 16);
    } finally {
      done = true;
      redis.signal("SIGCONT");
      await freezing;
    }
    await eventually(
      "every acknowledged message arrived",
      () => result.acked.every((i) => received(sub.inbox).has(i)),
      15_000,
    );
    await delay(1000);
    const twice = [...received(sub.inbox)].filter(([, n]) => n > 1);
    console.log(
      `${freezes} freezes, ${result.published} published, ${result.refused} sends refused, ` +
        `${twice.length} delivered twice`,
    );
    // Refused sends are sent again as new messages: each must have been refused for certain
    // (never written), or the message arrives twice.
    assert.deepEqual(twice, [], "messages delivered twice");
    // One publisher, one topic: per QoS, delivered in the order the broker received them
    // [MQTT-4.6.0-6], the ones written again included (a refused one came again later, as a new
    // message). Even numbers are QoS 1, odd ones QoS 2.
    const late: number[] = [];
    for (const parity of [0, 1]) {
      const firstTry = sub.inbox.messages.map((m) => Number(m.payload))
        .filter((i) => i % 2 === parity && !result.refusedIds.has(i));
      late.push(...firstTry.filter((i, k) => k > 0 && i < firstTry[k - 1]));
    }
    assert.deepEqual(late, [], "messages delivered out of order");
    assert.equal(freezes, 2);
  },
});
