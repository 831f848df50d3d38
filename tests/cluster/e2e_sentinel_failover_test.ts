/**
 * A Sentinel failover in the middle of QoS 1 traffic between two broker
 * processes: the primary is killed (-9), Sentinel promotes a replica, the
 * nodes follow it (ioredis asks the sentinels again), `/readyz` is ready
 * again, traffic resumes, and neither node takes the other for dead although
 * both lost Redis for longer than their lease.
 *
 * Redis replicates asynchronously, so the replicas lag behind the primary by
 * whatever it confirmed last. The test makes that lag visible: the replicas
 * are frozen and their links cut shortly before the kill, so everything the
 * primary confirms in between exists only on the primary. With `[redis]
 * wait_replicas = 1` the publishes confirmed in that window are refused
 * instead (PUBACK 0x80) and sent again after the failover: every
 * acknowledged message reaches the online subscriber and the persistent
 * session resumed on the other node.
 */
import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { RedisStore } from "../../src/store/redis.ts";
import { connectClient, delay, type Packet, RawClient, subscriber } from "../helpers/broker.ts";
import { eventually, publishNumbered, TestCluster } from "../helpers/cluster.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";
import { RedisSentinelGroup } from "../helpers/redis_groups.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

type P = Packet & Record<string, unknown>;
const PERSISTENT = { clean: false, properties: { sessionExpiryInterval: 300 } };

interface Outcome {
  acked: number;
  /** Acknowledged while the replicas were cut off (before the kill). */
  inWindow: number;
  refused: number;
  /** Acknowledged numbers the session resumed on the other node never received. */
  lost: number[];
  /**
   * Acknowledged numbers missing from the session as Redis holds it before the
   * takeover (node b still has them in memory and hands them over).
   */
  missingInRedis: number;
  /** Acknowledged numbers the online subscriber never received. */
  liveLost: number[];
  /** kill -9 of the primary to the sentinels naming the new one, ms. */
  failoverMs: number;
  /** kill -9 of the primary to the next acknowledged publish, ms. */
  resumedMs: number;
}

/** How many of `acked` the stored session "offline" lacks, as the Redis on `port` holds it. */
async function missingFromRedis(port: number, acked: number[]): Promise<number> {
  const client = new Redis(port, "127.0.0.1");
  try {
    const store = new RedisStore(client, { keyPrefix: "mcloudtt", nodeId: "test" });
    const s = await store.loadSession("offline");
    const stored = new Set(s?.queue.map((q) => Number(new TextDecoder().decode(q.msg.payload))));
    return acked.filter((i) => !stored.has(i)).length;
  } finally {
    client.disconnect();
  }
}

/**
 * The scenario with `[redis] wait_replicas`; Sentinel declares the primary
 * down after `downAfterMs` (the outage then lasts about that plus 1 s).
 */
async function failover(waitReplicas: number, downAfterMs: number): Promise<Outcome> {
  await using cluster = await TestCluster.start({
    names: ["a", "b"],
    args: [`--redis.wait_replicas=${waitReplicas}`, "--redis.wait_timeout_ms=500"],
    redis: () => RedisSentinelGroup.start({ replicas: 2, sentinels: 1, downAfterMs }),
  });
  const [a, b] = cluster.nodes;
  const group = cluster.redis;

  // The offline subscriber: its session lives on b (in memory) and in Redis; it resumes on a.
  const setup = await RawClient.connect(b.port);
  await setup.handshake("offline", 5, PERSISTENT);
  await setup.sendPacket({
    cmd: "subscribe",
    messageId: 1,
    subscriptions: [{ topic: "f/#", qos: 1 }],
  });
  assert.deepEqual((await setup.expect("suback")).granted, [1]);
  await setup.sendPacket({ cmd: "disconnect" });
  await setup.expectClosed();
  // An online subscriber on b as well: live traffic must resume after the failover.
  await using live = await subscriber(b.port, "f/#", 1, { clientId: "live" });

  await using pub = await connectClient(a.port, { clientId: "pub" });
  const N = 400;
  let killedAt = 0;
  let cutAt = 0;
  let failoverMs = 0;
  let chaos: Promise<void> | null = null;
  const result = await publishNumbered(pub, "f/x", N, {
    rate: 200,
    onAck: (i) => {
      if (i !== 100 || chaos !== null) return;
      chaos = (async () => {
        const primary = await group.primary();
        const replicas = group.servers.filter((s) => s !== primary);
        // The replicas fall behind: frozen (so they cannot reconnect and catch up), then their
        // links cut; what the primary confirms from now on exists only there.
        for (const r of replicas) r.signal("SIGSTOP");
        await primary.command("CLIENT", "KILL", "TYPE", "replica");
        cutAt = performance.now();
        await delay(300);
        await primary.kill();
        killedAt = performance.now();
        for (const r of replicas) r.signal("SIGCONT");
        await group.waitForFailover(primary.port);
        failoverMs = performance.now() - killedAt;
      })();
    },
  }).catch((e) => {
    // What the nodes said about Redis and their clients, for a failure seen once under the full
    // suite and never alone.
    const said = (n: typeof a) =>
      n.output().split("\n").filter((l) =>
        /WARN|ERR|dead|expelled|taken over|closing pub |client pub disconnected/i.test(l)
      )
        .slice(-30).join("\n");
    throw new Error(`${(e as Error).message}\nnode a:\n${said(a)}\nnode b:\n${said(b)}`);
  });
  await chaos;
  const inWindow = [...result.ackedAt.values()].filter((t) => t > cutAt && t < killedAt).length;
  const after = [...result.ackedAt].filter(([, t]) => t > killedAt).map(([, t]) => t);
  const resumedMs = Math.min(...after) - killedAt;

  // Both nodes follow the new primary and say so.
  for (const n of [a, b]) {
    await eventually(`${n.name} ready again`, async () => (await n.readiness()).status === 200);
  }
  // The online subscriber on b: what of the acknowledged messages reached it.
  const liveSeen = () => new Set(live.inbox.messages.map((m) => Number(m.payload)));
  await eventually("live subscriber got every acknowledged message", () => {
    const seen = liveSeen();
    return result.acked.every((i) => seen.has(i));
  }, 5000).catch(() => {});
  const liveLost = result.acked.filter((i) => !liveSeen().has(i));

  // Both nodes were cut off from Redis alike: neither may take the other for dead.
  for (const n of [a, b]) {
    assert.doesNotMatch(n.output(), /is dead|declared dead/, `${n.name} saw no node die`);
  }
  const missingInRedis = await missingFromRedis((await group.primary()).port, result.acked);
  // The offline session resumes on a (b hands over what it holds).
  const resumed = await RawClient.connect(a.port);
  try {
    const ack = await resumed.handshake("offline", 5, PERSISTENT);
    assert.equal(ack.sessionPresent, true, "the session resumed on a");
    const got = new Set<number>();
    // Until every acknowledged number came, or a long silence: on a loaded machine the takeover
    // and the queue's first writes can pause for more than a second.
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && !result.acked.every((i) => got.has(i))) {
      let p: P | null;
      try {
        p = await resumed.next(5000) as P | null;
      } catch {
        break;
      }
      if (p === null) break;
      if (p.cmd !== "publish") continue;
      got.add(Number(new TextDecoder().decode(p.payload as Uint8Array)));
      await resumed.sendPacket({ cmd: "puback", messageId: p.messageId });
    }
    const lost = result.acked.filter((i) => !got.has(i)).sort((x, y) => x - y);
    return {
      acked: result.acked.length,
      inWindow,
      refused: result.refused,
      lost,
      missingInRedis,
      liveLost,
      failoverMs,
      resumedMs,
    };
  } finally {
    resumed.close();
  }
}

function report(waitReplicas: number, o: Outcome): void {
  console.log(
    `wait_replicas=${waitReplicas}: ${o.acked} acknowledged (${o.inWindow} while the replicas ` +
      `were cut off), ${o.refused} refused and sent again; acknowledged but lost: ` +
      `${o.liveLost.length} for the online subscriber, ${o.lost.length} for the resumed ` +
      `session, ${o.missingInRedis} missing from Redis's copy of it; failover ` +
      `${Math.round(o.failoverMs)} ms, first acknowledgement after the kill ` +
      `${Math.round(o.resumedMs)} ms`,
  );
}

Deno.test({
  name:
    "sentinel failover under QoS 1 traffic: with wait_replicas = 1 nothing acknowledged is lost",
  ...opts,
  // Under load this lost ~300 acknowledged messages for the offline session: after the failover
  // node b's inbox reader re-read its pending entries in a loop while their store write was
  // outstanding, queueing them again and again until the session queue overflowed and dropped
  // the oldest; a failed store batch was dropped, not retried. Both fixed (redis_inbox.ts,
  // journal.ts).
  async fn() {
    const o = await failover(1, 1000);
    report(1, o);
    assert.deepEqual(o.liveLost, [], "acknowledged, lost for the online subscriber");
    assert.deepEqual(o.lost, [], "acknowledged, lost for the resumed session");
    assert.ok(o.refused > 0, "publishes in the lag window were refused, not acknowledged");
  },
});

Deno.test({
  name: "sentinel failover under QoS 1 traffic: without wait_replicas the brokers follow it too",
  ...opts,
  async fn() {
    // An outage longer than the nodes' lease (2.5 s): they must not declare each other dead.
    const o = await failover(0, 3000);
    report(0, o);
    assert.ok(o.inWindow > 0, "the primary acknowledged publishes its replicas never got");
  },
});
