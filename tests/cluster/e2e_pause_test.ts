/**
 * A node frozen past its lease (SIGSTOP), as a long GC pause, a stalled VM or
 * a throttled container would freeze it: the cluster declares it dead,
 * publishes its clients' wills (after their Will Delay) and adopts its
 * sessions; a client that reconnects elsewhere resumes with its queue. When
 * the node wakes up (SIGCONT) it learns it was expelled: it drops the
 * connections and sessions it still held (0x8E: they were taken over by the
 * cluster) without delivering what it had read before the freeze or writing
 * over the adopted sessions, publishes no will a second time, and rejoins the
 * cluster, which routes to it again.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { connectClient, type Packet, RawClient, subscriber } from "../helpers/broker.ts";
import { eventually, FAST_LEASES, TestCluster } from "../helpers/cluster.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

type P = Packet & Record<string, unknown>;

const PERSISTENT = { clean: false, properties: { sessionExpiryInterval: 300 } };
const text = (p: P) => new TextDecoder().decode(p.payload as Uint8Array);

function will(name: string, delaySeconds: number) {
  return {
    topic: `will/${name}`,
    payload: Buffer.from(`${name} died`),
    qos: 1,
    retain: false,
    properties: { willDelayInterval: delaySeconds },
  };
}

/** Every packet `c` gets until it closes or `quietMs` pass without one. */
async function drain(c: RawClient, quietMs: number): Promise<P[]> {
  const out: P[] = [];
  for (;;) {
    let p: Packet | null;
    try {
      p = await c.next(quietMs);
    } catch {
      return out;
    }
    if (p === null) return out;
    out.push(p as P);
  }
}

Deno.test({
  name: "cluster: a node frozen past its lease is expelled, its sessions adopted, then rejoins",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b"] });
    const [a, b] = cluster.nodes;
    await using watcher = await subscriber(b.port, "will/#", 1, { clientId: "watcher" });
    await using pub = await connectClient(b.port, { clientId: "pub" });

    // On a: a persistent subscriber with a delayed will, online; a clean client with a will.
    const ps = await RawClient.connect(a.port);
    await ps.handshake("ps", 5, { ...PERSISTENT, will: will("ps", 1) });
    await ps.sendPacket({
      cmd: "subscribe",
      messageId: 1,
      subscriptions: [{ topic: "q/#", qos: 1 }],
    });
    await ps.expect("suback");
    const cl = await RawClient.connect(a.port);
    await cl.handshake("cl", 5, { will: will("cl", 0) });
    for (let i = 0; i < 3; i++) await pub.publishAsync("q/x", `m${i}`, { qos: 1 });
    for (let i = 0; i < 3; i++) {
      const p = await ps.expect("publish", 10_000);
      assert.equal(text(p), `m${i}`);
      await ps.sendPacket({ cmd: "puback", messageId: p.messageId });
    }
    // A round trip after the acknowledgements: a has read them before it freezes.
    await ps.sendPacket({ cmd: "pingreq" });
    await ps.expect("pingresp");

    a.signal("SIGSTOP");
    const stoppedAt = Date.now();
    try {
      // Published while a is frozen: the first ones go to a's inbox (a has not been declared
      // dead yet), later ones to the session b adopts. None may be lost, none delivered twice.
      for (let i = 3; i < 13; i++) {
        await pub.publishAsync("q/x", `m${i}`, { qos: 1 });
        await new Promise((r) => setTimeout(r, 300));
      }
      const firstWill = await watcher.inbox.next(30_000);
      const secondWill = await watcher.inbox.next(30_000);
      const byTopic = new Map([firstWill, secondWill].map((w) => [w.topic, Date.now()]));
      assert.deepEqual([...byTopic.keys()].sort(), ["will/cl", "will/ps"]);
      assert.equal(firstWill.topic, "will/cl", "the will without delay comes first");
      const elapsed = Date.now() - stoppedAt;
      console.log(`wills published ${elapsed} ms after SIGSTOP (lease ttl ${FAST_LEASES.ttlMs})`);

      // ps resumes on b while a is still frozen: Session Present, the ten queued messages.
      const ps2 = await RawClient.connect(b.port);
      const ack = await ps2.handshake("ps", 5, PERSISTENT);
      assert.equal(ack.sessionPresent, true, "the adopted session is present on b");
      const got: P[] = [];
      while (got.at(-1) === undefined || text(got.at(-1)!) !== "m12") {
        const p = await ps2.expect("publish", 10_000);
        got.push(p);
        await ps2.sendPacket({ cmd: "puback", messageId: p.messageId });
      }
      // What a had sent before it froze may come again (its PUBACK, or the move from queue to
      // in flight, may not have been written yet: then without DUP); everything published since
      // comes once, in order.
      const before = ["m0", "m1", "m2"];
      const fresh = got.map(text).filter((t) => !before.includes(t));
      assert.deepEqual(fresh, Array.from({ length: 10 }, (_, i) => `m${i + 3}`));
      // A copy from the queue (without DUP) and one resent from in flight (DUP) are both allowed
      // at QoS 1; a stream of them is not.
      const again = got.map(text).filter((t) => before.includes(t));
      assert.ok(again.length <= 2 * before.length, `sent again: ${again}`);

      // a wakes up.
      a.signal("SIGCONT");
      await a.proc.waitFor(/declared dead by the cluster/, 30_000);
      // Its old connections are closed; the old ps connection gets none of the messages a had
      // read into its inbox before it froze (b delivered those).
      const oldPs = await drain(ps, 10_000);
      const oldCl = await drain(cl, 10_000);
      console.log(`old ps got ${JSON.stringify(oldPs.map((p) => [p.cmd, p.reasonCode]))}`);
      assert.deepEqual(oldPs.filter((p) => p.cmd === "publish").map(text), [], "nothing twice");
      assert.equal(ps.closed, true, "the expelled node closed the old ps connection");
      assert.equal(cl.closed, true, "the expelled node closed the old cl connection");
      for (const old of [oldPs, oldCl]) {
        const last = old.at(-1);
        assert.equal(last?.cmd, "disconnect");
        assert.equal(last?.reasonCode, 0x8e, "session taken over (by the cluster)");
      }
      // No will a second time, and the session on b is intact: nothing resent to ps2.
      await watcher.inbox.none(1000);
      await pub.publishAsync("q/x", "m13", { qos: 1 });
      const live = await ps2.expect("publish", 10_000);
      assert.equal(text(live), "m13");
      await ps2.sendPacket({ cmd: "puback", messageId: live.messageId });
      const extra = await drain(ps2, 1000);
      assert.deepEqual(extra.map((p) => p.cmd), [], "no duplicate on the adopted session");

      // a rejoined: it routes again both ways.
      await a.proc.waitFor(/cluster state resynchronised \(expelled\)/, 30_000);
      await using onA = await subscriber(a.port, "r/#", 1, { clientId: "onA" });
      await pub.publishAsync("r/1", "to-a", { qos: 1 });
      assert.equal((await onA.inbox.next(10_000)).payload, "to-a");
      await onA.publishAsync("q/x", "from-a", { qos: 1 });
      const fromA = await ps2.expect("publish", 10_000);
      assert.equal(text(fromA), "from-a");
      await ps2.sendPacket({ cmd: "puback", messageId: fromA.messageId });
      // The session is b's: a resumed it nowhere, and a reconnect to a takes it from b.
      ps2.close();
      await eventually("b saw ps2 leave", () => ps2.closed, 10_000);
      await using ps3 = await RawClient.connect(a.port);
      const ack3 = await ps3.handshake("ps", 5, PERSISTENT);
      assert.equal(ack3.sessionPresent, true);
      assert.deepEqual(await drain(ps3, 500), [], "nothing left queued");
    } finally {
      a.signal("SIGCONT");
      ps.close();
      cl.close();
    }
  },
});
