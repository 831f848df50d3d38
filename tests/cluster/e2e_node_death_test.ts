/**
 * kill -9 of a broker process in a three-node cluster: the wills of its
 * clients are published once, by one survivor, within a bound of about
 * lease_ttl + lease_renew (+ Will Delay); a will whose client comes back in
 * time is not published; persistent sessions resume on a surviving node with
 * every message queued before and after the crash.
 */
import assert from "node:assert/strict";
import { connectClient, delay, RawClient, subscriber } from "../helpers/broker.ts";
import { eventually, FAST_LEASES, TestCluster } from "../helpers/cluster.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

const PERSISTENT = { clean: false, properties: { sessionExpiryInterval: 300 } };

function will(name: string, delaySeconds: number) {
  return {
    topic: `will/${name}`,
    payload: `${name} died`,
    qos: 1 as const,
    retain: false,
    properties: { willDelayInterval: delaySeconds },
  };
}

Deno.test({
  name: "cluster: kill -9 of a node: wills once within the bound, sessions resume with their queue",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b", "c"] });
    const [a, b, c] = cluster.nodes;
    await using watcher = await subscriber(c.port, "will/#", 1, { clientId: "watcher" });
    await using pub = await connectClient(c.port, { clientId: "pub" });

    // On a: a will without delay (clean session), a will with a 2 s delay (persistent), a will
    // with a 3 s delay whose client comes back in time, and an offline persistent subscriber.
    const now0 = await connectClient(a.port, { clientId: "w0", will: will("w0", 0) });
    const late2 = await connectClient(a.port, {
      clientId: "w2",
      will: will("w2", 2),
      ...PERSISTENT,
    });
    const back3 = await connectClient(a.port, {
      clientId: "w3",
      will: will("w3", 3),
      ...PERSISTENT,
    });
    const ps = await connectClient(a.port, { clientId: "ps", ...PERSISTENT });
    await ps.subscribeAsync("q7/#", { qos: 1 });
    await ps.endAsync();
    for (let i = 0; i < 20; i++) await pub.publishAsync("q7/x", `m${i}`, { qos: 1 });

    const killedAt = Date.now();
    await a.kill();
    for (const client of [now0, late2, back3]) client.end(true);
    // Acknowledged while a is dead but not yet known to be: these must not be lost either.
    for (let i = 20; i < 25; i++) await pub.publishAsync("q7/x", `m${i}`, { qos: 1 });

    const first = await watcher.inbox.next(10_000);
    const w0At = Date.now() - killedAt;
    assert.equal(first.topic, "will/w0");
    // w3's client comes back (on b) before its Will Delay: its will must never be published.
    await using w3again = await connectClient(b.port, { clientId: "w3", ...PERSISTENT });
    assert.equal(w3again.connected, true);
    const second = await watcher.inbox.next(10_000);
    const w2At = Date.now() - killedAt;
    assert.equal(second.topic, "will/w2");
    await watcher.inbox.none(2500); // no duplicate, and no w3 (its delay has passed by now)

    const { renewMs, ttlMs } = FAST_LEASES;
    console.log(
      `will without delay after ${w0At} ms, with 2 s delay after ${w2At} ms ` +
        `(lease_ttl ${ttlMs} ms, renew ${renewMs} ms)`,
    );
    // The bound: the lease runs out (ttl), a survivor's next renewal notices (renew), plus slack
    // for a loaded machine; a delayed will adds its delay.
    const slack = 1500;
    assert.ok(w0At <= ttlMs + renewMs + slack, `will w0 after ${w0At} ms`);
    assert.ok(w2At >= 2000, `will w2 waited its delay (${w2At} ms)`);
    assert.ok(w2At <= ttlMs + renewMs + 2000 + slack, `will w2 after ${w2At} ms`);

    // The persistent session resumes on a survivor with all 25 messages, in order. A message
    // the dead node had forwarded may come twice (its inbox is handed over at least once).
    const r = await RawClient.connect(b.port);
    const ack = await r.handshake("ps", 5, PERSISTENT);
    assert.equal(ack.sessionPresent, true);
    const firsts: string[] = [];
    let copies = 0;
    while (firsts.length < 25) {
      const p = await r.expect("publish");
      const m = new TextDecoder().decode(p.payload as Uint8Array);
      if (firsts.includes(m)) copies++;
      else firsts.push(m);
      assert.ok(copies <= 5, `at most a few second copies, got ${copies}`);
      await r.sendPacket({ cmd: "puback", messageId: p.messageId });
    }
    assert.deepEqual(firsts, Array.from({ length: 25 }, (_, i) => `m${i}`));
    r.close();
    await eventually("c still serves", () => watcher.connected);
    await delay(10);
  },
});
