/**
 * A persistent-session QoS 1 subscriber that keeps moving between two nodes
 * (disconnect, connect to the other one, every few hundred messages) while a
 * publisher on one node sends 10,000 numbered QoS 1 messages: it receives
 * every one, in publish order (DUP redeliveries aside), its session is
 * present after every hop, and at the end nothing is left queued for it.
 */
import assert from "node:assert/strict";
import { expectSilence, RawClient } from "../helpers/broker.ts";
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
  // KNOWN BUG (see the scenarios report): a session taken over while messages flow loses the
  // messages that reach its old node after the hand-over. Unignore once the takeover closes it;
  // TEST_KNOWN_BUGS=1 runs it.
  ignore: ignore || !Deno.env.get("TEST_KNOWN_BUGS"),
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
    const publishing = pub.run(() => pub.sent >= N);
    let hops = 0;
    let done = false;
    const hopping = (async () => {
      let mark = 0;
      while (!done && sub.numbers("p").length < N) {
        const have = sub.numbers("p").length;
        if (have - mark >= HOP_EVERY) {
          mark = have;
          await sub.hop(sub.at === 0 ? 1 : 0);
          hops++;
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    await publishing;
    await eventually(
      "the subscriber has every message",
      () => new Set(sub.numbers("p").map((d) => d.n)).size >= N,
      30_000,
    ).catch(() => {});
    done = true;
    await hopping;
    const took = Date.now() - started;
    await sub.stop();
    const r = checkOrder(sub.numbers("p"), pub.acked, pub.resent);
    console.log(
      `${N} messages, ${hops} hops in ${took} ms: ${r.received} received, ${r.duplicates} ` +
        `duplicates (${r.dupFlagged} with DUP, ${r.undupFlagged} without), lost ${
          ranges(r.lost)
        }, disorder ` +
        `${r.disorder.slice(0, 5)}`,
    );
    assert.deepEqual(r.lost, [], "nothing lost");
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
