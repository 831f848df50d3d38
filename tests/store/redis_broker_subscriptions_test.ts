/**
 * Subscription changes of a session in the Redis store, under real brokers sharing one
 * redis-server: SUBSCRIBE and UNSUBSCRIBE write one change each (not the whole session), the
 * session follows its client to another broker with all of them, and a change to a session
 * Redis lost (restarted without its data) makes its broker write the session whole again.
 */
import assert from "node:assert/strict";
import { RedisServer, skipWithoutRedis } from "../helpers/redis.ts";
import { collect, connectClient, endClient, startBroker } from "../helpers/broker.ts";
import { createRedisStore } from "../../src/store/redis.ts";
import { decodeSubscription } from "../../src/store/redis_codec.ts";
import { redisClient } from "./redis_fixture.ts";

const ignore = skipWithoutRedis();
const FILTERS = 60;
const persistent = { clean: false, properties: { sessionExpiryInterval: 300 } };

async function brokerOn(server: RedisServer, nodeId: string) {
  const client = await redisClient(server);
  const store = createRedisStore({ redis: { key_prefix: "e2e" } }, client, {
    nodeId,
    ownsClient: true,
  });
  return await startBroker({}, { store });
}

Deno.test({
  name: "redis store: subscriptions made one at a time follow the session to another broker; " +
    "one made after Redis lost the session is written with the whole session",
  ignore,
  fn: async () => {
    await using server = await RedisServer.start();
    await using redis = await redisClient(server);
    await using a = await brokerOn(server, "A");
    await using b = await brokerOn(server, "B");
    const subsKey = "e2e:{s:roamer}:subs";
    const stored = async () =>
      (await redis.lrange(subsKey, 0, -1)).map((e) => decodeSubscription(e).key);
    {
      await using c = await connectClient(a.port, { clientId: "roamer", ...persistent });
      for (let i = 0; i < FILTERS; i++) await c.subscribeAsync(`f/${i}`, { qos: 1 });
      await c.unsubscribeAsync("f/0");
    }
    // The list every version reads, in the order of the SUBSCRIBEs.
    const want = Array.from({ length: FILTERS - 1 }, (_, i) => `f/${i + 1}`);
    assert.deepEqual(await stored(), want);

    let inbox!: ReturnType<typeof collect>;
    const c = await connectClient(
      b.port,
      { clientId: "roamer", ...persistent },
      (client) => inbox = collect(client),
    );
    try {
      {
        await using pub = await connectClient(b.port, { clientId: "pub" });
        for (let i = 0; i < FILTERS; i++) await pub.publishAsync(`f/${i}`, `${i}`, { qos: 1 });
      }
      const got: string[] = [];
      for (let i = 1; i < FILTERS; i++) got.push((await inbox.next()).topic);
      assert.deepEqual(got, want);
      await inbox.none(200); // f/0 was unsubscribed

      // Redis restarted without its data: the next SUBSCRIBE's op is refused for the session it
      // no longer holds, and the broker writes the session whole (SUBACK waits for it).
      await redis.flushall();
      await c.subscribeAsync("after/wipe", { qos: 1 });
      assert.deepEqual(await stored(), [...want, "after/wipe"]);
      assert.equal(await redis.hget("e2e:{s:roamer}:meta", "cid"), "roamer");
    } finally {
      await endClient(c);
    }
  },
});
