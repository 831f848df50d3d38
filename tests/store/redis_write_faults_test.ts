/**
 * A store write sent in chunks (`[redis] write_chunk_bytes`) that fails part way: the chunks
 * before the failure are in Redis, the journal writes the whole batch again, and every offline
 * session still holds each acknowledged message once.
 */
import assert from "node:assert/strict";
import type { Packet } from "mqtt-packet";
import { connectClient, delay, RawClient } from "../helpers/broker.ts";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";
import { redisQuery } from "../helpers/redis_resp.ts";

const SESSIONS = 40;
const MESSAGES = 24;
const PERSISTENT = { clean: false, properties: { sessionExpiryInterval: 300 } };
const utf8 = new TextDecoder();

Deno.test({
  name: "redis store: writes cut into chunks and refused part way are written again whole; " +
    "each offline session holds every acknowledged message once",
  ignore: skipWithoutRedis(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // 8 KiB for 40 sessions: about 5 chunks of 64 KiB per publish.
    await using cluster = await TestCluster.start({
      names: ["a"],
      args: ["--redis.write_chunk_bytes=65536", "--cluster.lease_ttl_ms=6000"],
    });
    const [a] = cluster.nodes;
    const redis = cluster.redis;
    for (let i = 0; i < SESSIONS; i++) {
      const c = await RawClient.connect(a.port);
      await c.handshake(`s${i}`, 5, PERSISTENT);
      await c.sendPacket({
        cmd: "subscribe",
        messageId: 1,
        subscriptions: [{ topic: "f/#", qos: 1 }],
      });
      await c.expect("suback");
      await c.sendPacket({ cmd: "disconnect" });
      await c.expectClosed();
    }
    const pub = await connectClient(a.port, { clientId: "pub" });
    // The store's scripts are refused 15 ms, then allowed 45 ms, while messages go out:
    // some writes fail after their first chunks went in.
    let toggling = true;
    const toggler = (async () => {
      for (let n = 0; toggling; n++) {
        await redis.command("ACL", "SETUSER", "default", n % 2 === 0 ? "-evalsha" : "+evalsha");
        await delay(n % 2 === 0 ? 15 : 45);
      }
      await redis.command("ACL", "SETUSER", "default", "+@all");
    })();
    const acked: number[] = [];
    const body = new Uint8Array(8192);
    for (let i = 0; i < MESSAGES; i++) {
      const payload = new TextEncoder().encode(`${i}`.padEnd(8, " "));
      body.set(payload);
      await pub.publishAsync("f/x", Buffer.from(body), { qos: 1 }).then(
        () => acked.push(i),
        () => {},
      );
    }
    toggling = false;
    await toggler;
    await pub.endAsync();
    const failed = (a.output().match(/store write of \d+ operations failed/g) ?? []).length;

    const queueOf = async (id: string) =>
      (await redisQuery(redis.port, "LRANGE", `mcloudtt:{s:${id}}:q`, "0", "-1")) as string[];
    await eventually("every acknowledged message stored", async () => {
      for (let i = 0; i < SESSIONS; i++) {
        if ((await queueOf(`s${i}`)).length < acked.length) return false;
      }
      return true;
    }, 15_000);
    const lengths = await Promise.all(Array.from({ length: SESSIONS }, (_, i) => queueOf(`s${i}`)));
    console.log(
      `[figures] ${acked.length} of ${MESSAGES} acknowledged, ${failed} store writes failed ` +
        `(retried); queue lengths in Redis ${Math.min(...lengths.map((q) => q.length))}-` +
        `${Math.max(...lengths.map((q) => q.length))}`,
    );
    assert.ok(failed > 0, "no write failed: the test shows nothing");
    for (const q of lengths) assert.equal(q.length, acked.length, "each message once per session");

    // What a client gets back: every acknowledged number once, in order.
    for (const id of ["s0", `s${SESSIONS - 1}`]) {
      const c = await RawClient.connect(a.port);
      const ack = await c.handshake(id, 5, PERSISTENT);
      assert.equal(ack.sessionPresent, true);
      const got: number[] = [];
      while (got.length < acked.length) {
        const p = await c.next(5000) as Packet & Record<string, unknown>;
        if (p.cmd !== "publish") continue;
        got.push(Number(utf8.decode((p.payload as Uint8Array).subarray(0, 8)).trim()));
        await c.sendPacket({ cmd: "puback", messageId: p.messageId as number });
      }
      c.close();
      assert.deepEqual(got, acked, `${id} got each acknowledged message once, in order`);
    }
  },
});
