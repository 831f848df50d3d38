/**
 * Redis refusing the store's writes while Redis itself stays up: the
 * publisher's node has acknowledged the messages (they are in the receiving
 * node's inbox), the receiving node queues them for an offline persistent
 * session, and its store write fails. Redis is made to refuse exactly the
 * store's writes by an ACL that denies EVALSHA/EVAL to the brokers' user for
 * a moment (the store writes sessions with scripts; forwarding and inbox
 * reads are plain stream commands and go on). A failed write is retried
 * until it succeeds, the inbox entries are acknowledged only after it, and
 * past `[storage] max_unwritten_ops` QoS 1/2 publishes are refused (0x97)
 * instead of acknowledged.
 */
import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { RedisStore } from "../../src/store/redis.ts";
import { connectClient, delay, type Packet, RawClient } from "../helpers/broker.ts";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

type P = Packet & Record<string, unknown>;
const PERSISTENT = { clean: false, properties: { sessionExpiryInterval: 300 } };
// The brokers' lease renewals are scripts too: leases long enough that the refusal window (under
// 2 s) never lets one run out.
const LEASES = ["--cluster.lease_renew_ms=1000", "--cluster.lease_ttl_ms=6000"];
const utf8 = new TextDecoder();

/** The test's own connection: a user of its own, which the refusal does not touch. */
async function inspector(port: number): Promise<Redis> {
  const admin = new Redis(port, "127.0.0.1");
  await admin.call("ACL", "SETUSER", "inspector", "on", "nopass", "~*", "&*", "+@all");
  admin.disconnect();
  return new Redis({ port, host: "127.0.0.1", username: "inspector", password: "x" });
}

/** Redis refuses every script of the brokers' user: their stores cannot write, streams work. */
async function refuseScripts(redis: Redis): Promise<void> {
  await redis.call("ACL", "SETUSER", "default", "-evalsha", "-eval");
}

async function allowScripts(redis: Redis): Promise<void> {
  await redis.call("ACL", "SETUSER", "default", "+@all");
}

/** Numbers queued for `clientId` as Redis holds its session now. */
async function storedNumbers(redis: Redis, clientId: string): Promise<Set<number>> {
  const store = new RedisStore(redis, { keyPrefix: "mcloudtt", nodeId: "test" });
  const s = await store.loadSession(clientId);
  return new Set(s?.queue.map((q) => Number(utf8.decode(q.msg.payload))));
}

/** Creates the offline persistent session `clientId` subscribed to `filter` at QoS 1 on `port`. */
async function offlineSession(port: number, clientId: string, filter: string): Promise<void> {
  const c = await RawClient.connect(port);
  await c.handshake(clientId, 5, PERSISTENT);
  await c.sendPacket({
    cmd: "subscribe",
    messageId: 1,
    subscriptions: [{ topic: filter, qos: 1 }],
  });
  assert.deepEqual((await c.expect("suback")).granted, [1]);
  await c.sendPacket({ cmd: "disconnect" });
  await c.expectClosed();
}

/** Resumes `clientId` on `port` and reads its messages until `want` all came (or 5 s of silence). */
async function resume(port: number, clientId: string, want: number[]): Promise<number[]> {
  const c = await RawClient.connect(port);
  try {
    const ack = await c.handshake(clientId, 5, PERSISTENT);
    assert.equal(ack.sessionPresent, true, `${clientId} resumed`);
    const got: number[] = [];
    const seen = new Set<number>();
    while (!want.every((i) => seen.has(i))) {
      const p = await c.next(5000).catch(() => null) as P | null;
      if (p === null) break;
      if (p.cmd !== "publish") continue;
      const i = Number(utf8.decode(p.payload as Uint8Array));
      got.push(i);
      seen.add(i);
      await c.sendPacket({ cmd: "puback", messageId: p.messageId });
    }
    return got;
  } finally {
    c.close();
  }
}

Deno.test({
  name: "store faults: a failed store write is retried, an offline session's acknowledged " +
    "messages survive a kill -9 of its node",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b"], args: LEASES });
    const [a, b] = cluster.nodes;
    const redis = await inspector(cluster.redis.port);
    try {
      await offlineSession(b.port, "offline", "f/#");
      await using pub = await connectClient(a.port, { clientId: "pub" });
      const acked: number[] = [];
      const publish = async (from: number, to: number) => {
        for (let i = from; i < to; i++) {
          await pub.publishAsync("f/x", `${i}`, { qos: 1 });
          acked.push(i);
        }
      };
      await publish(0, 10);

      // a forwards into b's inbox (a stream) and acknowledges; b cannot write the session.
      await refuseScripts(redis);
      const refusedAt = performance.now();
      await publish(10, 40);
      await b.proc.waitFor(/store write of \d+ operations failed/, 5000);
      // b's inbox connection drops meanwhile: it reads its pending entries again, and must not
      // queue the ones it already holds once more for every read (that flooded the queue).
      const list = String(await redis.call("CLIENT", "LIST"));
      const inbox = list.split("\n").find((l) => l.includes(`name=mcloudtt:inbox:${b.nodeId}`));
      assert.ok(inbox, "b's inbox connection is listed");
      await redis.call("CLIENT", "KILL", "ID", /id=(\d+)/.exec(inbox)![1]);
      await delay(600);
      const storedThen = await storedNumbers(redis, "offline");
      const missing = acked.filter((i) => !storedThen.has(i)).length;
      await allowScripts(redis);
      const windowMs = performance.now() - refusedAt;

      // The retry writes what failed: Redis holds every acknowledged message.
      await eventually("the store holds every acknowledged message", async () => {
        const stored = await storedNumbers(redis, "offline");
        return acked.every((i) => stored.has(i));
      }, 5000);
      await publish(40, 50);

      // b dies: a adopts the session from Redis and b's inbox; nothing acknowledged is lost.
      await b.kill();
      await a.proc.waitFor(/died: adopted 1 of its sessions/, 20_000);
      const got = await resume(a.port, "offline", acked);
      const lost = acked.filter((i) => !got.includes(i));
      console.log(
        `${acked.length} acknowledged, ${missing} of the 40 then not in Redis while scripts were refused ` +
          `(${Math.round(windowMs)} ms); after kill -9 of b: ${lost.length} lost, ` +
          `${got.length - new Set(got).size} duplicates`,
      );
      assert.deepEqual(lost, [], "acknowledged, lost");
      assert.ok(got.length - new Set(got).size <= 40, "no flood of duplicates");
    } finally {
      await allowScripts(redis).catch(() => {});
      redis.disconnect();
    }
  },
});

Deno.test({
  name: "store faults: past storage.max_unwritten_ops QoS 1 publishes are refused (0x97), " +
    "the waiting ones acknowledged once the store is back",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({
      names: ["a"],
      args: [...LEASES, "--storage.max_unwritten_ops=20"],
    });
    const [a] = cluster.nodes;
    const redis = await inspector(cluster.redis.port);
    try {
      await offlineSession(a.port, "offline", "g/#");
      const pub = await RawClient.connect(a.port);
      await pub.handshake("pub", 5);
      const old = await RawClient.connect(a.port, 4);
      await old.handshake("pub311", 4);
      await refuseScripts(redis);
      const N = 40;
      for (let i = 1; i <= N; i++) {
        await pub.sendPacket({
          cmd: "publish",
          topic: "g/x",
          payload: `${i}`,
          qos: 1,
          messageId: i,
        });
      }
      // The first ones wait for the store (it is failing); past the bound the rest are refused.
      const codes = new Map<number, number>();
      const early: number[] = [];
      for (;;) {
        const p = await pub.next(1000).catch(() => null) as P | null;
        if (p === null) break;
        if (p.cmd === "puback") early.push(p.messageId as number);
      }
      assert.deepEqual(early, [], "nothing acknowledged while the store refuses writes");
      // MQTT 3.1.1 cannot refuse a PUBLISH: past the bound the connection closes, unacknowledged.
      await old.sendPacket(
        { cmd: "publish", topic: "g/x", payload: "311", qos: 1, messageId: 1 },
        4,
      );
      await old.expectClosed();
      await allowScripts(redis);
      while (codes.size < N) {
        const p = await pub.next(10_000) as P;
        if (p.cmd !== "puback") continue;
        codes.set(p.messageId as number, (p.reasonCode as number | undefined) ?? 0);
      }
      pub.close();
      const accepted = [...codes].filter(([, c]) => c === 0).map(([i]) => i);
      const refused = [...codes].filter(([, c]) => c === 0x97).map(([i]) => i);
      console.log(
        `${accepted.length} acknowledged after the store came back, ${refused.length} ` +
          "refused with 0x97",
      );
      assert.equal(accepted.length + refused.length, N, "every PUBACK is 0x00 or 0x97");
      assert.ok(refused.length > 0, "publishes past the bound were refused");
      assert.ok(accepted.length >= 10, "publishes below the bound were kept");
      // In order: the refused ones are the last ones (the bound was reached once).
      assert.ok(Math.max(...accepted) < Math.min(...refused), "refused only past the bound");
      const got = await resume(a.port, "offline", accepted);
      assert.deepEqual(accepted.filter((i) => !got.includes(i)), [], "acknowledged, lost");
      assert.ok(!got.some((i) => refused.includes(i) || i === 311), "refused ones were not routed");
      const metrics = await (await fetch(`${await a.httpUrl()}/metrics`)).text();
      assert.match(
        metrics,
        new RegExp(`mcloudtt_publishes_refused_store_full_total ${refused.length + 1}`),
      );
    } finally {
      await allowScripts(redis).catch(() => {});
      redis.disconnect();
    }
  },
});
