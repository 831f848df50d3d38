/**
 * What a WebSocket peer can make the broker hold with frames cut small, before its CONNECT (when
 * it is nobody) and after: a frame's payload sent a byte per read, and a message sent a byte per
 * fragment. ws keeps each read of an unfinished frame, and each fragment of an unfinished
 * message, as an object of its own (~150-300 bytes); the broker's memory is read from its own
 * process, on plain and secure WebSocket.
 */
import assert from "node:assert/strict";
import mqttPacket from "mqtt-packet";
import type { Config, DeepPartial } from "../../mod.ts";
import { makeTestPki } from "../helpers/certs.ts";
import { type BrokerProcess, mib, startBrokerProcess } from "../helpers/broker_process.ts";
import { frameHeader, RawWsClient, type RawWsOptions, writeAll } from "../helpers/ws_raw.ts";
import { concatBytes } from "../helpers/wire.ts";
import { collect, connectClient, type Packet } from "../helpers/broker.ts";

const MIB = 1024 * 1024;

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-ws-frames-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const caCert = Deno.readTextFileSync(pki.ca.cert);

interface Variant {
  name: "ws" | "wss";
  start(extra?: DeepPartial<Config>): Promise<BrokerProcess>;
  opts: RawWsOptions;
}

const VARIANTS: Variant[] = [
  {
    name: "ws",
    start: (extra = {}) =>
      startBrokerProcess({
        ...extra,
        general: { websocket: true },
      }),
    opts: {},
  },
  {
    name: "wss",
    start: (extra = {}) =>
      startBrokerProcess({
        ...extra,
        general: { secure: true, websocket: true },
        tls: { certfile: pki.broker.cert, keyfile: pki.broker.key, cafile: pki.ca.cert },
        listeners: { tcp: { enabled: false }, ws: { client_certificate: "none" } },
        auth: { allow_anonymous: true },
      }),
    opts: { caCert },
  },
];

/** Heap and buffers outside it, after a full GC: what the broker holds, not its garbage. */
async function held(broker: BrokerProcess): Promise<number> {
  const m = await broker.memory();
  return m.heapUsed + m.external;
}

/** A masked frame (zero mask) with FIN unset, of `opcode` (0 continues a message). */
function fragment(opcode: number, payload: Uint8Array, fin = false): Uint8Array {
  const h = frameHeader(payload.length, opcode, fin);
  return concatBytes([h, payload]);
}

/** `count` one-byte continuation fragments (without FIN), back to back: 7 bytes each. */
function oneByteFragments(count: number): Uint8Array {
  const one = fragment(0, new Uint8Array([0x61]));
  const out = new Uint8Array(one.length * count);
  for (let i = 0; i < count; i++) out.set(one, i * one.length);
  return out;
}

/** The next close frame or end of the stream, skipping MQTT packets. */
async function closing(ws: RawWsClient, timeoutMs = 5000) {
  let e = await ws.next(timeoutMs);
  while (e.kind === "packet") e = await ws.next(timeoutMs);
  return e;
}

for (const v of VARIANTS) {
  Deno.test(`${v.name}: a frame trickled a byte per read before CONNECT costs its bytes, not an object per read`, async () => {
    await using broker = await v.start();
    const port = broker.ports[v.name];
    const socks: RawWsClient[] = [];
    try {
      for (let i = 0; i < 80; i++) socks.push(await RawWsClient.open(port, v.opts));
      const before = await held(broker);
      // Each announces a 100 KB first frame (under what may come before CONNECT) and sends
      // 3,000 bytes of it one at a time, each its own TCP segment (over wss its own TLS record),
      // paced so that the broker reads them one by one.
      const BYTES = 3000;
      await Promise.all(socks.map(async (ws) => {
        const tcp = ws.conn as Partial<Deno.TcpConn>;
        if (typeof tcp.setNoDelay === "function") tcp.setNoDelay(true);
        await writeAll(ws.conn, concatBytes([frameHeader(100_000), new Uint8Array([0x10])]));
        const one = new Uint8Array([0x7f]);
        for (let b = 1; b < BYTES; b++) {
          await writeAll(ws.conn, one);
          if (b % 8 === 0) await new Promise((r) => setTimeout(r, 1));
        }
      }));
      // Give the broker the time to read what is still in the kernel.
      await new Promise((r) => setTimeout(r, 500));
      const grew = (await held(broker)) - before;
      // Before: ws kept each read, ~100-190 bytes for one byte: 80 x 5,000 bytes held +45 MiB
      // (ws) and +31 MiB (wss), so these 80 x 3,000 about +27 and +19 MiB; 100 sockets of 13 KB
      // grew RSS by 248 MiB. Now the reads of a frame are copied into a buffer of the connection
      // (16 KiB at most): +1.5 MiB.
      assert.ok(grew < 10 * MIB, `heap and buffers grew by ${mib(grew)} for 80 sockets`);
    } finally {
      for (const s of socks) s.close();
      await Promise.all(socks.map((s) => s.ended));
    }
  });
}

for (const v of VARIANTS) {
  Deno.test(`${v.name}: one-byte fragments before CONNECT count 1 KiB each: cut with 1009 long before the connect timeout, memory bounded`, async () => {
    await using broker = await v.start();
    const port = broker.ports[v.name];
    const socks: RawWsClient[] = [];
    try {
      for (let i = 0; i < 100; i++) socks.push(await RawWsClient.open(port, v.opts));
      const before = await held(broker);
      // The first two bytes of a CONNECT in a frame without FIN, then 16,000 one-byte fragments
      // (112 KB, under the bytes a peer may send before CONNECT), and nothing more.
      const wire = concatBytes([
        fragment(2, new Uint8Array([0x10, 0xff])),
        oneByteFragments(16_000),
      ]);
      await Promise.all(socks.map((ws) => writeAll(ws.conn, wire).catch(() => {})));
      await new Promise((r) => setTimeout(r, 1000));
      const grew = (await held(broker)) - before;
      // Before: each stayed open until the connect timeout (10 s), holding its fragments, ~2
      // MiB per socket (+199 MiB of heap and buffers for these 100; 500 such sockets: RSS +1.1
      // GiB). Now each is cut after ~380 fragments, at the bytes allowed before CONNECT.
      assert.ok(grew < 16 * MIB, `heap and buffers grew by ${mib(grew)} for 100 sockets`);
      for (const ws of socks) {
        const e = await closing(ws, 3000);
        assert.ok(e.kind === "end" || e.code === 1009, `expected 1009, got ${JSON.stringify(e)}`);
      }
    } finally {
      for (const s of socks) s.close();
      await Promise.all(socks.map((s) => s.ended));
    }
  });
}

const encode = (packet: Record<string, unknown>) =>
  new Uint8Array(mqttPacket.generate(packet as unknown as Packet, { protocolVersion: 5 }));

Deno.test("after CONNECT a message counts 1 KiB a fragment against 2 x max_packet_size: 1 KiB fragments pass, 200 one-byte fragments are cut with 1009", async () => {
  // max_packet_size 64 KiB: a WebSocket message may hold 128 KiB.
  await using broker = await VARIANTS[0].start({ limits: { max_packet_size: 65536 } });
  await using watcher = await connectClient(broker.ports.tcp, { clientId: "frag-watch" });
  const inbox = collect(watcher);
  await watcher.subscribeAsync("frag/#", { qos: 0 });

  await using ok = await RawWsClient.open(broker.ports.ws);
  await ok.handshake("frag-ok");
  // A 60 KB PUBLISH in 1 KiB fragments (60 of them, as embedded WebSocket clients send them).
  const big = encode({
    cmd: "publish",
    topic: "frag/big",
    payload: Buffer.alloc(60_000, 0x62),
    qos: 0,
    retain: false,
    dup: false,
  });
  const parts: Uint8Array[] = [];
  for (let off = 0; off < big.length; off += 1024) {
    const end = Math.min(off + 1024, big.length);
    parts.push(fragment(off === 0 ? 2 : 0, big.subarray(off, end), end === big.length));
  }
  await writeAll(ok.conn, concatBytes(parts));
  const got = await inbox.next(5000);
  assert.equal(got.topic, "frag/big");
  assert.equal(got.payload.length, 60_000);

  await using cut = await RawWsClient.open(broker.ports.ws);
  await cut.handshake("frag-cut");
  // A small PUBLISH sent a byte per fragment: its 200 fragments count 200 KiB, over the 128 KiB
  // a message may hold. Before, ws took up to 16,384 fragments (2.3 MiB held) and it arrived.
  const small = encode({
    cmd: "publish",
    topic: "frag/small",
    payload: Buffer.alloc(200 - 16, 0x73),
    qos: 0,
    retain: false,
    dup: false,
  });
  assert.equal(small.length, 200);
  const bytes: Uint8Array[] = [];
  for (let i = 0; i < small.length; i++) {
    bytes.push(fragment(i === 0 ? 2 : 0, small.subarray(i, i + 1), i === small.length - 1));
  }
  await writeAll(cut.conn, concatBytes(bytes)).catch(() => {});
  const e = await closing(cut);
  assert.ok(e.kind === "end" || e.code === 1009, `expected 1009, got ${JSON.stringify(e)}`);
  await inbox.none(500);
});
