/**
 * $SYS/broker/... topics: published at [general] sys_interval under Mosquitto's names, retained,
 * and readable only by clients the ACL lets subscribe to them.
 */
import assert from "node:assert/strict";
import type { Authenticator } from "../../mod.ts";
import {
  collect,
  connectClient,
  delay,
  endClient,
  type Inbox,
  type Received,
  startBroker,
  subscriber,
} from "../helpers/broker.ts";
import { startOps } from "../helpers/ops.ts";

/** Everyone is who they say they are: the ACL is what this test is about. */
const trustNames: Authenticator = {
  authenticate: (req) => ({ ok: true, username: req.username }),
};

const ACL = `user alice
topic read $SYS/#
topic readwrite app/#
user bob
topic readwrite app/#
`;

async function withAcl<T>(fn: (path: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-sys-" });
  try {
    await Deno.writeTextFile(`${dir}/acl`, ACL);
    return await fn(`${dir}/acl`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Waits for a message on `topic` (skipping others) and returns it with its arrival time. */
async function nextOn(
  got: Inbox,
  topic: string,
  timeoutMs = 4000,
): Promise<Received & { at: number }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = await got.next(Math.max(1, deadline - Date.now()));
    if (m.topic === topic) return { ...m, at: performance.now() };
  }
}

Deno.test("$SYS topics arrive every sys_interval for a client the ACL allows, and are refused to one it does not", async () => {
  await withAcl(async (acl) => {
    await using b = await startBroker({ auth: { acl_file: acl } }, { authenticator: trustNames });
    await using _o = await startOps(b.broker, 1);
    const alice = await connectClient(b.port, { clientId: "sys-alice", username: "alice" });
    const bob = await connectClient(b.port, { clientId: "sys-bob", username: "bob" });
    const forAlice = collect(alice);
    const forBob = collect(bob);

    // SUBACK 0x87: MQTT.js rejects with "Not authorized".
    await assert.rejects(bob.subscribeAsync("$SYS/#", { qos: 0 }), /Not authorized/);
    await assert.rejects(bob.subscribeAsync("$SYS/broker/uptime", { qos: 0 }), /Not authorized/);
    assert.equal((await alice.subscribeAsync("$SYS/#", { qos: 0 }))[0].qos, 0);

    // Retained: the version is there at once, from the publication at start.
    const version = await nextOn(forAlice, "$SYS/broker/version");
    assert.equal(version.payload, "mcloudtt version test");
    assert.equal(version.packet.retain, true);

    // The first uptime may be the retained copy delivered at SUBSCRIBE; time two ticks.
    await nextOn(forAlice, "$SYS/broker/uptime");
    const first = await nextOn(forAlice, "$SYS/broker/uptime");
    const second = await nextOn(forAlice, "$SYS/broker/uptime");
    assert.match(second.payload, /^\d+ seconds$/);
    const gap = second.at - first.at;
    assert.ok(gap > 500 && gap < 3000, `uptime updates ${gap} ms apart, configured 1 s`);

    // Both clients are connected: clients/connected reaches 2 within an interval or two.
    const deadline = Date.now() + 4000;
    const latest = () =>
      forAlice.messages.findLast((m) => m.topic === "$SYS/broker/clients/connected")?.payload;
    while (latest() !== "2" && Date.now() < deadline) await delay(50);
    assert.equal(latest(), "2");

    const seen = new Set(forAlice.messages.map((m) => m.topic));
    for (
      const topic of [
        "$SYS/broker/clients/total",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/retained messages/count",
        "$SYS/broker/store/messages/count",
        "$SYS/broker/store/messages/bytes",
        "$SYS/broker/load/messages/received/1min",
        "$SYS/broker/load/messages/sent/5min",
        "$SYS/broker/load/bytes/received/15min",
      ]
    ) {
      assert.ok(seen.has(topic), `${topic} was not published`);
    }
    assert.equal(forBob.messages.length, 0, "bob received $SYS messages");
    await forBob.none(300);
    await endClient(alice);
    await endClient(bob);
  });
});

Deno.test("with no ACL every client may read $SYS; a client cannot publish into $SYS", async () => {
  await using b = await startBroker();
  await using _o = await startOps(b.broker, 1);
  const c = await subscriber(b.port, "$SYS/broker/#", 0, { clientId: "sys-anyone" });
  const v = await nextOn(c.inbox, "$SYS/broker/version");
  assert.equal(v.payload, "mcloudtt version test");
  // A client's PUBLISH to $SYS is refused (0x87), so nobody can forge broker figures.
  await assert.rejects(c.publishAsync("$SYS/broker/version", "forged", { qos: 1 }));
  await delay(100);
  assert.ok(!c.inbox.messages.some((m) => m.payload === "forged"));
  await endClient(c);
});

Deno.test("a wildcard subscription at the root does not receive $SYS topics", async () => {
  await using b = await startBroker();
  await using _o = await startOps(b.broker, 1);
  const c = await subscriber(b.port, "#", 0, { clientId: "sys-hash" });
  await c.inbox.none(1500);
  await endClient(c);
});
