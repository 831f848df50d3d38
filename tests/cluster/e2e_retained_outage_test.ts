/**
 * A retained message's copies for other nodes that Redis did not take within
 * `redis.command_timeout_ms` (Redis frozen 12 s): the node that took the message keeps it, and so
 * does the Redis store (its write is retried), but before, the other nodes never got it: a
 * retained QoS 0 publisher is not told, and they served the older retained message (or a deleted
 * one) until they restarted. The retained records are now written again until Redis takes them.
 */
import { connectClient, delay, subscriber } from "../helpers/broker.ts";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";

const opts = { ignore: skipWithoutRedis(), sanitizeOps: false, sanitizeResources: false };

/** The retained messages under `r/#` on the node at `port`, topic to payload. */
async function retainedOn(port: number, n: number): Promise<Map<string, string>> {
  await using s = await subscriber(port, "r/#", 0);
  await delay(300);
  await eventually(`${n} retained messages`, () => s.inbox.messages.length >= n, 5000);
  return new Map(s.inbox.messages.map((m) => [m.topic, m.payload]));
}

Deno.test({
  ...opts,
  name: "redis frozen 12 s: retained messages set and cleared on a meanwhile reach b once " +
    "Redis answers",
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b"] });
    const redis = cluster.redis;
    const [a, b] = cluster.nodes;
    await using pub = await connectClient(a.port, { clientId: "pub" });
    await pub.publishAsync("r/old", "before", { qos: 0, retain: true });
    await pub.publishAsync("r/gone", "before", { qos: 0, retain: true });
    await eventually("b has both", async () => (await retainedOn(b.port, 2)).size === 2, 10_000);
    redis.signal("SIGSTOP");
    try {
      await delay(300);
      await pub.publishAsync("r/old", "during", { qos: 0, retain: true });
      await pub.publishAsync("r/new", "during", { qos: 0, retain: true });
      await pub.publishAsync("r/gone", "", { qos: 0, retain: true });
      // The first write of the copies fails after redis.command_timeout_ms (5 s) without an answer,
      // and is written again for as long: past both, it ran out of time.
      await delay(12_000);
    } finally {
      redis.signal("SIGCONT");
    }
    const want = new Map([["r/old", "during"], ["r/new", "during"]]);
    // A client connects once the node's claims can be written again (until then: CONNACK 0x88).
    const holds = async (port: number) => {
      try {
        const on = await retainedOn(port, 2);
        return on.size === 2 && [...want].every(([t, p]) => on.get(t) === p);
      } catch {
        return false;
      }
    };
    await eventually("a keeps what it took", () => holds(a.port), 20_000);
    await eventually("b has what a took", () => holds(b.port), 20_000);
  },
});
