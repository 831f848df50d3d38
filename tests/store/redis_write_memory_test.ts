/**
 * The Redis store keeps a copy of each queued message per session (its keys share the session's
 * hash slot), so a message for many offline sessions is encoded once per session. A write now
 * encodes and sends `[redis] write_chunk_bytes` of them at a time: before, the whole batch was
 * encoded at once, and the broker's memory grew with sessions x payload (20 messages of 512 KiB
 * for 200 offline sessions: RSS from 100 to 628 MiB).
 */
import assert from "node:assert/strict";
import { connectClient, endClient } from "../helpers/broker.ts";
import { TestCluster } from "../helpers/cluster.ts";
import { mib, peakRssOf, resetPeakRss, rssOf } from "../helpers/broker_process.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";

const SESSIONS = 300;
const MESSAGES = 3;
const PAYLOAD = 512 * 1024;

/** Peak RSS growth of a node while MESSAGES payloads are queued for SESSIONS offline sessions. */
async function peakGrowth(chunkBytes: number): Promise<{ growth: number; stored: number }> {
  await using cluster = await TestCluster.start({
    names: ["a"],
    args: [`--redis.write_chunk_bytes=${chunkBytes}`],
  });
  const [a] = cluster.nodes;
  const pid = a.proc.child.pid;
  const persistent = { clean: false, properties: { sessionExpiryInterval: 3600 } };
  for (let i = 0; i < SESSIONS; i++) {
    const c = await connectClient(a.port, { clientId: `s${i}`, ...persistent });
    await c.subscribeAsync("big/#", { qos: 1 });
    await endClient(c);
  }
  const pub = await connectClient(a.port, { clientId: "pub" });
  const payload = new Uint8Array(PAYLOAD).fill(7);
  // Warm: the first publish grows the heap the same way in both runs.
  await pub.publishAsync("big/warm", new Uint8Array(16) as unknown as Buffer, { qos: 1 });
  await new Promise((r) => setTimeout(r, 500));
  const before = rssOf(pid);
  if (!resetPeakRss(pid)) throw new Error("cannot reset the peak RSS (/proc/<pid>/clear_refs)");
  for (let i = 0; i < MESSAGES; i++) {
    // Acknowledged once every session's copy is in Redis (ack-after-write).
    await pub.publishAsync(`big/${i}`, payload as unknown as Buffer, { qos: 1 });
  }
  const growth = peakRssOf(pid) - before;
  await endClient(pub);
  const stored = Number(await cluster.redis.command("LLEN", "mcloudtt:{s:s0}:q"));
  return { growth, stored };
}

Deno.test({
  name: "redis store: a message queued for many offline sessions is encoded a chunk at a time; " +
    "memory stays near the chunk, not sessions x payload",
  ignore: skipWithoutRedis(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const whole = await peakGrowth(1 << 30);
    const chunked = await peakGrowth(1 << 20);
    const perMessage = SESSIONS * PAYLOAD;
    console.log(
      `[figures] ${MESSAGES} messages of ${PAYLOAD / 1024} KiB for ${SESSIONS} offline sessions ` +
        `(${mib(perMessage)} of copies each): peak RSS +${mib(whole.growth)} encoding a batch ` +
        `whole, +${mib(chunked.growth)} with write_chunk_bytes = 1 MiB`,
    );
    assert.equal(whole.stored, MESSAGES + 1, "every message queued in Redis (whole)");
    assert.equal(chunked.stored, MESSAGES + 1, "every message queued in Redis (chunked)");
    // One message's copies are 150 MiB: encoded whole, a batch holds them all; a chunk holds
    // about 1 MiB of them, and what stays is the garbage collector's slack (70-84 MiB measured
    // with 50 to 400 sessions, where encoding whole took +123 to +547 MiB).
    assert.ok(
      chunked.growth < perMessage * 0.75,
      `chunked: +${mib(chunked.growth)} (one message's copies: ${mib(perMessage)})`,
    );
    assert.ok(whole.growth > perMessage, `whole: +${mib(whole.growth)}: the test shows nothing`);
  },
});
