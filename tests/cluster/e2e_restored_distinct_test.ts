/**
 * Sessions restored from Redis share one Message per cluster message id (stored.ts), but two
 * stored messages that carry the same id and differ are not made one: each session gets the
 * payload its own queue entry holds. A store written by something else (or damaged) may hold
 * such entries; sharing them would deliver one session's message to another. Crafted with the
 * Redis store itself on a real redis-server, restored by a broker process.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { RawClient } from "../helpers/broker.ts";
import { startBrokerProcess } from "../helpers/broker_process.ts";
import { RedisServer, skipWithoutRedis } from "../helpers/redis.ts";
import { redisClient } from "../store/redis_fixture.ts";
import { RedisStore } from "../../src/store/redis.ts";
import type { SessionState } from "../../src/store/types.ts";

const ignore = skipWithoutRedis();

function session(clientId: string, payload: string): SessionState {
  return {
    clientId,
    owner: null,
    expiryInterval: 3600,
    expiresAt: Date.now() + 3_600_000,
    will: null,
    willAt: 0,
    subscriptions: [],
    queue: [{
      seq: 1,
      qos: 1,
      retain: false,
      subIds: null,
      // The same id, topic, QoS, flags and length; another payload.
      msg: {
        topic: "t",
        payload: new TextEncoder().encode(payload),
        qos: 1,
        retain: false,
        props: null,
        expiresAt: 0,
        origin: "pub",
        id: "AAAAAAAAsame1",
      },
    }],
    inflight: [],
    incomingQos2: [],
  };
}

Deno.test({
  name: "cluster: restored messages with the same id but another payload are not made one",
  ignore,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using redis = await RedisServer.start();
    {
      await using client = await redisClient(redis);
      const store = new RedisStore(client, { keyPrefix: "mcloudtt", nodeId: "gone" });
      await store.open();
      await store.write([
        { type: "session", state: session("x1", "first") },
        { type: "session", state: session("x2", "other") },
      ]);
      await store.close();
    }
    await using b = await startBrokerProcess({
      general: { websocket: false },
      redis: { enabled: true, url: redis.url },
      cluster: { node_id: "b" },
    });
    const persistent = { clean: false, properties: { sessionExpiryInterval: 3600 } };
    // x1 holds its message (in flight, not acknowledged) while x2's session is restored.
    await using x1 = await RawClient.connect(b.ports.tcp, 5);
    await x1.handshake("x1", 5, persistent);
    const p1 = await x1.expect("publish") as { payload: Uint8Array };
    assert.equal(Buffer.from(p1.payload).toString(), "first");
    await using x2 = await RawClient.connect(b.ports.tcp, 5);
    await x2.handshake("x2", 5, persistent);
    const p2 = await x2.expect("publish") as { payload: Uint8Array };
    assert.equal(Buffer.from(p2.payload).toString(), "other");
  },
});
