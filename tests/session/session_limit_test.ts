/**
 * `limits.max_sessions` bounds the sessions held at once, connected or offline: fresh client ids
 * in a loop, each leaving a persistent session with queued messages, are refused past it (CONNACK
 * 0x97 in MQTT 5, 3 in 3.1.1) while existing sessions are still resumed and replaced, and the
 * broker's memory stays bounded (read from its own process).
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { ManualClock } from "../../mod.ts";
import { delay, RawClient, startBroker } from "../helpers/broker.ts";
import { mib, startBrokerProcess } from "../helpers/broker_process.ts";

const MIB = 1024 * 1024;

/** CONNECT for a persistent session; returns the CONNACK's code and Session Present. */
async function connectPersistent(
  c: RawClient,
  clientId: string,
  v: 4 | 5,
  clean = false,
): Promise<{ code: number; present: boolean }> {
  await c.sendPacket({
    cmd: "connect",
    protocolId: "MQTT",
    protocolVersion: v,
    clientId,
    clean,
    keepalive: 0,
    ...(v === 5 ? { properties: { sessionExpiryInterval: 10 } } : {}),
  }, v);
  const ack = await c.expect("connack");
  return {
    code: (ack.reasonCode ?? ack.returnCode) as number,
    present: ack.sessionPresent as boolean,
  };
}

Deno.test("max_sessions refuses a new client id with 0x97 (MQTT 5) and 3 (3.1.1); existing sessions resume", async () => {
  const clock = new ManualClock();
  await using b = await startBroker({ limits: { max_sessions: 3, sweep_interval_ms: 100 } }, {
    clock,
  });
  for (const id of ["a", "b", "c"]) {
    await using c = await RawClient.connect(b.port, 5);
    assert.deepEqual(await connectPersistent(c, id, 5), { code: 0, present: false });
  }
  // Three offline sessions: a fourth client id is refused, in both protocol versions.
  {
    await using d = await RawClient.connect(b.port, 5);
    assert.equal((await connectPersistent(d, "d", 5)).code, 0x97);
    await d.expectClosed();
    await using e = await RawClient.connect(b.port, 4);
    assert.equal((await connectPersistent(e, "e", 4)).code, 3);
    await e.expectClosed();
  }
  // An existing session is resumed, and replaced by Clean Start, at the limit.
  {
    await using a = await RawClient.connect(b.port, 5);
    assert.deepEqual(await connectPersistent(a, "a", 5), { code: 0, present: true });
    await using b2 = await RawClient.connect(b.port, 4);
    assert.deepEqual(await connectPersistent(b2, "b", 4, true), { code: 0, present: false });
  }
  // Once "c" expires (10 s), a new client id takes its place.
  clock.advance(11_000);
  await delay(50);
  await using d = await RawClient.connect(b.port, 5);
  assert.deepEqual(await connectPersistent(d, "d", 5), { code: 0, present: false });
});

Deno.test("fresh client ids leaving offline sessions with queued messages stop at max_sessions, and memory stays bounded", async () => {
  await using broker = await startBrokerProcess({
    general: { websocket: false },
    limits: { max_sessions: 50 },
  });
  const port = broker.ports.tcp;
  await using pub = await RawClient.connect(port, 5);
  await pub.handshake("publisher");
  const before = await broker.memory();
  // 600 client ids, each subscribing to its own topic with the longest Session Expiry.
  const ids = 600;
  const codes = new Map<number, number>();
  for (let i = 0; i < ids; i++) {
    await using c = await RawClient.connect(port, 5);
    await c.sendPacket({
      cmd: "connect",
      protocolId: "MQTT",
      protocolVersion: 5,
      clientId: `fresh-${i}`,
      clean: true,
      keepalive: 0,
      properties: { sessionExpiryInterval: 0xffffffff },
    });
    const code = (await c.expect("connack")).reasonCode as number;
    codes.set(code, (codes.get(code) ?? 0) + 1);
    if (code !== 0) continue;
    await c.sendPacket({
      cmd: "subscribe",
      messageId: 1,
      subscriptions: [{ topic: `fresh/${i}`, qos: 1 }],
    });
    await c.expect("suback");
  }
  // The publisher holds one of the 50 sessions.
  assert.deepEqual([...codes].sort(), [[0, 49], [0x97, ids - 49]]);
  // 8 distinct 40 KB QoS 1 messages for each (188 MiB if every session queued them).
  for (let i = 0; i < ids; i++) {
    for (let k = 0; k < 8; k++) {
      await pub.sendPacket({
        cmd: "publish",
        topic: `fresh/${i}`,
        qos: 1,
        messageId: k + 1,
        payload: Buffer.alloc(40_000, i + k),
      });
    }
    for (let k = 0; k < 8; k++) await pub.expect("puback");
  }
  const after = await broker.memory();
  const heap = after.heapUsed - before.heapUsed;
  const grew = after.rss - before.rss;
  // Before the limit: 600 sessions, RSS +201 MiB (2000 sessions with 20 x 10 KB: +430 MiB).
  assert.ok(
    after.external - before.external < 32 * MIB,
    `external grew by ${mib(after.external - before.external)}`,
  );
  assert.ok(heap < 16 * MIB, `heap grew by ${mib(heap)}`);
  assert.ok(grew < 96 * MIB, `RSS grew by ${mib(grew)} with ${ids} client ids`);
});
