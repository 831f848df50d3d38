/**
 * Read buffers: idle and slow connections read into slots of shared slabs, busy ones into a
 * buffer of their own. The slots of many connections are read into at the same time, so the
 * end-to-end test sends from many clients at once and checks every byte arrives where it
 * belongs, over both ways of reading plain TCP (on the runtime's native handles all connections
 * read into one shared buffer, which the same test checks).
 */
import assert from "node:assert/strict";
import net from "node:net";
import { ReadBuffer, readSlotsInUse, SLOT_SIZE } from "../../src/transport/read_loop.ts";
import { nativeTcpWrites } from "../../src/transport/tcp_native.ts";
import { delay, startBroker, subscriber } from "../helpers/broker.ts";
import { concatBytes, frame, str } from "../helpers/wire.ts";

Deno.test("a read buffer starts as a slot, grows when a read fills it, and goes back when reads are small", () => {
  const before = readSlotsInUse();
  const b = new ReadBuffer();
  assert.equal(b.bytes.length, SLOT_SIZE);
  assert.equal(readSlotsInUse(), before + 1);
  b.afterRead(SLOT_SIZE);
  assert.ok(b.bytes.length > SLOT_SIZE, "a full slot moves to a buffer of its own");
  assert.equal(readSlotsInUse(), before, "the slot is given back");
  const own = b.bytes.length;
  b.afterRead(own);
  assert.equal(b.bytes.length, own * 2, "a full own buffer doubles");
  b.afterRead(2);
  assert.equal(b.bytes.length, SLOT_SIZE, "a PINGREQ-sized read goes back to a slot");
  assert.equal(readSlotsInUse(), before + 1);
  b.releaseBuffer();
  b.releaseBuffer();
  assert.equal(readSlotsInUse(), before, "release is idempotent");
});

Deno.test("slots of one slab do not overlap", () => {
  const buffers = Array.from({ length: 1500 }, () => new ReadBuffer());
  try {
    buffers.forEach((b, i) => b.bytes.fill(i & 0xff));
    buffers.forEach((b, i) => assert.ok(b.bytes.every((x) => x === (i & 0xff)), `slot ${i}`));
  } finally {
    for (const b of buffers) b.releaseBuffer();
  }
});

for (const io of ["deno", "native"] as const) {
  Deno.test(`many clients publishing at once over TCP (${io} io): every message arrives intact`, async () => {
    await using b = await startBroker({}, { tcpIo: io });
    const nativeBefore = nativeTcpWrites().atOnce;
    await using sub = await subscriber(b.port, "rb/#", 0, { clientId: "sub" });
    const slotsAtStart = readSlotsInUse();
    const clients = 100;
    // Raw MQTT 3.1.1 clients: CONNECT and a batch of PUBLISH packets of sizes around the slot
    // size, written in one go so that the broker's reads of all clients complete together.
    const sockets: net.Socket[] = [];
    const expected = new Map<string, string>();
    try {
      await Promise.all(
        Array.from({ length: clients }, (_, i) =>
          new Promise<void>((resolve, reject) => {
            const s = net.connect({ host: "127.0.0.1", port: b.port }, () => {
              const parts: Uint8Array[] = [
                frame(0x10, [...str("MQTT"), 4, 0x02, 0, 60, ...str(`rb-${i}`)]),
              ];
              for (let k = 0; k < 5; k++) {
                const topic = `rb/${i}/${k}`;
                const payload = `${i}:${k}:`.padEnd(40 + ((i * 7 + k * 31) % 200), String(k));
                expected.set(topic, payload);
                parts.push(frame(0x30, [...str(topic), ...new TextEncoder().encode(payload)]));
              }
              s.write(concatBytes(parts));
              resolve();
            });
            s.on("error", reject);
            sockets.push(s);
          })),
      );
      const deadline = Date.now() + 10_000;
      while (sub.inbox.messages.length < expected.size && Date.now() < deadline) await delay(20);
      assert.equal(sub.inbox.messages.length, expected.size);
      for (const m of sub.inbox.messages) assert.equal(m.payload, expected.get(m.topic), m.topic);
      if (io === "deno") {
        assert.ok(readSlotsInUse() >= slotsAtStart, "idle clients hold a slot each");
      } else {
        // Native handles read into one shared buffer: no slot per connection, and the CONNACKs
        // were written at once.
        assert.equal(readSlotsInUse(), slotsAtStart, "native connections took read slots");
        assert.ok(
          nativeTcpWrites().atOnce >= nativeBefore + clients,
          "CONNACKs not written natively",
        );
      }
    } finally {
      for (const s of sockets) s.destroy();
    }
    const deadline = Date.now() + 5000;
    while (readSlotsInUse() > slotsAtStart && Date.now() < deadline) await delay(20);
    assert.equal(readSlotsInUse(), slotsAtStart, "closed connections give their slots back");
  });
}
