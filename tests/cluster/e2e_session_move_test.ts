/**
 * A persistent session's state moving between nodes through the store, with
 * no traffic to blur it: 2,000 QoS 1 messages wait queued for an offline
 * subscriber, which then takes them in portions, each on the other node,
 * leaving some unacknowledged (read and not acknowledged, or still on their
 * way) every time it leaves. Each node must resume exactly where the last one
 * stopped: the messages in flight resent first with DUP, then the queue in
 * order; nothing acknowledged ever comes again, nothing is skipped, and at
 * the end nothing is left.
 *
 * A raw client reads every packet from the first byte after CONNACK, where a
 * resumed session starts sending.
 */
import assert from "node:assert/strict";
import { expectSilence, RawClient } from "../helpers/broker.ts";
import { TestCluster } from "../helpers/cluster.ts";
import { NumberedPublisher } from "../helpers/cluster_clients.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

const ID = "mover";
const N = 2000;
/** Messages read per visit. */
const PORTION = 150;
/** Of those, the last ones are left unacknowledged. */
const UNACKED = 5;
const RESUME = { clean: false, properties: { sessionExpiryInterval: 300 } };

Deno.test({
  name: "cluster: a queued session taken in portions on alternating nodes resumes exactly",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({
      names: ["a", "b"],
      args: ["--limits.max_queued_messages=5000"],
    });
    const port = (i: number) => cluster.nodes[i % 2].port;
    {
      await using c = await RawClient.connect(port(0));
      await c.handshake(ID, 5, { properties: { sessionExpiryInterval: 300 } });
      await c.sendPacket({
        cmd: "subscribe",
        messageId: 1,
        subscriptions: [{ topic: "mv/#", qos: 1 }],
      });
      await c.expect("suback");
      await c.sendPacket({ cmd: "disconnect" });
      await c.expectClosed();
    }
    const pub = new NumberedPublisher("p", "mv/x", () => [port(1)], 100);
    await pub.run(() => pub.sent >= N);
    assert.equal(pub.acked.size, N);

    /** Numbers acknowledged to the broker: never to be sent again. */
    const acked = new Set<number>();
    /** Numbers read and not acknowledged: may come again, with DUP only. */
    const open = new Set<number>();
    let next = 0;
    let dups = 0;
    const problems: string[] = [];
    let visit = 0;
    for (; next < N && visit < 40; visit++) {
      await using c = await RawClient.connect(port(visit));
      const ack = await c.handshake(ID, 5, RESUME);
      assert.equal(ack.sessionPresent, true, `visit ${visit}: session present`);
      for (let read = 0; read < PORTION && next < N; read++) {
        const p = await c.expect("publish", 5000);
        const n = Number(new TextDecoder().decode(p.payload as Uint8Array).split(":")[1]);
        const dup = p.dup === true;
        if (acked.has(n)) problems.push(`visit ${visit}: ${n} again after its PUBACK`);
        else if (open.has(n)) {
          dups++;
          if (!dup) problems.push(`visit ${visit}: ${n} again without DUP`);
        } else if (n !== next) {
          problems.push(`visit ${visit}: ${n} where ${next} was due`);
          next = Math.max(next, n + 1);
        } else next++;
        if (read < PORTION - UNACKED) {
          await c.sendPacket({ cmd: "puback", messageId: p.messageId });
          acked.add(n);
          open.delete(n);
        } else open.add(n);
      }
      await c.sendPacket({ cmd: "disconnect" });
      await c.expectClosed();
    }
    // The last visit acknowledges what is still in flight (resent with DUP) and hears nothing else.
    {
      await using c = await RawClient.connect(port(visit));
      assert.equal((await c.handshake(ID, 5, RESUME)).sessionPresent, true);
      for (;;) {
        const p = await c.next(1000).catch(() => null);
        if (p === null) break;
        assert.equal(p.cmd, "publish");
        const n = Number(new TextDecoder().decode(p.payload as Uint8Array).split(":")[1]);
        if (!open.has(n) || p.dup !== true) problems.push(`last visit: ${n} (dup ${p.dup})`);
        open.delete(n);
        await c.sendPacket({ cmd: "puback", messageId: p.messageId });
      }
      await c.sendPacket({ cmd: "disconnect" });
      await c.expectClosed();
    }
    console.log(`${visit + 1} visits, ${dups} DUP resends, ${problems.length} problems`);
    assert.deepEqual(problems, []);
    assert.equal(next, N, "every message arrived");
    assert.deepEqual([...open], [], "what was read and not acknowledged was resent");
    for (const i of [0, 1]) {
      await using c = await RawClient.connect(port(i));
      assert.equal((await c.handshake(ID, 5, RESUME)).sessionPresent, true);
      await expectSilence(c, 500);
      await c.sendPacket({ cmd: "disconnect" });
      await c.expectClosed();
    }
  },
});
