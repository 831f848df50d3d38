/**
 * kill -9 in the middle of QoS 1 and QoS 2 traffic to persistent sessions,
 * restart on the same data directory, and count with real clients: every
 * message whose PUBACK / PUBCOMP the publisher received reaches each
 * persistent subscriber (QoS 1 at least once, QoS 2 exactly once), retained
 * messages are as they were, and a session still belongs to its user.
 *
 * Figures (sent, acknowledged, delivered) are printed for the README.
 */
import assert from "node:assert/strict";
import { connectClient, endClient, freePort } from "../helpers/broker.ts";
import {
  connected,
  delay,
  drop,
  Inbox,
  kill9,
  mqttClient,
  Publisher,
  slowSubscriber,
  startDurable,
  tempProject,
} from "../helpers/durable.ts";

const PERSISTENT = { clean: false, properties: { sessionExpiryInterval: 3600 } };
/** Odd messages QoS 1, even ones QoS 2, each on its own topic. */
const topicOf = (seq: number) => `load/q${seq % 2 === 1 ? 1 : 2}`;
const qosOf = (seq: number): 1 | 2 => seq % 2 === 1 ? 1 : 2;

/**
 * Checks one subscriber's deliveries against what the publisher sent and had
 * acknowledged: each acknowledged message arrived; QoS 2 messages (to a QoS 2
 * subscription) arrived at most once, acknowledged or not; nothing arrived
 * that was never sent.
 */
function checkDeliveries(
  who: string,
  inbox: Inbox,
  subQos: 1 | 2,
  acked: ReadonlySet<number>,
  sent: number,
): { distinct: number; total: number; unacked: number } {
  const got = new Set([...inbox.seqs("load/q1"), ...inbox.seqs("load/q2")]);
  const missing = [...acked].filter((s) => !got.has(s)).sort((a, b) => a - b);
  assert.deepEqual(missing, [], `${who}: acknowledged messages lost`);
  for (const s of got) assert.ok(s >= 1 && s <= sent, `${who}: got ${s}, never sent`);
  if (subQos === 2) assert.deepEqual(inbox.duplicates("load/q2"), [], `${who}: QoS 2 duplicates`);
  return {
    distinct: got.size,
    total: inbox.total("load/q1") + inbox.total("load/q2"),
    unacked: [...got].filter((s) => !acked.has(s)).length,
  };
}

async function offlineCrash(sync: "ack-after-write" | "async") {
  await using p = await tempProject();
  const port = freePort();
  const args = [`--storage.sync=${sync}`];
  let broker = await startDurable(p.dir, port, args);
  try {
    const subs = [["off-q1", 1], ["off-q2", 2]] as const;
    for (const [id, qos] of subs) {
      const c = await connectClient(port, { clientId: id, username: "alice", ...PERSISTENT });
      await c.subscribeAsync(["load/#", "end"], { qos });
      await endClient(c);
    }
    // Retained state before the traffic: one kept, one deleted.
    const setup = await connectClient(port, { clientId: "setup" });
    await setup.publishAsync("ret/gone", "1", { qos: 1, retain: true });
    await setup.publishAsync("ret/gone", "", { qos: 1, retain: true });
    await setup.publishAsync("ret/kept", "2", { qos: 2, retain: true });
    await endClient(setup);

    const pubClient = mqttClient(port, { clientId: "pub", reconnectPeriod: 0 });
    await connected(pubClient);
    // Every tenth message is also retained, on one of three topics.
    const load = new Publisher(pubClient, (seq) => ({
      topic: seq % 10 === 0 ? `ret/${(seq / 10) % 3}` : topicOf(seq),
      qos: qosOf(seq),
      retain: seq % 10 === 0,
    }));
    load.start();
    await load.until(400);
    await kill9(broker);
    // Acknowledgements the broker sent before it died may still be in the socket.
    await delay(100);
    load.stop();
    await drop(pubClient);
    const acked = new Set(load.acked);
    const sent = load.sent;

    broker = await startDurable(p.dir, port, args);
    // Ownership holds after the restart: another user cannot take alice's session.
    await assert.rejects(
      connectClient(port, { clientId: "off-q1", username: "mallory", ...PERSISTENT }),
      /Not authorized/i,
    );
    const inboxes: Inbox[] = [];
    const clients = [];
    for (const [id] of subs) {
      const c = mqttClient(port, { clientId: id, username: "alice", ...PERSISTENT });
      const present = connected(c);
      inboxes.push(new Inbox(c));
      clients.push(c);
      assert.equal(await present, true, `${id}: session not present after the restart`);
    }
    const marker = await connectClient(port, { clientId: "marker" });
    const retained = new Inbox(marker);
    await marker.subscribeAsync(["ret/#", "end"], { qos: 1 });
    await marker.publishAsync("end", "0", { qos: 2 });
    for (const inbox of inboxes) await inbox.markersSeen(1);
    await retained.markersSeen(1);

    const loadAcked = new Set([...acked].filter((s) => s % 10 !== 0));
    const figures = subs.map(([id, qos], i) => ({
      id,
      ...checkDeliveries(id, inboxes[i], qos, loadAcked, sent),
    }));

    // Retained: as before the traffic, and each topic at its last acknowledged value or later.
    assert.deepEqual(retained.seqs("ret/kept"), [2]);
    assert.deepEqual(retained.seqs("ret/gone"), []);
    for (let k = 0; k < 3; k++) {
      const mine = [...acked].filter((s) => s % 10 === 0 && (s / 10) % 3 === k);
      const got = retained.seqs(`ret/${k}`);
      if (mine.length === 0) continue;
      assert.equal(got.length, 1, `ret/${k}: ${got}`);
      assert.ok(got[0] >= Math.max(...mine), `ret/${k} went back to ${got[0]}`);
    }
    console.log(
      `[figures] offline, sync=${sync}: sent ${sent}, acknowledged ${acked.size} ` +
        `(${loadAcked.size} to load/#); ` +
        figures.map((f) =>
          `${f.id} got ${f.distinct} distinct (${f.total} with repeats, ${f.unacked} unacknowledged)`
        ).join("; "),
    );
    await endClient(marker);
    for (const c of clients) await drop(c);
  } finally {
    await broker.stop();
  }
}

Deno.test("kill -9 during QoS 1/2 traffic to offline persistent sessions: nothing acknowledged is lost, QoS 2 once, retained and ownership survive", () =>
  offlineCrash("ack-after-write"));

Deno.test("kill -9 during QoS 1/2 traffic to online subscribers with messages in flight: every acknowledged message arrives, QoS 2 exactly once", async () => {
  await using p = await tempProject();
  const port = freePort();
  let broker = await startDurable(p.dir, port);
  try {
    let slow = true;
    const subs = [["on-q1", 1], ["on-q2", 2]] as const;
    const inboxes: Inbox[] = [];
    const clients = [];
    for (const [id, qos] of subs) {
      const c = slowSubscriber(port, { clientId: id, username: "bob", ...PERSISTENT }, () => slow);
      await connected(c);
      await c.subscribeAsync(["load/#", "end"], { qos });
      inboxes.push(new Inbox(c));
      clients.push(c);
    }
    // The publisher has a persistent session too and reconnects: its unfinished QoS 2 flows
    // complete after the restart, through the stored incoming packet ids.
    const pubClient = mqttClient(port, { clientId: "pub", ...PERSISTENT });
    await connected(pubClient);
    const load = new Publisher(pubClient, (seq) => ({ topic: topicOf(seq), qos: qosOf(seq) }));
    load.start();
    await load.until(300);
    await kill9(broker);
    load.stop();
    const ackedBefore = load.acked.size;
    const received = inboxes.map((i) => i.total("load/q1") + i.total("load/q2"));

    broker = await startDurable(p.dir, port);
    slow = false;
    // Everything the publisher sent is acknowledged once it has reconnected.
    await load.done;
    const acked = new Set(load.acked);
    assert.deepEqual([...load.failed], [], "publishes failed");
    assert.equal(acked.size, load.sent, "the publisher's flows did not all complete");
    // QoS 2 like the messages before it: a QoS 2 message reaches the application at PUBREL,
    // after a QoS 1 marker right behind it would.
    pubClient.publish("end", "0", { qos: 2 });
    for (const inbox of inboxes) await inbox.markersSeen(1);
    const figures = subs.map(([id, qos], i) => ({
      id,
      before: received[i],
      ...checkDeliveries(id, inboxes[i], qos, acked, load.sent),
    }));
    console.log(
      `[figures] online: sent ${load.sent}, acknowledged ${ackedBefore} before the kill and ` +
        `${acked.size} in all (${load.releasedBeforeCrash.size} by PUBCOMP 0x92 after it); ` +
        figures.map((f) =>
          `${f.id} had ${f.before} before the kill, ${f.distinct} distinct in all ` +
          `(${f.total} with repeats)`
        ).join("; "),
    );
    for (const c of [...clients, pubClient]) await drop(c);
  } finally {
    await broker.stop();
  }
});

// The trade-off of sync = "async": PUBACK/PUBREC do not wait for the write, so what was
// acknowledged in the moment before a crash (and, on power loss, since the last checkpoint)
// may be missing. This run shows the figures; it asserts only what async still promises:
// the broker restarts on its data, delivers nothing that was never sent, and sessions,
// retained messages and ownership come back.
Deno.test("kill -9 with sync = async: the broker restarts on its data; figures only", () =>
  offlineCrash("async").catch((e) => {
    // Loss of acknowledged messages is the documented trade-off, not a failure here.
    if (e instanceof Error && /acknowledged messages lost/.test(e.message)) {
      console.log(`[figures] async lost acknowledged messages: ${e.message.split("\n")[0]}`);
      return;
    }
    throw e;
  }));

Deno.test("kill -9 six times in a row during QoS 1/2 traffic (during redelivery, right after start-up): every acknowledged message arrives, QoS 2 exactly once", async () => {
  await using p = await tempProject();
  const port = freePort();
  let broker = await startDurable(p.dir, port);
  try {
    let slow = true;
    const subs = [["rk-q1", 1], ["rk-q2", 2]] as const;
    const inboxes: Inbox[] = [];
    const clients = [];
    for (const [id, qos] of subs) {
      const c = slowSubscriber(port, { clientId: id, ...PERSISTENT }, () => slow, 20);
      await connected(c);
      await c.subscribeAsync(["load/#", "end"], { qos });
      inboxes.push(new Inbox(c));
      clients.push(c);
    }
    // And one that stays offline until the end.
    const offline = await connectClient(port, { clientId: "rk-off", ...PERSISTENT });
    await offline.subscribeAsync(["load/#", "end"], { qos: 2 });
    await endClient(offline);
    const pubClient = mqttClient(port, { clientId: "pub", ...PERSISTENT });
    await connected(pubClient);
    const load = new Publisher(pubClient, (seq) => ({ topic: topicOf(seq), qos: qosOf(seq) }), 32);
    load.start();
    for (let k = 0; k < 6; k++) {
      await delay(200 + Math.random() * 600);
      await kill9(broker);
      await delay(Math.random() * 200);
      broker = await startDurable(p.dir, port);
    }
    await delay(300);
    load.stop();
    slow = false;
    await load.done;
    pubClient.publish("end", "0", { qos: 2 });
    for (const inbox of inboxes) await inbox.markersSeen(1);
    const back = mqttClient(port, { clientId: "rk-off", ...PERSISTENT });
    inboxes.push(new Inbox(back));
    clients.push(back);
    await inboxes[2].markersSeen(1);
    const acked = new Set(load.acked);
    const figures = [...subs, ["rk-off", 2] as const].map(([id, qos], i) => ({
      id,
      ...checkDeliveries(id, inboxes[i], qos, acked, load.sent),
    }));
    console.log(
      `[figures] 6 kills: sent ${load.sent}, acknowledged ${acked.size}; ` +
        figures.map((f) => `${f.id} got ${f.distinct} distinct (${f.total} with repeats)`)
          .join("; "),
    );
    for (const c of [...clients, pubClient]) await drop(c);
  } finally {
    await broker.stop();
  }
});
