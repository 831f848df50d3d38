/**
 * The outbox over real loopback sockets: partial socket writes are completed
 * (the TCP sink hands the socket's byte count over), and write buffers shared
 * between connections through the pool never mix their bytes.
 */
import assert from "node:assert/strict";
import { flushDeliveries, Outbox } from "../../src/protocol/outbox.ts";
import { TcpConnection } from "../../src/transport/tcp.ts";
import {
  assertPooledWritesDoNotMix,
  pattern,
  RecordingOwner as Owner,
} from "../helpers/outbox_traffic.ts";
import { socketPair } from "../helpers/sockets.ts";

/** Reads `n` bytes from `conn` (pausing between reads when `slow`); fails after 15 s. */
async function readExactly(conn: Deno.Conn, n: number, slow = false): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let have = 0;
  const buf = new Uint8Array(64 * 1024);
  // Lost bytes would leave the read waiting forever: closing the socket ends it.
  const timer = setTimeout(() => conn.close(), 15_000);
  try {
    while (have < n) {
      if (slow) await new Promise((r) => setTimeout(r, 2));
      const got = await conn.read(buf);
      if (got === null) break;
      out.set(buf.subarray(0, got), have);
      have += got;
    }
  } catch {
    // closed by the timer
  } finally {
    clearTimeout(timer);
  }
  if (have < n) throw new Error(`only ${have} of ${n} bytes arrived`);
  return out;
}

Deno.test("a write larger than the socket takes at once arrives whole and in order", async () => {
  const pair = await socketPair();
  try {
    const owner = new Owner();
    const outbox = new Outbox(new TcpConnection(pair.near, 0), owner);
    // 8 MiB in 48 KiB packets: a slow reader makes the kernel buffer fill, so the socket
    // takes only part of a write and the outbox has to write the rest.
    const packets: Uint8Array[] = [];
    for (let i = 0; i < 170; i++) packets.push(pattern(48 * 1024, i));
    const total = packets.reduce((n, p) => n + p.length, 0);
    const reading = readExactly(pair.far, total, true);
    for (const p of packets) outbox.push(p);
    const got = await reading;
    let at = 0;
    for (const p of packets) {
      assert.deepEqual(got.subarray(at, at + p.length), p);
      at += p.length;
    }
    assert.equal(owner.failure, null);
  } finally {
    pair.close();
  }
});

Deno.test("pooled write buffers shared by connections never mix their bytes", async () => {
  const pairs = await Promise.all([socketPair(), socketPair(), socketPair()]);
  try {
    const outboxes = pairs.map((p) => new Outbox(new TcpConnection(p.near, 0), new Owner()));
    await assertPooledWritesDoNotMix(outboxes, (k, n) => readExactly(pairs[k].far, n));
  } finally {
    for (const p of pairs) p.close();
  }
});

Deno.test("deliveries are written before acknowledgements queued earlier in the same turn", async () => {
  // A burst of PUBLISHes from many publishers: each produces a PUBACK to its publisher and a
  // delivery to a subscriber. The deliveries go out first, so the last subscriber does not wait
  // for every publisher's PUBACK write (issue 14, paced latency).
  const pairs = await Promise.all([socketPair(), socketPair(), socketPair()]);
  try {
    const order: string[] = [];
    const outbox = (i: number, name: string) => {
      const conn = new TcpConnection(pairs[i].near, 0);
      return new Outbox({
        write(bytes: Uint8Array) {
          order.push(`${name}:${bytes.length}`);
          return conn.write(bytes);
        },
        end: () => conn.end(),
        close: () => conn.close(),
      }, new Owner());
    };
    const publisher = outbox(0, "publisher");
    const subscriber = outbox(1, "subscriber");
    const both = outbox(2, "both");
    const publish = Uint8Array.of(0x30, 5, 0, 1, 0x61, 1, 2);
    publisher.pushAck(4, 1, 0, true);
    both.pushAck(4, 2, 0, true);
    subscriber.pushPublish(publish, publish.length, -1, 0);
    // An outbox with an acknowledgement and then a delivery is written once, in the first group.
    both.pushPublish(publish, publish.length, -1, 0);
    await new Promise((r) => setTimeout(r, 0));
    assert.deepEqual(order, ["subscriber:7", "both:11", "publisher:4"]);
    assert.deepEqual([...await readExactly(pairs[2].far, 11)], [
      0x40,
      2,
      0,
      2,
      ...publish,
    ]);
    assert.deepEqual([...await readExactly(pairs[0].far, 4)], [0x40, 2, 0, 1]);
  } finally {
    for (const p of pairs) p.close();
  }
});

Deno.test("after a read, deliveries go out at once, then once per turn until 32 KiB pile up", async () => {
  // What the session does after each read (flushDeliveries): a subscriber's delivery is written
  // right after the read that produced it, not at the end of the turn; acknowledgements wait for
  // the end of the turn; a second delivery in the same turn waits too, unless the subscriber's
  // buffer holds 32 KiB or more (fan-in at full load).
  const pairs = await Promise.all([socketPair(), socketPair()]);
  try {
    const order: string[] = [];
    const outbox = (i: number, name: string) => {
      const conn = new TcpConnection(pairs[i].near, 0);
      return new Outbox({
        // Taken whole at once, as the native TCP handles report a write the socket took.
        writeThen(bytes: Uint8Array) {
          order.push(`${name}:${bytes.length}`);
          conn.write(bytes.slice()).catch(() => {});
          return true;
        },
        write: (bytes: Uint8Array) => conn.write(bytes),
        end: () => conn.end(),
        close: () => conn.close(),
      }, new Owner());
    };
    const subscriber = outbox(0, "subscriber");
    const publisher = outbox(1, "publisher");
    const publish = Uint8Array.of(0x30, 5, 0, 1, 0x61, 1, 2);
    publisher.pushAck(4, 1, 0, true);
    subscriber.pushPublish(publish, publish.length, -1, 0);
    flushDeliveries();
    assert.deepEqual(order, ["subscriber:7"]);
    subscriber.pushPublish(publish, publish.length, -1, 0);
    flushDeliveries();
    assert.deepEqual(order, ["subscriber:7"], "the second delivery of the turn waits");
    const big = pattern(40 * 1024, 3);
    subscriber.push(big);
    flushDeliveries();
    assert.deepEqual(order, ["subscriber:7", `subscriber:${7 + big.length}`]);
    // The end of the turn: the acknowledgement.
    await new Promise((r) => setTimeout(r, 0));
    assert.deepEqual(order, ["subscriber:7", `subscriber:${7 + big.length}`, "publisher:4"]);
    // The next turn writes a delivery at once again.
    subscriber.pushPublish(publish, publish.length, -1, 0);
    flushDeliveries();
    assert.equal(order.at(-1), "subscriber:7");
    const got = await readExactly(pairs[0].far, 7 * 3 + big.length);
    assert.deepEqual(got, Uint8Array.from([...publish, ...publish, ...big, ...publish]));
    assert.deepEqual([...await readExactly(pairs[1].far, 4)], [0x40, 2, 0, 1]);
  } finally {
    for (const p of pairs) p.close();
  }
});

Deno.test("a transport that throws on write fails its own connection, not the flush of the others", async () => {
  // After flushDeliveries, a write runs inside another connection's read: a throw there would
  // have ended the reader's connection (a publisher's, for a subscriber's broken transport).
  const pair = await socketPair();
  try {
    const broken = new Owner();
    const fine = new Owner();
    const bad = new Outbox({
      writeThen(): boolean {
        throw new Error("transport gone");
      },
      write: () => Promise.reject(new Error("unused")),
      end: () => {},
      close: () => {},
    }, broken);
    const good = new Outbox(new TcpConnection(pair.near, 0), fine);
    const publish = Uint8Array.of(0x30, 5, 0, 1, 0x61, 1, 2);
    bad.pushPublish(publish, publish.length, -1, 0);
    good.pushPublish(publish, publish.length, -1, 0);
    flushDeliveries();
    assert.match(String(broken.failure), /transport gone/);
    assert.equal(bad.closed, true);
    assert.equal(fine.failure, null);
    assert.deepEqual(await readExactly(pair.far, publish.length), publish);
    // Nothing further is written to the failed one, and the next turn still flushes the other.
    bad.pushPublish(publish, publish.length, -1, 0);
    good.pushPublish(publish, publish.length, -1, 0);
    await new Promise((r) => setTimeout(r, 0));
    assert.deepEqual(await readExactly(pair.far, publish.length), publish);
  } finally {
    pair.close();
  }
});
