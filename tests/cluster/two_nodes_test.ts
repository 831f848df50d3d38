/**
 * Two broker nodes in one process sharing a real redis-server, seen by
 * clients: a publish on one node reaches a subscriber on the other, a
 * retained message reaches a later subscriber on the other node, a persistent
 * session resumes on the other node with its queued message, and connecting
 * with the same client id on the first node takes the session over (0x8E).
 */
import assert from "node:assert/strict";
import { connectClient, delay, RawClient, startBroker, subscriber } from "../helpers/broker.ts";
import { RedisServer, skipWithoutRedis } from "../helpers/redis.ts";

Deno.test({
  name: "two nodes behave as one broker: routing, retained, session resume, takeover",
  ignore: skipWithoutRedis(),
}, async () => {
  await using redis = await RedisServer.start();
  const cfg = {
    redis: { enabled: true, url: redis.url },
    cluster: { lease_renew_ms: 200, lease_ttl_ms: 1000 },
  };
  await using a = await startBroker(cfg);
  await using b = await startBroker(cfg);
  await using sub = await subscriber(b.port, "x/#", 1, { clientId: "s1" });
  await using pub = await connectClient(a.port, { clientId: "p1" });
  await pub.publishAsync("x/1", "hello", { qos: 1 });
  assert.equal((await sub.inbox.next()).payload, "hello");
  // retained on a late subscriber of the other node
  await pub.publishAsync("r/1", "kept", { qos: 1, retain: true });
  await delay(100);
  await using late = await subscriber(b.port, "r/#", 1, { clientId: "late" });
  assert.equal((await late.inbox.next()).payload, "kept");
  // session on a, resume on b with queued msg
  const p = await connectClient(a.port, {
    clientId: "pers",
    clean: false,
    properties: { sessionExpiryInterval: 300 },
  });
  await p.subscribeAsync("q/#", { qos: 1 });
  await p.endAsync();
  await delay(100);
  await pub.publishAsync("q/1", "queued", { qos: 1 });
  const r = await RawClient.connect(b.port, 5);
  const ack = await r.handshake("pers", 5, {
    clean: false,
    properties: { sessionExpiryInterval: 300 },
  });
  assert.equal(ack.sessionPresent, true);
  const m = await r.expect("publish");
  assert.equal(new TextDecoder().decode(m.payload as Uint8Array), "queued");
  await r.sendPacket({ cmd: "puback", messageId: m.messageId });
  // takeover from a
  const t = await RawClient.connect(a.port, 5);
  await t.handshake("pers", 5, { clean: false, properties: { sessionExpiryInterval: 300 } });
  const d = await r.expect("disconnect");
  assert.equal(d.reasonCode, 0x8e);
  await t.sendPacket({ cmd: "disconnect" });
  await r.expectClosed();
});
