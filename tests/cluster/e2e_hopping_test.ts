/**
 * A persistent-session QoS 1 subscriber that keeps moving between two nodes
 * (disconnect, connect to the other one, every few hundred messages) while a
 * publisher on one node sends 10,000 numbered QoS 1 messages: it receives
 * every one, in publish order (second copies aside), its session is present
 * after every hop, and at the end nothing is left queued for it.
 *
 * Second copies: a resend with DUP of what was in flight when the client left,
 * and, without DUP, a message published during a hop while both nodes routed
 * to the session (the old node until it let go, the new node's holder from
 * before it asked: see src/session/handover.ts). Those are counted; a second
 * copy without DUP of a message published outside every hop's window would be
 * the session's state duplicated on its way through the store, and fails.
 */
import assert from "node:assert/strict";
import { delay, expectSilence, RawClient } from "../helpers/broker.ts";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import {
  checkOrder,
  NumberedPublisher,
  ranges,
  SessionSubscriber,
} from "../helpers/cluster_clients.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

const N = 10_000;
const HOP_EVERY = 400;

Deno.test({
  name: "cluster: a subscriber hopping between nodes gets all 10,000 messages in order",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({
      names: ["a", "b"],
      args: ["--limits.max_queued_messages=20000"],
    });
    const ports = () => cluster.nodes.map((n) => n.port);
    const sub = await SessionSubscriber.start("hopper", ports, 0, "hop/#");
    // The publisher stays on b; the subscriber starts on a and alternates a, b, a, ...
    const pub = new NumberedPublisher("p", "hop/x", () => [cluster.node("b").port], 100);
    const started = Date.now();
    let published = false;
    const publishing = pub.run(() => pub.sent >= N).finally(() => published = true);
    let hops = 0;
    let done = false;
    /** Numbers that may have been routed by both nodes: published around a hop under way. */
    const windows: [number, number][] = [];
    const hopping = (async () => {
      let mark = 0;
      while (!done && sub.distinct("p") < N) {
        // Every HOP_EVERY distinct messages (not "since the last hop", which drifts).
        if (sub.distinct("p") - mark >= HOP_EVERY) {
          mark += HOP_EVERY;
          // Up to 100 (the publisher's window) sent before the hop may still be on their way.
          const during = !published;
          const from = pub.sent - 100;
          await sub.hop(sub.at === 0 ? 1 : 0);
          if (during) windows.push([from, pub.sent]);
          hops++;
        }
        await delay(5);
      }
    })();
    await publishing;
    await eventually("the subscriber has every message", () => sub.distinct("p") >= N, 30_000)
      .catch(() => {});
    done = true;
    await hopping;
    const took = Date.now() - started;
    // Second copies still queued behind the last first copy arrive before the client leaves.
    await sub.quiet(500);
    await sub.stop();
    const r = checkOrder(sub.numbers("p"), pub.acked, pub.resent);
    const firsts = new Set<number>();
    const outside: number[] = [];
    for (const d of sub.numbers("p")) {
      if (firsts.has(d.n) && !d.dup && !windows.some(([lo, hi]) => d.n >= lo && d.n <= hi)) {
        outside.push(d.n);
      }
      firsts.add(d.n);
    }
    console.log(
      `${N} messages, ${hops} hops in ${took} ms: ${r.received} received, ${r.duplicates} ` +
        `duplicates (${r.dupFlagged} with DUP, ${r.undupFlagged} without; hops while ` +
        `publishing ${JSON.stringify(windows)}), lost ${ranges(r.lost)}, disorder ` +
        `${r.disorder.slice(0, 5)}`,
    );
    assert.deepEqual(r.lost, [], "nothing lost");
    assert.equal(ranges(outside), "", "second copies without DUP only from hops while publishing");
    assert.deepEqual(r.disorder, [], "in publish order");
    assert.equal(pub.acked.size, N);
    assert.equal(r.received, N);
    assert.equal(pub.reconnects, 0, "the publisher never had to reconnect");
    assert.equal(sub.sessionsLost, 0, "Session Present after every hop");
    assert.ok(hops >= N / HOP_EVERY - 2, `hopped ${hops} times`);

    // Nothing left queued: on either node the session is present and silent.
    for (const port of ports()) {
      await using last = await RawClient.connect(port);
      const ack = await last.handshake("hopper", 5, {
        clean: false,
        properties: { sessionExpiryInterval: 300 },
      });
      assert.equal(ack.sessionPresent, true);
      await expectSilence(last, 500);
      await last.sendPacket({ cmd: "disconnect" });
      await last.expectClosed();
    }
  },
});
