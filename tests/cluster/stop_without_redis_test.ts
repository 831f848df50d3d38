/**
 * A cluster node whose Redis is gone still stops on SIGTERM, within
 * general.shutdown_timeout, even with store writes that can never complete.
 */
import assert from "node:assert/strict";
import { connectClient, freePort } from "../helpers/broker.ts";
import { copyProject, startMain } from "../helpers/main_process.ts";
import { withTempDir } from "../helpers/fs.ts";
import { RedisServer, skipWithoutRedis } from "../helpers/redis.ts";

Deno.test({
  name: "SIGTERM stops a node within shutdown_timeout while its Redis is down",
  ignore: skipWithoutRedis(),
}, async () => {
  await withTempDir(async (dir) => {
    await copyProject(dir);
    await using redis = await RedisServer.start();
    const port = freePort();
    const node = startMain(dir, [
      "--general.secure=false",
      "--general.websocket=false",
      "--general.bind=127.0.0.1",
      `--ports.tcp=${port}`,
      "--storage.enabled=false",
      "--redis.enabled=true",
      `--redis.url=${redis.url}`,
      "--general.shutdown_timeout=2",
    ]);
    await node.waitFor(/listening for MQTT over tcp/, 30_000);
    const sub = await connectClient(port, {
      clientId: "keeper",
      clean: false,
      properties: { sessionExpiryInterval: 600 },
    });
    await sub.subscribeAsync("k/#", { qos: 1 });
    sub.end(true);
    const pub = await connectClient(port, { clientId: "pub" });
    await redis.kill();
    // A QoS 1 publish to the offline persistent session: its store write waits for Redis.
    pub.publish("k/1", "stuck", { qos: 1 });
    await new Promise((r) => setTimeout(r, 300));
    pub.end(true);
    const t0 = Date.now();
    const status = await node.stop();
    const took = Date.now() - t0;
    assert.ok(took < 8000, `stop took ${took} ms`);
    assert.equal(status.code, 0, node.output());
  });
});
