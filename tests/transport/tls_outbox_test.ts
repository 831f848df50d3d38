/**
 * The outbox over node:tls sockets (what the TLS listener writes through): the socket's write
 * callback is what frees a pooled write buffer, so buffers shared between TLS connections must
 * never mix their bytes, and a peer that goes away must end in `writeFailed`, not a crash.
 */
import assert from "node:assert/strict";
import tls from "node:tls";
import type { AddressInfo } from "node:net";
import { Outbox } from "../../src/protocol/outbox.ts";
import { socketSink } from "../../src/transport/tls.ts";
import { directTlsWrites } from "../../src/transport/tls_write.ts";
import { makeTestPki } from "../helpers/certs.ts";
import {
  assertPooledWritesDoNotMix,
  pattern,
  RecordingOwner as Owner,
} from "../helpers/outbox_traffic.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-tls-outbox-test-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

interface TlsPair {
  /** The server's side, written through socketSink. */
  server: tls.TLSSocket;
  /** The client's side. */
  client: tls.TLSSocket;
}

/** `n` connected TLS pairs on 127.0.0.1 with the test PKI's server certificate. */
async function tlsPairs(n: number): Promise<{ pairs: TlsPair[]; close(): Promise<void> }> {
  const servers: tls.TLSSocket[] = [];
  let arrived: () => void = () => {};
  const all = new Promise<void>((r) => (arrived = r));
  const server = tls.createServer({
    cert: Deno.readTextFileSync(pki.broker.cert),
    key: Deno.readTextFileSync(pki.broker.key),
  }, (s) => {
    servers.push(s);
    if (servers.length === n) arrived();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  const ca = Deno.readTextFileSync(pki.ca.cert);
  const clients: tls.TLSSocket[] = [];
  for (let i = 0; i < n; i++) {
    const c = tls.connect({ host: "127.0.0.1", port, ca, servername: "localhost" });
    await new Promise<void>((r, j) => c.once("secureConnect", r).once("error", j));
    clients.push(c);
  }
  await all;
  // Accepted in order of the handshakes, which the loop above ran one at a time.
  const pairs = clients.map((client, i) => ({ server: servers[i], client }));
  return {
    pairs,
    async close() {
      for (const p of pairs) {
        p.client.destroy();
        p.server.destroy();
      }
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Everything `socket` receives until `n` bytes arrived (or 15 s passed). */
function readExactly(socket: tls.TLSSocket, n: number): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const out = new Uint8Array(n);
    let have = 0;
    const timer = setTimeout(() => reject(new Error(`only ${have} of ${n} bytes arrived`)), 15_000);
    socket.on("data", (chunk: Uint8Array) => {
      out.set(chunk.subarray(0, Math.min(chunk.length, n - have)), have);
      have += chunk.length;
      if (have >= n) {
        clearTimeout(timer);
        resolve(out);
      }
    });
  });
}

Deno.test("over TLS, pooled write buffers shared by connections never mix their bytes", async () => {
  const { pairs, close } = await tlsPairs(3);
  try {
    const owners = pairs.map(() => new Owner());
    const outboxes = pairs.map((p, k) => new Outbox(socketSink(p.server, 0), owners[k]));
    const directBefore = directTlsWrites();
    await assertPooledWritesDoNotMix(outboxes, (k, n) => readExactly(pairs[k].client, n));
    for (const o of owners) {
      assert.equal(o.failure, null);
      assert.ok(o.drains > 0, "every completed write was reported");
    }
    // Every completed write was one straight to the TLS handle (tls_write.ts), none through
    // node's Writable: each drain reports one.
    const drains = owners.reduce((n, o) => n + o.drains, 0);
    assert.equal(directTlsWrites() - directBefore, drains, "writes went straight to the handle");
  } finally {
    await close();
  }
});

Deno.test("over TLS, writing to a peer that went away ends in writeFailed", async () => {
  const { pairs, close } = await tlsPairs(1);
  try {
    const owner = new Owner();
    const outbox = new Outbox(socketSink(pairs[0].server, 0), owner);
    pairs[0].client.destroy();
    // The server socket learns of the reset from a write or a read; keep writing until it does.
    const deadline = Date.now() + 10_000;
    while (owner.failure === null && !outbox.closed && Date.now() < deadline) {
      outbox.push(pattern(1024, 1));
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    assert.ok(owner.failure instanceof Error, `writeFailed with an Error, got ${owner.failure}`);
    assert.ok(outbox.closed, "the outbox refuses further packets");
  } finally {
    await close();
  }
});

/** `n` bytes (a multiple of 4) numbering themselves: 4-byte words 0, 1, 2, ... (no period). */
function counting(n: number): Uint8Array {
  const b = new Uint8Array(n);
  const v = new DataView(b.buffer);
  for (let i = 0; i < n; i += 4) v.setUint32(i, i >> 2);
  return b;
}

Deno.test("over TLS, a 2 MiB write arrives whole, in order, within a few event-loop turns", async () => {
  const { pairs, close } = await tlsPairs(1);
  try {
    const size = 2 * 1024 * 1024;
    const sent = counting(size);
    const arrived = readExactly(pairs[0].client, size);
    const sink = socketSink(pairs[0].server, 0);
    let turns = 0;
    let settled: unknown = undefined;
    const written = new Promise<void>((resolve) => {
      sink.writeThen!(sent, (r) => {
        settled = r;
        resolve();
      });
    });
    let counting_ = true;
    const tick = () => {
      if (!counting_) return;
      turns++;
      setImmediate(tick);
    };
    setImmediate(tick);
    await written;
    counting_ = false;
    assert.equal(settled ?? null, null, "the write completed without an error");
    const got = await arrived;
    assert.equal(got.length, size);
    // Word by word, so a lost or repeated piece names where it happened.
    const a = new DataView(got.buffer);
    for (let i = 0; i < size; i += 4) {
      if (a.getUint32(i) !== i >> 2) {
        assert.fail(`byte ${i}: word ${a.getUint32(i)}, expected ${i >> 2}`);
      }
    }
    // The runtime sends 48 KiB of a TLS write per turn (tls_write.ts): 43 turns at least for
    // 2 MiB when the write is handed over whole. In pieces, what the socket takes at once.
    assert.ok(turns < 20, `the write took ${turns} event-loop turns`);
  } finally {
    await close();
  }
});
