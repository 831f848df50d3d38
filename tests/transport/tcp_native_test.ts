/**
 * Plain TCP on the runtime's native handles (src/transport/tcp_native.ts): the pinned Deno must
 * offer them (an upgrade that loses them would silently fall back to Deno.listen and cost what
 * issue 14 measured), a subscriber that reads slowly still gets every byte through writes that
 * complete later, and a flooding publisher does not starve its subscriber.
 */
import assert from "node:assert/strict";
import { readSlotsInUse } from "../../src/transport/read_loop.ts";
import { nativeTcp, nativeTcpWrites } from "../../src/transport/tcp_native.ts";
import { connectClient, delay, startBroker } from "../helpers/broker.ts";
import { concatBytes, frame, str } from "../helpers/wire.ts";

Deno.test("the pinned Deno offers the native TCP handles the TCP transport uses", () => {
  assert.notEqual(nativeTcp, null, "process.binding('tcp_wrap') / ('stream_wrap') changed");
});

/** Reads from `conn` until `n` bytes arrived; returns them. */
async function readBytes(conn: Deno.Conn, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  for (let got = 0; got < n;) {
    const r = await conn.read(out.subarray(got));
    if (r === null) throw new Error(`closed after ${got} of ${n} bytes`);
    got += r;
  }
  return out;
}

Deno.test("native TCP: a subscriber that does not read for a while still gets every byte", async () => {
  await using b = await startBroker({ limits: { max_outgoing_bytes: 64 * 1024 * 1024 } });
  const sub = await Deno.connect({ hostname: "127.0.0.1", port: b.port });
  try {
    await sub.write(frame(0x10, [...str("MQTT"), 4, 0x02, 0, 60, ...str("slow")]));
    await readBytes(sub, 4); // CONNACK
    await sub.write(frame(0x82, [0, 1, ...str("slow/t"), 0]));
    await readBytes(sub, 5); // SUBACK
    const later = nativeTcpWrites().later;
    // 8 MiB towards a socket nobody reads: more than the kernel buffers, so the runtime keeps
    // the rest and completes the write later.
    await using pub = await connectClient(b.port, { clientId: "slow-pub" });
    const payload = new Uint8Array(512 * 1024).map((_, i) => (i * 31) % 256);
    const count = 16;
    for (let i = 0; i < count; i++) {
      payload[0] = i;
      await pub.publishAsync("slow/t", payload as unknown as Buffer);
    }
    await delay(300);
    // Now read: the PUBLISH packets, each header (1 + 3 + 2 + 6 bytes) and payload.
    const packet = 1 + 3 + 2 + 6 + payload.length;
    const got = await readBytes(sub, packet * count);
    for (let i = 0; i < count; i++) {
      const at = i * packet;
      assert.equal(got[at], 0x30);
      const body = got.subarray(at + 12, at + packet);
      payload[0] = i;
      assert.deepEqual(body, payload, `payload ${i} differs`);
    }
    assert.ok(nativeTcpWrites().later > later, "no write completed later");
  } finally {
    sub.close();
  }
});

Deno.test("native TCP: a QoS 0 flood from one publisher reaches its subscriber", async () => {
  await using b = await startBroker();
  const topic = str("f/a");
  const sub = await Deno.connect({ hostname: "127.0.0.1", port: b.port });
  const pub = await Deno.connect({ hostname: "127.0.0.1", port: b.port });
  try {
    await sub.write(frame(0x10, [...str("MQTT"), 4, 0x02, 0, 60, ...str("fs")]));
    await readBytes(sub, 4);
    await sub.write(frame(0x82, [0, 1, ...topic, 0]));
    await readBytes(sub, 5);
    let received = 0;
    const reading = (async () => {
      const buf = new Uint8Array(65536);
      for (;;) {
        const n = await sub.read(buf).catch(() => null);
        if (n === null) return;
        received += n;
      }
    })();
    await pub.write(frame(0x10, [...str("MQTT"), 4, 0x02, 0, 60, ...str("fp")]));
    await readBytes(pub, 4);
    const packet = frame(0x30, [...topic, ...new Uint8Array(64)]);
    const batch = concatBytes(Array.from({ length: 64 }, () => packet));
    let sent = 0;
    const until = Date.now() + 2000;
    while (Date.now() < until) {
      for (let off = 0; off < batch.length;) off += await pub.write(batch.subarray(off));
      sent += batch.length;
    }
    await delay(500);
    pub.close();
    sub.close();
    await reading;
    // The share a starved subscriber got over TLS before the pause was ~3% (flood_test.ts).
    assert.ok(
      received / sent > 0.2,
      `the subscriber got ${(100 * received / sent).toFixed(1)}% of ${sent / packet.length}`,
    );
  } finally {
    try {
      pub.close();
      sub.close();
    } catch {
      // closed above
    }
  }
});

Deno.test("[general] tcp_io picks how plain TCP is served: native handles, or Deno.listen", async () => {
  for (const io of ["native", "deno"] as const) {
    await using b = await startBroker({ general: { tcp_io: io } });
    const slots = readSlotsInUse();
    const writes = nativeTcpWrites().atOnce;
    const c = await Deno.connect({ hostname: "127.0.0.1", port: b.port });
    try {
      await c.write(frame(0x10, [...str("MQTT"), 4, 0x02, 0, 60, ...str(`io-${io}`)]));
      await readBytes(c, 4);
      // Deno.listen reads into a slot per connection; native handles into the shared buffer.
      assert.equal(readSlotsInUse() - slots, io === "deno" ? 1 : 0, io);
      assert.equal(nativeTcpWrites().atOnce - writes, io === "native" ? 1 : 0, io);
    } finally {
      c.close();
    }
  }
});

/**
 * TCP_NODELAY of this process's socket from 127.0.0.1:`localPort` to 127.0.0.1:`peerPort`, read
 * with getsockopt(2) on its descriptor: the descriptor is the one whose /proc/self/fd link names
 * the socket's inode in /proc/net/tcp. Linux only; null where that cannot be read.
 */
function noDelayOf(localPort: number, peerPort: number): boolean | null {
  const hex = (p: number) => p.toString(16).toUpperCase().padStart(4, "0");
  const want = [`0100007F:${hex(localPort)}`, `0100007F:${hex(peerPort)}`];
  let inode: string | undefined;
  for (const line of Deno.readTextFileSync("/proc/net/tcp").split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f[1] === want[0] && f[2] === want[1]) inode = f[9];
  }
  if (inode === undefined) return null;
  let fd = -1;
  for (const e of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${e.name}`) === `socket:[${inode}]`) fd = Number(e.name);
    } catch {
      // closed meanwhile
    }
  }
  if (fd < 0) return null;
  const libc = Deno.dlopen("libc.so.6", {
    getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  });
  try {
    const value = new Int32Array(1);
    const len = new Uint32Array([4]);
    // IPPROTO_TCP = 6, TCP_NODELAY = 1
    const r = libc.symbols.getsockopt(
      fd,
      6,
      1,
      new Uint8Array(value.buffer),
      new Uint8Array(len.buffer),
    );
    return r === 0 ? value[0] !== 0 : null;
  } finally {
    libc.close();
  }
}

Deno.test({
  name: "native TCP: the broker's side of an accepted connection has TCP_NODELAY set",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    await using b = await startBroker();
    const c = await Deno.connect({ hostname: "127.0.0.1", port: b.port });
    try {
      await c.write(frame(0x10, [...str("MQTT"), 4, 0x02, 0, 60, ...str("nodelay")]));
      await readBytes(c, 4); // CONNACK: the broker has accepted and answered
      const local = (c.localAddr as Deno.NetAddr).port;
      assert.equal(noDelayOf(b.port, local), true, "Nagle's algorithm is on for the client");
      // The test reads what it means to: the client's own side, never set, reads false.
      assert.equal(noDelayOf(local, b.port), false);
    } finally {
      c.close();
    }
  },
});
