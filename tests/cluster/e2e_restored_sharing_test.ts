/**
 * A message queued for many sessions is one copy on the node that holds them, also once the
 * sessions came from Redis: adopted from a dead node in one go, or moved to another node one
 * after another while the others still hold it. Redis keeps a copy per queue entry; before,
 * each restored entry became a Message of its own: N payloads in memory, and N times their bytes
 * in `mcloudtt_queued_bytes` (what limits.max_queued_bytes_total is checked against). Each
 * session still gets every message. Broker processes (memory after a full GC) on a real
 * redis-server; the messages are published on the other node, so they cross the cluster bus and
 * carry a cluster id.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { RawClient } from "../helpers/broker.ts";
import { type BrokerProcess, mib, startBrokerProcess } from "../helpers/broker_process.ts";
import { eventually, FAST_LEASES } from "../helpers/cluster.ts";
import { RedisServer, skipWithoutRedis } from "../helpers/redis.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };
const persistent = { clean: false, properties: { sessionExpiryInterval: 3600 } };
const SESSIONS = 20;
const MESSAGES = 8;
const SIZE = 64 * 1024;

function node(redis: RedisServer, name: string): Promise<BrokerProcess> {
  return startBrokerProcess({
    general: { websocket: false },
    redis: { enabled: true, url: redis.url },
    cluster: {
      node_id: name,
      lease_renew_ms: FAST_LEASES.renewMs,
      lease_ttl_ms: FAST_LEASES.ttlMs,
    },
  });
}

/** Offline persistent sessions `s-0`... on `b`, subscribed to "t" at QoS 1. */
async function offlineSessions(b: BrokerProcess): Promise<void> {
  for (let i = 0; i < SESSIONS; i++) {
    await using s = await RawClient.connect(b.ports.tcp, 5);
    await s.handshake(`s-${i}`, 5, persistent);
    await s.sendPacket({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic: "t", qos: 1 }] });
    await s.expect("suback");
    await s.sendPacket({ cmd: "disconnect" });
  }
}

/** MESSAGES QoS 1 messages of SIZE bytes to "t", each starting with its number. */
async function publish(b: BrokerProcess): Promise<void> {
  await using pub = await RawClient.connect(b.ports.tcp, 5);
  await pub.handshake("pub");
  for (let i = 0; i < MESSAGES; i++) {
    const payload = Buffer.alloc(SIZE, 0x2e);
    payload.write(`m${i}.`);
    await pub.sendPacket({ cmd: "publish", topic: "t", qos: 1, messageId: i + 1, payload });
    await pub.expect("puback");
  }
}

/** Polls the process's metrics (after a full GC each time) until `check` holds. */
async function until(b: BrokerProcess, what: string, check: () => boolean): Promise<void> {
  await eventually(what, async () => {
    await b.memory();
    return check();
  }, 20_000);
}

/** The number a payload starts with. */
function number(payload: Uint8Array): string {
  return /^m\d+/.exec(new TextDecoder().decode(payload.subarray(0, 8)))![0];
}

/** The numbers of the next `n` messages `s` receives, each acknowledged. */
async function receive(s: RawClient, n: number): Promise<string[]> {
  const got: string[] = [];
  while (got.length < n) {
    const p = await s.expect("publish") as { messageId: number; payload: Uint8Array };
    got.push(number(p.payload));
    await s.sendPacket({ cmd: "puback", messageId: p.messageId });
  }
  return got;
}

const ALL = Array.from({ length: MESSAGES }, (_, i) => `m${i}`);

Deno.test({
  name: "cluster: sessions adopted from a dead node hold one copy of a message they share",
  ...opts,
  async fn() {
    await using redis = await RedisServer.start();
    await using a = await node(redis, "a");
    await using b = await node(redis, "b");
    await offlineSessions(a);
    await publish(b);
    await until(a, "queued on a", () => a.metrics.queuedMessages === SESSIONS * MESSAGES);
    const live = a.metrics.queuedBytes;
    const before = await b.memory();

    Deno.kill(a.pid, "SIGKILL");
    await until(b, "adopted by b", () => b.metrics.queuedMessages === SESSIONS * MESSAGES);
    const after = await b.memory();
    const grew = after.heapUsed + after.external - before.heapUsed - before.external;
    console.log(
      `adopted ${SESSIONS} sessions x ${MESSAGES} messages of ${SIZE} B: queued bytes ` +
        `${b.metrics.queuedBytes} (the live node: ${live}); heap + external +${mib(grew)}`,
    );
    // Counted as the node they came from counted them; before: 20 times the payloads, 10.6 MB.
    assert.equal(b.metrics.queuedBytes, live);
    // One copy is 0.5 MiB; one per session was 10 MiB.
    assert.ok(grew < 3 * 1024 * 1024, `adoption grew the heap by ${mib(grew)}`);

    for (let i = 0; i < SESSIONS; i++) {
      await using s = await RawClient.connect(b.ports.tcp, 5);
      await s.handshake(`s-${i}`, 5, persistent);
      assert.deepEqual(await receive(s, MESSAGES), ALL, `s-${i}`);
    }
    assert.equal((await b.memory(), b.metrics.queuedBytes), 0);
  },
});

Deno.test({
  name: "cluster: sessions moving to another node one after another share the messages they hold",
  ...opts,
  async fn() {
    await using redis = await RedisServer.start();
    await using a = await node(redis, "a");
    await using b = await node(redis, "b");
    await offlineSessions(a);
    await publish(b);
    await until(a, "queued on a", () => a.metrics.queuedMessages === SESSIONS * MESSAGES);
    const live = a.metrics.queuedBytes;
    // What one message costs in the gauge, beside its queue entries (64 bytes each).
    const perMessage = (live - SESSIONS * MESSAGES * 64) / MESSAGES;
    const before = await b.memory();

    // Each client takes its session to b and holds it there: one message in flight (Receive
    // Maximum 1, not acknowledged), the others queued.
    const clients: RawClient[] = [];
    const first: number[] = [];
    try {
      for (let i = 0; i < SESSIONS; i++) {
        const s = await RawClient.connect(b.ports.tcp, 5);
        clients.push(s);
        await s.handshake(`s-${i}`, 5, {
          ...persistent,
          properties: { ...persistent.properties, receiveMaximum: 1 },
        });
        first.push((await s.expect("publish")).messageId as number);
      }
      await b.memory();
      const after = await b.memory();
      const grew = after.heapUsed + after.external - before.heapUsed - before.external;
      console.log(
        `${SESSIONS} sessions moved one by one, ${MESSAGES - 1} messages queued each: queued ` +
          `bytes ${b.metrics.queuedBytes}; heap + external +${mib(grew)}`,
      );
      assert.equal(b.metrics.queuedMessages, SESSIONS * (MESSAGES - 1));
      // Before: each session that came brought a copy of its own (9.3 MB). The first message,
      // in flight for every session, counts once too, with an entry for each.
      assert.equal(b.metrics.queuedBytes, MESSAGES * perMessage + SESSIONS * MESSAGES * 64);
      assert.ok(grew < 3 * 1024 * 1024, `the moves grew the heap by ${mib(grew)}`);
      for (const [i, s] of clients.entries()) {
        await s.sendPacket({ cmd: "puback", messageId: first[i] });
        assert.deepEqual(await receive(s, MESSAGES - 1), ALL.slice(1));
      }
    } finally {
      for (const s of clients) s.close();
    }
  },
});
