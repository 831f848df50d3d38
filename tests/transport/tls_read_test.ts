/**
 * The TLS read path: a TLS connection reads into a read buffer of its own (a slot of a shared
 * slab while reads are small, a growing buffer once they are big), not into a fresh buffer per
 * read. Slots of many connections are filled at once and buffers change between reads, so
 * clients send packets of every size at the same time and every byte must arrive where it
 * belongs. Under TLS, the encrypted bytes of every connection are read into one shared buffer
 * (`readCipherShared`): the same traffic over TLS and secure WebSocket checks that no
 * connection's bytes land in another's.
 */
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { PassThrough } from "node:stream";
import tls from "node:tls";
import { readSlotsInUse } from "../../src/transport/read_loop.ts";
import { bridgeSocket, cipherBufferInstalls } from "../../src/transport/tls_read.ts";
import type { ConnectionHandler } from "../../src/transport/types.ts";
import { delay, startSecureBroker, subscriber } from "../helpers/broker.ts";
import { clientTls, makeTestPki } from "../helpers/certs.ts";
import { concatBytes, frame, str } from "../helpers/wire.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-tls-read-test-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

/** A payload of `size` bytes that names its topic, so a misplaced byte shows. */
function payload(topic: string, size: number): string {
  const seed = `${topic};`;
  return seed.repeat(Math.ceil(size / seed.length)).slice(0, size);
}

/** Resolves with the next chunk `socket` receives, or rejects after 5 s. */
function nextData(socket: tls.TLSSocket): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no answer within 5 s")), 5000);
    socket.once("data", (d: Uint8Array) => {
      clearTimeout(timer);
      resolve(d);
    });
  });
}

/** A connection handler that records what reaches it and can hold reading. */
class Recorder implements ConnectionHandler {
  chunks: string[] = [];
  closes = 0;
  readGate: Promise<void> | null = null;
  private open: (() => void) | null = null;

  data(chunk: Uint8Array, length: number): void {
    this.chunks.push(new TextDecoder().decode(chunk.subarray(0, length)));
  }

  closed(): void {
    this.closes++;
  }

  /** Shuts the gate: the transport stops reading until `release`. */
  hold(): void {
    this.readGate = new Promise((resolve) => this.open = resolve);
  }

  release(): void {
    this.readGate = null;
    this.open?.();
  }
}

// Runs first in this file: the TLS tests after it check that a stream without the runtime's
// read slots did not switch the buffer off for the sockets that come later.
Deno.test("a stream without the runtime's read slots is read through 'data' events, held by the read gate", async () => {
  const stream = new PassThrough();
  const h = new Recorder();
  bridgeSocket(stream as unknown as Socket, h);
  const slotsBefore = readSlotsInUse();
  stream.write("one");
  await delay(10);
  assert.deepEqual(h.chunks, ["one"]);
  assert.equal(readSlotsInUse(), slotsBefore, "no read buffer of its own");
  h.hold();
  stream.write("two");
  await delay(10);
  assert.deepEqual(h.chunks, ["one", "two"], "the read that finds the gate shut is delivered");
  stream.write("three");
  await delay(20);
  assert.deepEqual(h.chunks, ["one", "two"], "nothing more while the gate is shut");
  h.release();
  await delay(20);
  assert.deepEqual(h.chunks, ["one", "two", "three"]);
  stream.end();
  await delay(20);
  assert.equal(h.closes, 1, "the end is reported once");
});

Deno.test("many TLS clients publishing packets of every size at once: every message arrives intact, and idle connections read into slots", async () => {
  await using b = await startSecureBroker(pki, { general: { websocket: false } });
  // QoS 1 throughout: QoS 0 copies beyond the subscriber's write buffer would be dropped.
  await using sub = await subscriber(b.tlsPort, "tr/#", 1, {
    protocol: "mqtts" as const,
    clientId: "sub",
    ...clientTls(pki, pki.alice),
  });
  const slotsAtStart = readSlotsInUse();
  const installsAtStart = cipherBufferInstalls();
  const clients = 40;
  // Around the slot size, around the first own buffer, one that fills several 16 KiB reads,
  // and one larger than a 64 KiB TLS read.
  const sizes = [20, 120, 130, 900, 1100, 40_000, 100_000];
  const expected = new Map<string, string>();
  const sockets: tls.TLSSocket[] = [];
  try {
    await Promise.all(
      Array.from({ length: clients }, (_, i) =>
        new Promise<void>((resolve, reject) => {
          const s = tls.connect({
            host: "127.0.0.1",
            port: b.tlsPort,
            servername: "localhost",
            ...clientTls(pki, pki.alice),
          });
          s.on("secureConnect", () => {
            // MQTT 3.1.1 CONNECT (clean session, keep-alive 60) and every PUBLISH (QoS 1, packet
            // id k + 1) in one write.
            const parts = [frame(0x10, [...str("MQTT"), 4, 0x02, 0, 60, ...str(`tr-${i}`)])];
            sizes.forEach((size, k) => {
              const topic = `tr/${i}/${k}`;
              const body = payload(topic, size + i);
              expected.set(topic, body);
              parts.push(
                frame(0x32, [...str(topic), 0, k + 1, ...new TextEncoder().encode(body)]),
              );
            });
            s.write(concatBytes(parts));
            resolve();
          });
          s.on("error", reject);
          sockets.push(s);
        })),
    );
    const deadline = Date.now() + 20_000;
    while (sub.inbox.messages.length < expected.size && Date.now() < deadline) await delay(20);
    assert.equal(sub.inbox.messages.length, expected.size);
    for (const m of sub.inbox.messages) assert.equal(m.payload, expected.get(m.topic), m.topic);
    assert.equal(
      cipherBufferInstalls() - installsAtStart,
      clients,
      "every TLS connection reads its encrypted bytes into the shared buffer",
    );

    // A PINGREQ each: a 2-byte read moves a connection that grew its buffer back to a slot.
    // The answer is the last thing each client receives, after its CONNACK and PUBACKs.
    const pingresp = sockets.map((s) =>
      new Promise<void>((resolve) => {
        let tail: number[] = [];
        s.on("data", (d: Uint8Array) => {
          tail = [...tail, ...d].slice(-2);
          if (tail[0] === 0xd0 && tail[1] === 0) resolve();
        });
      })
    );
    for (const s of sockets) s.write(new Uint8Array([0xc0, 0]));
    const timeout = delay(5000).then(() => "timeout");
    assert.notEqual(await Promise.race([Promise.all(pingresp), timeout]), "timeout", "PINGRESP");
    assert.ok(
      readSlotsInUse() - slotsAtStart >= clients,
      `every idle TLS connection reads into a slot (${
        readSlotsInUse() - slotsAtStart
      } of ${clients})`,
    );
  } finally {
    for (const s of sockets) s.destroy();
  }
  const deadline = Date.now() + 5000;
  while (readSlotsInUse() > slotsAtStart && Date.now() < deadline) await delay(20);
  assert.equal(readSlotsInUse(), slotsAtStart, "closed TLS connections give their slots back");
});

Deno.test("a CONNECT sent in the same flight as the end of the TLS handshake is answered", async () => {
  // TLS 1.2 with a client certificate: the client's last handshake flight and its first
  // application data can reach the broker in one read, before the connection has its buffer.
  await using b = await startSecureBroker(pki, { general: { websocket: false } });
  const s = tls.connect({
    host: "127.0.0.1",
    port: b.tlsPort,
    servername: "localhost",
    maxVersion: "TLSv1.2",
    ...clientTls(pki, pki.alice),
  });
  try {
    // Written before the handshake completes: node:tls queues it and sends it right after the
    // client's Finished.
    s.write(frame(0x10, [...str("MQTT"), 4, 0x02, 0, 60, ...str("early")]));
    const answer = await nextData(s);
    assert.deepEqual([...answer.subarray(0, 4)], [0x20, 2, 0, 0], "CONNACK, accepted");
  } finally {
    s.destroy();
  }
});

Deno.test("secure WebSocket clients publishing large messages at once share the cipher buffer, and every message arrives intact", async () => {
  await using b = await startSecureBroker(pki, { listeners: { tcp: { enabled: false } } });
  const wss = (clientId: string) => ({
    protocol: "wss" as const,
    path: "/mqtt",
    clientId,
    ...clientTls(pki, pki.alice),
  });
  await using sub = await subscriber(b.wssPort, "wr/#", 1, wss("wsub"));
  const installsAtStart = cipherBufferInstalls();
  const clients = 8;
  const sizes = [30, 5_000, 70_000, 150_000];
  const pubs = await Promise.all(
    Array.from(
      { length: clients },
      (_, i) => subscriber(b.wssPort, `none/${i}`, 0, wss(`wp-${i}`)),
    ),
  );
  try {
    assert.equal(
      cipherBufferInstalls() - installsAtStart,
      clients,
      "every secure WebSocket connection reads its encrypted bytes into the shared buffer",
    );
    const expected = new Map<string, string>();
    await Promise.all(pubs.flatMap((p, i) =>
      sizes.map((size, k) => {
        const topic = `wr/${i}/${k}`;
        const body = payload(topic, size + i);
        expected.set(topic, body);
        return p.publishAsync(topic, body, { qos: 1 });
      })
    ));
    const deadline = Date.now() + 20_000;
    while (sub.inbox.messages.length < expected.size && Date.now() < deadline) await delay(20);
    assert.equal(sub.inbox.messages.length, expected.size);
    for (const m of sub.inbox.messages) assert.equal(m.payload, expected.get(m.topic), m.topic);
  } finally {
    await Promise.all(pubs.map((p) => p[Symbol.asyncDispose]()));
  }
});
