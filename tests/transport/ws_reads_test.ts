/**
 * FrameReads: whatever way a WebSocket byte stream is cut into reads, ws gets the same bytes in
 * the same order, in few pieces per frame, and frames are counted as announced.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import fc from "fast-check";
import { FRAME_CHARGE, FrameReads, PIECE } from "../../src/transport/ws_reads.ts";
import { concatBytes } from "../helpers/wire.ts";

/** A client frame (masked, zero mask) of `opcode` with `payload` bytes, header in its `form`. */
function frame(
  opcode: number,
  fin: boolean,
  payload: number,
  form: "7" | "16" | "64" = payload < 126 ? "7" : payload < 65536 ? "16" : "64",
): Uint8Array {
  const h: number[] = [(fin ? 0x80 : 0) | opcode];
  if (form === "7") h.push(0x80 | payload);
  else if (form === "16") h.push(0x80 | 126, payload >> 8, payload & 0xff);
  else {
    h.push(0x80 | 127, 0, 0, 0, 0);
    for (let i = 3; i >= 0; i--) h.push(Math.floor(payload / 2 ** (8 * i)) & 0xff);
  }
  h.push(0, 0, 0, 0);
  const out = new Uint8Array(h.length + payload);
  out.set(h);
  for (let i = 0; i < payload; i++) out[h.length + i] = (i * 13 + payload) & 0xff;
  return out;
}

/** Splits `bytes` at the sorted cut positions into Buffers, as a socket would read them. */
function reads(bytes: Uint8Array, cuts: number[]): Buffer[] {
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of [...cuts, bytes.length]) {
    if (c > prev) out.push(Buffer.from(bytes.subarray(prev, c)));
    prev = c;
  }
  return out;
}

Deno.test("any cut of a stream of frames reaches ws whole and in order", () => {
  const frameArb = fc.record({
    opcode: fc.constantFrom(0, 1, 2, 8, 9, 10),
    fin: fc.boolean(),
    payload: fc.oneof(
      fc.constantFrom(0, 1, 125, 126, 127, 65535, 65536),
      fc.integer({ min: 0, max: 3000 }),
    ),
    long: fc.boolean(),
  });
  fc.assert(
    fc.property(
      fc.array(frameArb, { minLength: 1, maxLength: 8 }),
      fc.array(fc.nat(), { maxLength: 40 }),
      (frames, rawCuts) => {
        const stream = concatBytes(
          frames.map((f) => frame(f.opcode, f.fin, f.payload, f.long ? "64" : undefined)),
        );
        const cuts = [...new Set(rawCuts.map((c) => c % (stream.length + 1)))].sort((a, b) =>
          a - b
        );
        const got: Uint8Array[] = [];
        const fr = new FrameReads((c) => got.push(c.slice()));
        for (const r of reads(stream, cuts)) fr.push(r);
        fr.flush();
        assert.deepEqual(concatBytes(got), stream);
      },
    ),
  );
});

Deno.test("a frame's payload read a byte at a time reaches ws in pieces of PIECE bytes, not a read each", () => {
  const f = frame(2, true, 3 * PIECE + 100);
  const got: Uint8Array[] = [];
  const fr = new FrameReads((c) => got.push(c.slice()));
  const cuts = Array.from({ length: f.length - 1 }, (_, i) => i + 1);
  for (const r of reads(f, cuts)) fr.push(r);
  assert.deepEqual(concatBytes(got), f);
  // The header's 14 reads pass as they come (ws checks a header at once), then 4 pieces.
  assert.ok(got.length <= 14 + 4, `ws got ${got.length} chunks for one frame`);
});

Deno.test("frames count as announced, at least FRAME_CHARGE each; a message's fragments but its last count FRAME_CHARGE against the bound", () => {
  let refused = 0;
  const got: Uint8Array[] = [];
  const fr = new FrameReads((c) => got.push(c), 10 * FRAME_CHARGE, () => refused++);
  // A whole message in one frame as large as the bound: counted by its bytes, not refused.
  fr.push(Buffer.from(frame(2, true, 10 * FRAME_CHARGE)));
  assert.equal(refused, 0);
  assert.equal(fr.charged, 10 * FRAME_CHARGE + 8);
  // A ping counts FRAME_CHARGE in `charged` (before CONNECT everything does), not in a message.
  fr.push(Buffer.from(frame(9, true, 0)));
  assert.equal(fr.charged, 11 * FRAME_CHARGE + 8);
  // Ten one-byte fragments (the first opens the message) count 10 x FRAME_CHARGE: at the bound.
  const fragments = [frame(2, false, 1), ...Array.from({ length: 9 }, () => frame(0, false, 1))];
  fr.push(Buffer.from(concatBytes(fragments)));
  assert.equal(refused, 0);
  const delivered = got.length;
  // One more is over it: refused once, and nothing after it reaches ws.
  fr.push(Buffer.from(concatBytes([frame(0, false, 1), frame(0, true, 1)])));
  assert.equal(refused, 1);
  assert.equal(got.length, delivered);
  fr.push(Buffer.from(frame(2, true, 1)));
  assert.equal(refused, 1);
  assert.equal(got.length, delivered);
});
