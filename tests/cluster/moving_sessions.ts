/**
 * The two windows in which a message can reach one session from two nodes,
 * as scenarios run at QoS 1 (e2e_hopping_test.ts, e2e_crash_reconnect_test.ts)
 * and at QoS 2 (e2e_exactly_once_test.ts):
 *
 * - hopping: a persistent subscriber keeps moving between two nodes while a
 *   publisher sends; a message published during a hop reaches the old node's
 *   session and the new node's holder (src/session/handover.ts);
 * - crash: the subscriber's node is killed (-9) and the subscriber reconnects
 *   to a survivor before the cluster noticed; what is published meanwhile
 *   reaches the dead node's inbox (adopted by a survivor) and the new node.
 *
 * Both copies carry one cluster-wide message id, and the session keeps one.
 * What a subscriber may still see twice: at QoS 1, a resend with DUP of what
 * was in flight when its connection ended (the protocol's own redelivery);
 * at QoS 2 nothing (MQTT.js hands a QoS 2 message over at PUBREL, once).
 * A number the publisher itself sent twice (it had to reconnect) is two
 * messages and not counted.
 */
import assert from "node:assert/strict";
import { delay, expectSilence, RawClient } from "../helpers/broker.ts";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import {
  checkOrder,
  type Delivery,
  NumberedPublisher,
  ranges,
  SessionSubscriber,
} from "../helpers/cluster_clients.ts";

/** Second copies the subscriber saw, other than DUP resends and the publisher's own resends. */
export function secondCopies(
  deliveries: readonly Delivery[],
  resent: ReadonlySet<number>,
): { withDup: number; withoutDup: number[] } {
  const seen = new Set<number>();
  let withDup = 0;
  const withoutDup: number[] = [];
  for (const d of deliveries) {
    if (seen.has(d.n) && !resent.has(d.n)) {
      if (d.dup) withDup++;
      else withoutDup.push(d.n);
    }
    seen.add(d.n);
  }
  return { withDup, withoutDup };
}

export interface HoppingOptions {
  qos: 1 | 2;
  /** Messages published. */
  n: number;
  /** The subscriber hops every this many distinct messages. */
  hopEvery: number;
}

/**
 * Waits until the last acknowledged message arrived (or 30 s), then for 300 ms of silence, stops
 * the subscriber and checks what it received: nothing acknowledged lost, publish order, no second
 * copy without DUP (but of the numbers in `mayRepeat`), and at QoS 2 none at all. Returns the
 * figures for the scenario's own checks.
 */
async function settleAndCheck(
  sub: SessionSubscriber,
  pub: NumberedPublisher,
  qos: 1 | 2,
  describe: (r: ReturnType<typeof checkOrder>, copies: ReturnType<typeof secondCopies>) => string,
  mayRepeat: ReadonlySet<number> = new Set(),
): Promise<ReturnType<typeof checkOrder>> {
  const last = Math.max(...pub.acked);
  await eventually(
    "the last message arrived",
    () => sub.numbers("p").some((d) => d.n === last),
    30_000,
  ).catch(() => {});
  await sub.quiet(300);
  await sub.stop();
  const r = checkOrder(sub.numbers("p"), pub.acked, pub.resent);
  const copies = secondCopies(sub.numbers("p"), pub.resent);
  console.log(
    `${describe(r, copies)}; second copies ${copies.withDup} with DUP, ` +
      `${copies.withoutDup.length} without (${ranges(copies.withoutDup).slice(0, 80)}); lost ` +
      `${ranges(r.lost)}, disorder ${r.disorder.slice(0, 3)}`,
  );
  assert.deepEqual(r.lost, [], "nothing acknowledged lost");
  assert.deepEqual(r.disorder, [], "in publish order");
  const unexpected = copies.withoutDup.filter((n) => !mayRepeat.has(n));
  assert.equal(ranges(unexpected), "", "no second copy without DUP");
  if (qos === 2) assert.equal(copies.withDup, 0, "QoS 2: exactly once");
  return r;
}

/**
 * A subscriber hopping between two nodes gets every message once (QoS 2) or
 * at least once with second copies only as DUP resends (QoS 1), in order,
 * with its session present after every hop and nothing left queued at the end.
 */
export async function hoppingSubscriber(o: HoppingOptions): Promise<void> {
  await using cluster = await TestCluster.start({
    names: ["a", "b"],
    args: [`--limits.max_queued_messages=${2 * o.n}`],
  });
  const ports = () => cluster.nodes.map((n) => n.port);
  const sub = await SessionSubscriber.start("hopper", ports, 0, "hop/#", o.qos);
  // The publisher stays on b; the subscriber starts on a and alternates a, b, a, ...
  // At QoS 2 its window stays below the broker's Receive Maximum (32), which MQTT.js ignores.
  const window = o.qos === 2 ? 30 : 100;
  const pub = new NumberedPublisher("p", "hop/x", () => [cluster.node("b").port], window, o.qos);
  const started = Date.now();
  let published = false;
  const publishing = pub.run(() => pub.sent >= o.n).finally(() => published = true);
  let hops = 0;
  let hopsWhilePublishing = 0;
  let done = false;
  const hopping = (async () => {
    let mark = 0;
    while (!done && sub.distinct("p") < o.n) {
      // Every hopEvery distinct messages (not "since the last hop", which drifts).
      if (sub.distinct("p") - mark >= o.hopEvery) {
        mark += o.hopEvery;
        if (!published) hopsWhilePublishing++;
        await sub.hop(sub.at === 0 ? 1 : 0);
        hops++;
      }
      await delay(5);
    }
  })();
  await publishing;
  await eventually("the subscriber has every message", () => sub.distinct("p") >= o.n, 60_000)
    .catch(() => {});
  done = true;
  await hopping;
  const took = Date.now() - started;
  // Second copies still queued behind the last first copy arrive before the client leaves.
  await sub.quiet(500);
  await sub.stop();
  const r = checkOrder(sub.numbers("p"), pub.acked, pub.resent);
  const copies = secondCopies(sub.numbers("p"), pub.resent);
  console.log(
    `QoS ${o.qos}: ${o.n} messages, ${hops} hops (${hopsWhilePublishing} while publishing) in ` +
      `${took} ms: ${r.received} received, second copies ${copies.withDup} with DUP, ` +
      `${copies.withoutDup.length} without; publisher resent ${pub.resent.size}; lost ` +
      `${ranges(r.lost)}, disorder ${r.disorder.slice(0, 5)}`,
  );
  assert.deepEqual(r.lost, [], "nothing lost");
  assert.deepEqual(r.disorder, [], "in publish order");
  assert.equal(ranges(copies.withoutDup), "", "no second copy without DUP");
  if (o.qos === 2) assert.equal(copies.withDup, 0, "QoS 2: exactly once");
  assert.equal(pub.acked.size, o.n);
  assert.equal(r.received, o.n);
  assert.equal(sub.sessionsLost, 0, "Session Present after every hop");
  assert.ok(hops >= o.n / o.hopEvery - 2, `hopped ${hops} times`);
  assert.ok(hopsWhilePublishing >= 1, `${hopsWhilePublishing} hops while publishing`);

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
}

/**
 * A subscriber whose session is taken over by a new connection on the other
 * node while its old connection still receives and acknowledges, again and
 * again while a publisher sends: what the old connection completed in the
 * overlap is remembered by the session ([cluster] dedupe_window), so the new
 * connection does not get it again.
 */
export async function takenOverWhileConnected(qos: 1 | 2, args: string[] = []): Promise<void> {
  await using cluster = await TestCluster.start({
    names: ["a", "b"],
    args: ["--limits.max_queued_messages=20000", ...args],
  });
  const ports = () => cluster.nodes.map((n) => n.port);
  const sub = await SessionSubscriber.start("taken", ports, 0, "to/#", qos);
  const pub = new NumberedPublisher("p", "to/x", () => [cluster.node("b").port], 30, qos);
  const N = 4000;
  let published = false;
  let takeovers = 0;
  // N messages, and on until three takeovers happened meanwhile (a faster broker would
  // otherwise be done first), but not forever.
  const publishing = pub.run(() => pub.sent >= 4 * N || (pub.sent >= N && takeovers >= 3))
    .finally(() => published = true);
  while (!published && takeovers < 8) {
    const mark = sub.distinct("p");
    await eventually("messages flow", () => sub.distinct("p") >= mark + 100 || published, 20_000);
    if (published) break;
    await sub.takeOver(sub.at === 0 ? 1 : 0);
    takeovers++;
  }
  await publishing;
  await settleAndCheck(
    sub,
    pub,
    qos,
    (r) =>
      `QoS ${qos}${args.length > 0 ? ` ${args}` : ""}: ${pub.acked.size} acknowledged, ` +
      `${takeovers} takeovers, ${r.received} received`,
  );
  assert.equal(sub.sessionsLost, 0);
  assert.ok(takeovers >= 3, `${takeovers} takeovers while publishing`);
}

/**
 * kill -9 of the subscriber's node while a publisher on another node sends
 * continuously: the subscriber reconnects to a survivor at once, before the
 * death is noticed, and gets every acknowledged message, in order, without
 * second copies (but DUP resends at QoS 1).
 *
 * One window stays at QoS 1: the dead node writes a PUBLISH to its client
 * and the message's in-flight record to Redis in the same turn, and the
 * socket is faster. A kill between the two leaves the store not knowing the
 * message was sent, and the survivor delivers it again as new, without DUP
 * (at least once; README). Such a copy can only be of a message the
 * subscriber had from the dead node, before the kill: any other is a failure.
 * At QoS 2 the client hands a message over only at PUBREL, which waits for
 * the PUBREC's write, so nothing repeats.
 */
export async function crashReconnect(qos: 1 | 2): Promise<void> {
  await using cluster = await TestCluster.start({
    names: ["a", "b", "c"],
    args: ["--limits.max_queued_messages=100000"],
  });
  const [a, b, c] = cluster.nodes;
  const sub = await SessionSubscriber.start("s", () => [a.port, b.port], 0, "k/#", qos);
  const pub = new NumberedPublisher("p", "k/x", () => [c.port], 1, qos);
  let stop = false;
  const publishing = pub.run(() => stop);
  await eventually("traffic flows", () => pub.acked.size > 200, 20_000);
  const killedAt = pub.sent;
  await a.kill();
  await delay(4000);
  stop = true;
  await publishing;
  // The subscriber's first connection was to the dead node.
  const fromDead = new Set(
    qos === 1 ? sub.numbers("p").filter((d) => d.connection === 0).map((d) => d.n) : [],
  );
  // A message the dead node delivered and saw acknowledged just before the kill, its inbox entry not
  // acknowledged yet, is not delivered again either: its id was stored with the acknowledgement.
  await settleAndCheck(
    sub,
    pub,
    qos,
    (r) =>
      `QoS ${qos}: ${pub.acked.size} acknowledged (${pub.acked.size - killedAt} after the kill), ` +
      `${r.received} received`,
    fromDead,
  );
  assert.equal(sub.sessionsLost, 0);
  assert.ok(
    pub.acked.size - killedAt > 100,
    "messages were published while the death went unnoticed",
  );
}
