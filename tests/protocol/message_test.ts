// Message.own and Message.ownBriefly: copies independent of the read buffer they came from.
import assert from "node:assert/strict";
import { Message } from "../../src/protocol/message.ts";

const utf8 = (s: string) => new TextEncoder().encode(s);

/** A message whose payload and properties are views into `buf`, as a read leaves them. */
function borrowed(buf: Uint8Array, payloadLen: number): Message {
  const props = buf.subarray(0, 3);
  return new Message(
    "t",
    utf8("t"),
    buf.subarray(3, 3 + payloadLen),
    1,
    false,
    props,
    0,
    "c",
    false,
  );
}

Deno.test("ownBriefly copies: the read buffer is reused, the message keeps its bytes", () => {
  const buf = new Uint8Array(64).fill(7);
  const msg = borrowed(buf, 10).ownBriefly();
  buf.fill(0);
  assert.deepEqual([...msg.payload], new Array(10).fill(7));
  assert.deepEqual([...msg.props!], [7, 7, 7]);
});

Deno.test("own after ownBriefly gives buffers of the message's own, same bytes", () => {
  const buf = new Uint8Array(64).fill(9);
  const msg = borrowed(buf, 20).ownBriefly();
  // Small copies share an arena chunk (no ArrayBuffer of their own)...
  assert.ok(msg.payload.buffer.byteLength > msg.payload.length);
  msg.own();
  assert.equal(msg.payload.buffer.byteLength, 20);
  assert.equal(msg.props!.buffer.byteLength, 3);
  assert.deepEqual([...msg.payload], new Array(20).fill(9));
  // ...and own() twice copies once.
  const payload = msg.payload;
  assert.equal(msg.own().payload, payload);
});

Deno.test("ownBriefly gives a large payload a buffer of its own, and owned messages are left alone", () => {
  const big = borrowed(new Uint8Array(4000).fill(1), 3000).ownBriefly();
  assert.equal(big.payload.buffer.byteLength, 3000);
  const owned = new Message("t", utf8("t"), utf8("x"), 0, false, null, 0, "c");
  const payload = owned.payload;
  assert.equal(owned.ownBriefly().payload, payload);
});
