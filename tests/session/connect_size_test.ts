/**
 * `limits.max_connect_packet_size` bounds what a socket that has not sent its CONNECT may hold:
 * a first packet announced over it closes the connection from its header, so sockets that never
 * authenticate cannot each buffer up to max_packet_size. Packets after CONNECT keep the full
 * max_packet_size. Memory is read from the broker's own process.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { RawClient, startBroker } from "../helpers/broker.ts";
import { mib, startBrokerProcess } from "../helpers/broker_process.ts";
import { bystanders } from "../helpers/wire.ts";

const MIB = 1024 * 1024;

/** A v5 CONNECT whose will carries `willBytes` of payload. */
function connectWithWill(clientId: string, willBytes: number): Record<string, unknown> {
  return {
    cmd: "connect",
    protocolId: "MQTT",
    protocolVersion: 5,
    clientId,
    clean: true,
    keepalive: 0,
    will: { topic: "will/t", payload: Buffer.alloc(willBytes, 1), qos: 0, retain: false },
  };
}

Deno.test("a CONNECT over max_connect_packet_size is closed; later packets keep max_packet_size", async () => {
  await using b = await startBroker({ limits: { max_connect_packet_size: 65536 } });
  // The largest will payload MQTT allows (65535 bytes) takes the CONNECT over 64 KiB: closed
  // from its header, without a CONNACK.
  {
    await using c = await RawClient.connect(b.port, 5);
    await c.sendPacket(connectWithWill("big-will", 65535)).catch(() => {});
    assert.equal(await c.next(), null);
  }
  // A CONNECT within it is accepted, and a 500 KB PUBLISH pipelined behind it still goes through.
  {
    await using c = await RawClient.connect(b.port, 5);
    await c.sendPacket(connectWithWill("small-will", 60_000));
    await c.sendPacket({
      cmd: "publish",
      topic: "big",
      qos: 1,
      messageId: 1,
      payload: Buffer.alloc(500_000),
    });
    assert.equal((await c.expect("connack")).reasonCode, 0);
    assert.equal((await c.expect("puback")).reasonCode, 0x10); // no matching subscribers
  }
  // The default (128 KiB) takes the largest will.
  await using b2 = await startBroker();
  await using c2 = await RawClient.connect(b2.port, 5);
  await c2.sendPacket(connectWithWill("big-will", 65535));
  assert.equal((await c2.expect("connack")).reasonCode, 0);
});

Deno.test("sockets trickling a CONNECT announced at max_packet_size hold bounded memory", async () => {
  await using broker = await startBrokerProcess({ general: { websocket: false } });
  const port = broker.ports.tcp;
  await using others = await bystanders(port);
  const before = await broker.memory();
  // 300 sockets announce a CONNECT of 1 MiB (the default max_packet_size) and send 600 KB of it.
  const header = new Uint8Array([0x10, 0xfb, 0xff, 0x3f]);
  const body = new Uint8Array(600_000).fill(0x41);
  const conns: Deno.TcpConn[] = [];
  try {
    for (let i = 0; i < 300; i++) {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      conns.push(c);
      try {
        await c.write(header);
        for (let off = 0; off < body.length;) off += await c.write(body.subarray(off));
      } catch {
        // Closed by the broker: what the limit does.
      }
    }
    const after = await broker.memory();
    const grew = after.rss - before.rss;
    // Before the limit: RSS +175 MiB for these 300 sockets (500 of them: +294 MiB).
    assert.ok(grew < 48 * MIB, `RSS grew by ${mib(grew)} for 300 sockets trickling a CONNECT`);
    assert.ok(
      after.external - before.external < 16 * MIB,
      `external memory grew by ${mib(after.external - before.external)}`,
    );
    await others.assertServing();
  } finally {
    for (const c of conns) {
      try {
        c.close();
      } catch {
        // already closed
      }
    }
  }
});
