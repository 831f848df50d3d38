/**
 * A message published on the node that holds its subscribers' sessions never crosses the cluster
 * bus. It is still one copy on that node, and must be one copy on the node that adopts the
 * sessions after a kill -9: the journal gives it an id when Redis first keeps it, and the adopted
 * queue entries become one Message again by that id. Before, only messages that crossed the bus
 * had an id: 500 sessions sharing one 64 KiB message came back as 500 copies (+32.8 MiB of heap,
 * 33,056,500 bytes in mcloudtt_queued_bytes against 98,049 on the node that queued it), the
 * survivor was over limits.max_queued_bytes_total (8 MiB), and a QoS 1 message published there
 * next was acknowledged to its publisher and dropped for every adopted session
 * (queue_total_full). Broker processes on a real redis-server; the subscribers are offline
 * persistent sessions, and each comes back and must get both messages.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { connectClient, RawClient } from "../helpers/broker.ts";
import { type BrokerProcess, mib, startBrokerProcess } from "../helpers/broker_process.ts";
import { eventually, FAST_LEASES } from "../helpers/cluster.ts";
import { RedisServer, skipWithoutRedis } from "../helpers/redis.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };
const persistent = { clean: false, properties: { sessionExpiryInterval: 3600 } };
const MIB = 1024 * 1024;
const SESSIONS = 500;
const SIZE = 64 * 1024;
/** Room for one copy of the message (and a second message), not for one per session (31 MiB). */
const TOTAL = 8 * MIB;
/** Sessions created at once. */
const PARALLEL = 25;

function node(redis: RedisServer, name: string): Promise<BrokerProcess> {
  return startBrokerProcess({
    general: { websocket: false },
    redis: { enabled: true, url: redis.url },
    cluster: {
      node_id: name,
      lease_renew_ms: FAST_LEASES.renewMs,
      lease_ttl_ms: FAST_LEASES.ttlMs,
    },
    limits: { max_queued_bytes_total: TOTAL },
  });
}

/** Offline persistent sessions `s-0`... on `b`, subscribed to "t" at QoS 1. */
async function offlineSessions(b: BrokerProcess): Promise<void> {
  for (let first = 0; first < SESSIONS; first += PARALLEL) {
    await Promise.all(
      Array.from({ length: Math.min(PARALLEL, SESSIONS - first) }, async (_, k) => {
        await using s = await RawClient.connect(b.ports.tcp, 5);
        await s.handshake(`s-${first + k}`, 5, persistent);
        await s.sendPacket({
          cmd: "subscribe",
          messageId: 1,
          subscriptions: [{ topic: "t", qos: 1 }],
        });
        await s.expect("suback");
        await s.sendPacket({ cmd: "disconnect" });
      }),
    );
  }
}

/** A QoS 1 message of `size` bytes to "t", starting with `label`, published with MQTT.js. */
async function publish(b: BrokerProcess, label: string, size: number): Promise<void> {
  await using pub = await connectClient(b.ports.tcp, { clientId: `pub-${label}` });
  const payload = Buffer.alloc(size, 0x2e);
  payload.write(label);
  // Resolves on PUBACK.
  await pub.publishAsync("t", payload, { qos: 1 });
}

/** The label a payload starts with. */
function label(payload: Uint8Array): string {
  return new TextDecoder().decode(payload.subarray(0, 2));
}

Deno.test({
  name: "cluster: a message that never crossed the bus is one copy on the node that adopts its " +
    "sessions, and the next message still fits under max_queued_bytes_total",
  ...opts,
  async fn() {
    await using redis = await RedisServer.start();
    await using a = await node(redis, "a");
    await using b = await node(redis, "b");
    await offlineSessions(a);
    // Published on a, where every subscriber is: nothing goes to b.
    await publish(a, "m1", SIZE);
    await eventually("queued on a", async () => {
      await a.memory();
      return a.metrics.queuedMessages === SESSIONS;
    }, 20_000);
    const live = a.metrics.queuedBytes;
    const before = await b.memory();

    Deno.kill(a.pid, "SIGKILL");
    await eventually("adopted by b", async () => {
      await b.memory();
      return b.metrics.queuedMessages === SESSIONS;
    }, 30_000);
    const after = await b.memory();
    const grew = after.heapUsed + after.external - before.heapUsed - before.external;
    console.log(
      `adopted ${SESSIONS} sessions sharing one ${SIZE} B message: queued bytes ` +
        `${b.metrics.queuedBytes} (the live node: ${live}); heap + external +${mib(grew)}, ` +
        `RSS +${mib(after.rss - before.rss)}`,
    );
    // Counted as the node they came from counted it; before: 33,056,500 bytes.
    assert.equal(b.metrics.queuedBytes, live);
    // One copy is 64 KiB and 500 adopted sessions cost about 1.4 MiB; a copy each was +32.8 MiB.
    assert.ok(grew < 8 * MIB, `adoption grew the heap by ${mib(grew)}`);

    // Acknowledged to its publisher: it must reach every session it was queued for.
    await publish(b, "m2", 1024);
    await b.memory();
    assert.equal(b.metrics.droppedQueueTotal, 0, "messages dropped at max_queued_bytes_total");
    assert.equal(b.metrics.queuedMessages, 2 * SESSIONS);

    const missing: string[] = [];
    for (let i = 0; i < SESSIONS; i++) {
      await using s = await RawClient.connect(b.ports.tcp, 5);
      await s.handshake(`s-${i}`, 5, persistent);
      const got: string[] = [];
      while (got.length < 2) {
        const p = await s.next(3000).catch(() => null);
        if (p === null || p.cmd !== "publish") break;
        got.push(label(p.payload as Uint8Array));
        await s.sendPacket({ cmd: "puback", messageId: p.messageId });
      }
      if (got.join() !== "m1,m2") missing.push(`s-${i}: ${got.join() || "nothing"}`);
    }
    assert.deepEqual(missing.slice(0, 5), [], `${missing.length} sessions`);
    await b.memory();
    assert.equal(b.metrics.queuedBytes, 0);
  },
});
