/**
 * Framer: stream bytes in, whole packets out, for any way the stream is cut,
 * with the size limit enforced from the fixed header alone.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { Framer } from "../../src/protocol/framer.ts";
import { concatBytes } from "../helpers/wire.ts";
import { MqttError, ReasonCode } from "../../src/protocol/reason_codes.ts";

interface Frame {
  header: number;
  body: Uint8Array;
}

/** Encodes a packet with first byte `header` and a body of `bodyLen` recognisable bytes. */
function packet(header: number, bodyLen: number, seed = 0): Uint8Array {
  const len: number[] = [];
  let n = bodyLen;
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    len.push(b);
  } while (n > 0);
  const out = new Uint8Array(1 + len.length + bodyLen);
  out[0] = header;
  out.set(len, 1);
  for (let i = 0; i < bodyLen; i++) out[1 + len.length + i] = (i * 7 + seed) & 0xff;
  return out;
}

/** Feeds `chunks` one by one and returns copies of every packet delivered. */
function frameAll(framer: Framer, chunks: Uint8Array[]): Frame[] {
  const out: Frame[] = [];
  for (const c of chunks) {
    framer.feed(c, {
      handlePacket(header, buf, start, end) {
        // The bytes are only valid during the call, so keep a copy.
        out.push({ header, body: buf.slice(start, end) });
        return true;
      },
    });
  }
  return out;
}

/** What the stream should frame into: header byte and body of each packet. */
function expected(packets: Uint8Array[]): Frame[] {
  return packets.map((p) => {
    let i = 1;
    while (p[i] & 0x80) i++;
    return { header: p[0], body: p.slice(i + 1) };
  });
}

/** Splits `bytes` at the given sorted cut positions. */
function cut(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  let prev = 0;
  for (const c of cuts) {
    chunks.push(bytes.subarray(prev, c));
    prev = c;
  }
  chunks.push(bytes.subarray(prev));
  return chunks;
}

function assertMqttError(fn: () => unknown, code: number): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof MqttError, `expected MqttError, got ${e}`);
    assert.equal(e.code, code, `reason code 0x${e.code.toString(16)}`);
    return true;
  });
}

// A PINGREQ (empty body), a PUBLISH with a 2-byte remaining length, another
// one-byte-length packet and a zero-length DISCONNECT: covers both header paths.
const MIXED = [
  packet(0xc0, 0),
  packet(0x32, 200, 1),
  packet(0x62, 2, 2),
  packet(0x30, 127, 3),
  packet(0x30, 128, 4),
  packet(0xe0, 0),
];
const MIXED_STREAM = concatBytes(MIXED);

Deno.test("a stream cut into two chunks at every byte position yields the same packets", () => {
  const want = expected(MIXED);
  for (let at = 0; at <= MIXED_STREAM.length; at++) {
    const f = new Framer(1024 * 1024);
    const got = frameAll(f, cut(MIXED_STREAM, [at]));
    assert.deepEqual(got, want, `cut at ${at}`);
    assert.ok(f.idle, `framer holds nothing after the last packet (cut at ${at})`);
  }
});

Deno.test("a stream fed one byte at a time yields the same packets", () => {
  const f = new Framer(1024 * 1024);
  const chunks = Array.from(MIXED_STREAM, (b) => new Uint8Array([b]));
  assert.deepEqual(frameAll(f, chunks), expected(MIXED));
});

Deno.test("a 3-byte remaining length split inside its varint is reassembled", () => {
  // 16384 bytes of body need a 3-byte remaining length: 0x80 0x80 0x01.
  const big = packet(0x30, 16384, 9);
  assert.deepEqual(Array.from(big.subarray(1, 4)), [0x80, 0x80, 0x01]);
  const stream = concatBytes([packet(0xc0, 0), big, packet(0xc0, 0)]);
  const want = expected([packet(0xc0, 0), big, packet(0xc0, 0)]);
  // Every cut inside the headers, plus some inside and at the end of the body.
  const positions = [0, 1, 2, 3, 4, 5, 6, 7, 100, stream.length - 3, stream.length - 2];
  for (const at of positions) {
    const f = new Framer(1024 * 1024);
    assert.deepEqual(frameAll(f, cut(stream, [at])), want, `cut at ${at}`);
  }
  // And every header byte in its own chunk.
  const f = new Framer(1024 * 1024);
  const chunks = [
    stream.subarray(0, 2),
    ...Array.from(stream.subarray(2, 6), (b) => Uint8Array.of(b)),
  ];
  chunks.push(stream.subarray(6));
  assert.deepEqual(frameAll(f, chunks), want);
});

Deno.test("random cuts of a random packet stream yield the packets in order", () => {
  const packetArb = fc.record({
    type: fc.integer({ min: 1, max: 15 }),
    flags: fc.integer({ min: 0, max: 15 }),
    len: fc.oneof(
      fc.constantFrom(0, 1, 127, 128, 16383, 16384),
      fc.integer({ min: 0, max: 300 }),
    ),
  }).map((p) => packet((p.type << 4) | p.flags, p.len, p.flags));
  fc.assert(
    fc.property(
      fc.array(packetArb, { minLength: 1, maxLength: 6 }),
      fc.array(fc.nat(), { maxLength: 8 }),
      (packets, rawCuts) => {
        const stream = concatBytes(packets);
        const cuts = [...new Set(rawCuts.map((c) => c % (stream.length + 1)))].sort((a, b) =>
          a - b
        );
        const f = new Framer(1024 * 1024);
        assert.deepEqual(frameAll(f, cut(stream, cuts)), expected(packets));
        assert.ok(f.idle);
      },
    ),
    { numRuns: 150 },
  );
});

Deno.test("several packets in one chunk are all delivered, in order, without copying", () => {
  const f = new Framer(1024);
  const chunk = concatBytes([packet(0x30, 5, 1), packet(0xc0, 0), packet(0x40, 2, 2)]);
  const seen: { header: number; start: number; end: number; same: boolean }[] = [];
  f.feed(chunk, {
    handlePacket(header, buf, start, end) {
      seen.push({ header, start, end, same: buf === chunk });
      return true;
    },
  });
  assert.deepEqual(seen, [
    { header: 0x30, start: 2, end: 7, same: true },
    { header: 0xc0, start: 9, end: 9, same: true },
    { header: 0x40, start: 11, end: 13, same: true },
  ]);
});

Deno.test("a handler returning false stops framing the rest of the chunk", () => {
  const f = new Framer(1024);
  const chunk = concatBytes([packet(0xe0, 0), packet(0xc0, 0), packet(0xc0, 0)]);
  const headers: number[] = [];
  f.feed(chunk, {
    handlePacket(header) {
      headers.push(header);
      return false;
    },
  });
  assert.deepEqual(headers, [0xe0]);
});

Deno.test("zero-length packets are delivered with an empty body", () => {
  const f = new Framer(1024);
  // PINGREQ, DISCONNECT, PINGREQ back to back, then one split after its first byte.
  const got = frameAll(f, [
    Uint8Array.of(0xc0, 0x00, 0xe0, 0x00, 0xc0, 0x00, 0xc0),
    Uint8Array.of(0x00),
  ]);
  assert.deepEqual(got.map((p) => [p.header, p.body.length]), [
    [0xc0, 0],
    [0xe0, 0],
    [0xc0, 0],
    [0xc0, 0],
  ]);
  assert.ok(f.idle);
});

Deno.test("idle is false while a packet is only partly received", () => {
  const f = new Framer(1024);
  const p = packet(0x30, 10);
  frameAll(f, [p.subarray(0, 1)]);
  assert.equal(f.idle, false, "after the first header byte");
  frameAll(f, [p.subarray(1, 5)]);
  assert.equal(f.idle, false, "inside the body");
  assert.equal(frameAll(f, [p.subarray(5)]).length, 1);
  assert.equal(f.idle, true);
});

Deno.test("a packet of exactly the maximum size is accepted, one byte more is refused with 0x95", () => {
  // One-byte remaining length (fast path): total = 2 + body.
  const ok = new Framer(12);
  assert.equal(frameAll(ok, [packet(0x30, 10)]).length, 1);
  assertMqttError(() => frameAll(new Framer(12), [packet(0x30, 11)]), ReasonCode.PacketTooLarge);
  // Two-byte remaining length: total = 3 + body.
  assert.equal(frameAll(new Framer(203), [packet(0x30, 200)]).length, 1);
  assertMqttError(() => frameAll(new Framer(202), [packet(0x30, 200)]), ReasonCode.PacketTooLarge);
});

Deno.test("an oversized packet is refused from its fixed header alone, before its body arrives", () => {
  // A broker that buffered first would wait for 268 MB and never throw here.
  // [MQTT-3.1.2-24] the server must not accept a packet over its Maximum Packet Size.
  const header = Uint8Array.of(0x30, 0xff, 0xff, 0xff, 0x7f);
  assertMqttError(() => frameAll(new Framer(1024), [header]), ReasonCode.PacketTooLarge);
  // One-byte length on the fast path: header only, body never sent.
  assertMqttError(
    () => frameAll(new Framer(64), [Uint8Array.of(0x30, 100)]),
    ReasonCode.PacketTooLarge,
  );
  // The header itself split over reads: the error comes with the byte that completes it.
  const f = new Framer(1024);
  frameAll(f, [Uint8Array.of(0x30, 0xff)]);
  frameAll(f, [Uint8Array.of(0xff)]);
  assertMqttError(() => frameAll(f, [Uint8Array.of(0x01)]), ReasonCode.PacketTooLarge);
});

Deno.test("an oversized packet after a good one in the same chunk is refused after the good one is delivered", () => {
  const f = new Framer(100);
  const headers: number[] = [];
  assertMqttError(
    () =>
      f.feed(concatBytes([packet(0xc0, 0), Uint8Array.of(0x30, 0x80, 0x01)]), {
        handlePacket(h) {
          headers.push(h);
          return true;
        },
      }),
    ReasonCode.PacketTooLarge,
  );
  assert.deepEqual(headers, [0xc0]);
});

Deno.test("a remaining length longer than 4 bytes is a malformed packet (0x81)", () => {
  // [MQTT-1.5.5] a Variable Byte Integer uses at most 4 bytes.
  const bad = Uint8Array.of(0x30, 0x80, 0x80, 0x80, 0x80, 0x01);
  assertMqttError(() => frameAll(new Framer(2 ** 30), [bad]), ReasonCode.MalformedPacket);
  // The same, one byte per read: refused as soon as the fifth length byte is due.
  const f = new Framer(2 ** 30);
  for (const b of bad.subarray(0, 4)) frameAll(f, [Uint8Array.of(b)]);
  assertMqttError(() => frameAll(f, [Uint8Array.of(bad[4])]), ReasonCode.MalformedPacket);
  // Behind a good packet in the same chunk.
  assertMqttError(
    () => frameAll(new Framer(2 ** 30), [concatBytes([packet(0xc0, 0), bad])]),
    ReasonCode.MalformedPacket,
  );
});
