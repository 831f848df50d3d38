/**
 * The Redis store under real brokers: two brokers share one redis-server
 * (no cluster bus), MQTT.js clients move between them. What a user sees: a
 * persistent session and its queued messages follow the client to another
 * broker, and a broker started later serves the retained messages.
 */
import assert from "node:assert/strict";
import { RedisServer, skipWithoutRedis } from "../helpers/redis.ts";
import mqtt, { type IClientOptions } from "mqtt";
import { collect, connectClient, endClient, startBroker, subscriber } from "../helpers/broker.ts";
import { createRedisStore } from "../../src/store/redis.ts";
import { redisClient } from "./redis_fixture.ts";

const ignore = skipWithoutRedis();

async function brokerOn(server: RedisServer, nodeId: string) {
  const client = await redisClient(server);
  const store = createRedisStore({ redis: { key_prefix: "e2e" } }, client, {
    nodeId,
    ownsClient: true,
  });
  return await startBroker({}, { store });
}

/** Connects with a collector attached first: queued messages can arrive with the CONNACK. */
function connectCollecting(port: number, opts: IClientOptions) {
  const client = mqtt.connect({
    host: "127.0.0.1",
    port,
    protocolVersion: 5,
    reconnectPeriod: 0,
    ...opts,
  });
  const got = collect(client);
  return new Promise<{ client: mqtt.MqttClient; got: typeof got; present: boolean }>(
    (resolve, reject) => {
      client.once("error", reject);
      client.once("connect", (ack) => resolve({ client, got, present: ack.sessionPresent }));
    },
  );
}

Deno.test({
  name: "redis store: a persistent session and its queued messages resume on another broker",
  ignore,
  fn: async () => {
    await using server = await RedisServer.start();
    await using a = await brokerOn(server, "A");
    await using b = await brokerOn(server, "B");
    const persistent = { clean: false, properties: { sessionExpiryInterval: 300 } };
    {
      await using sub = await connectClient(a.port, { clientId: "roamer", ...persistent });
      await sub.subscribeAsync("roam/#", { qos: 1 });
    }
    {
      await using pub = await connectClient(a.port, { clientId: "pub" });
      await pub.publishAsync("roam/1", "while away", { qos: 1 });
    }
    // The client comes back through the other broker.
    const back = await connectCollecting(b.port, { clientId: "roamer", ...persistent });
    try {
      assert.equal(back.present, true);
      const m = await back.got.next();
      assert.deepStrictEqual([m.topic, m.payload, m.packet.qos], ["roam/1", "while away", 1]);
      // And its subscription came along: a publish on B reaches it.
      await using pub = await connectClient(b.port, { clientId: "pub2" });
      await pub.publishAsync("roam/2", "here", { qos: 1 });
      assert.equal((await back.got.next()).topic, "roam/2");
    } finally {
      await endClient(back.client);
    }
  },
});

Deno.test({
  name: "redis store: a broker started later serves the retained messages published on another",
  ignore,
  fn: async () => {
    await using server = await RedisServer.start();
    await using a = await brokerOn(server, "A");
    {
      await using pub = await connectClient(a.port, { clientId: "pub" });
      await pub.publishAsync("news/today", "retained on A", { qos: 1, retain: true });
      await pub.publishAsync("news/gone", "short", {
        qos: 1,
        retain: true,
        properties: { messageExpiryInterval: 1 },
      });
    }
    await new Promise((r) => setTimeout(r, 1200));
    await using c = await brokerOn(server, "C");
    await using sub = await subscriber(c.port, "news/#", 1, { clientId: "reader" });
    const m = await sub.inbox.next();
    assert.deepStrictEqual([m.topic, m.payload, m.packet.retain], [
      "news/today",
      "retained on A",
      true,
    ]);
    await sub.inbox.none(200); // the expired one is gone everywhere
  },
});
