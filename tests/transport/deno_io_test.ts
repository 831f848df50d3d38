/**
 * The TCP transport reads and writes a socket by its resource id through Deno's core (an idle
 * connection then holds no Deno.Conn: ~1.2 kB less JS heap each, see src/transport/deno_io.ts),
 * and through the Deno.Conn's public methods when the id cannot be found. Both paths carry the
 * same bytes both ways, half-close with `end`, and report the peer's close.
 */
import assert from "node:assert/strict";
import { rawIo, resourceId } from "../../src/transport/deno_io.ts";
import { TcpConnection } from "../../src/transport/tcp.ts";
import { socketPair } from "../helpers/sockets.ts";
import type { ConnectionHandler } from "../../src/transport/types.ts";

Deno.test("the pinned Deno offers the core resource functions the TCP transport uses", () => {
  // Without them every idle connection costs ~1.2 kB more: a Deno upgrade that removes or
  // renames them must show up here, not only in a memory benchmark.
  assert.ok(rawIo !== null, "Deno[Deno.internal].core read/write/shutdown/close not found");
});

/** A Deno.Conn that hides its resource id: the transport must use the public methods. */
function withoutRid(conn: Deno.TcpConn): Deno.TcpConn {
  return {
    get remoteAddr() {
      return conn.remoteAddr;
    },
    get localAddr() {
      return conn.localAddr;
    },
    read: (b: Uint8Array) => conn.read(b),
    write: (b: Uint8Array) => conn.write(b),
    close: () => conn.close(),
    closeWrite: () => conn.closeWrite(),
  } as unknown as Deno.TcpConn;
}

class Recorder implements ConnectionHandler {
  received: number[] = [];
  closedCalls = 0;
  private waiting: (() => void) | null = null;
  readonly readGate = null;

  data(chunk: Uint8Array, length: number): void {
    for (let i = 0; i < length; i++) this.received.push(chunk[i]);
    this.waiting?.();
  }

  closed(): void {
    this.closedCalls++;
    this.waiting?.();
  }

  /** Resolves once `pred` holds (checked after each event); fails after 5 s. */
  async until(pred: () => boolean, what: string): Promise<void> {
    const deadline = Date.now() + 5000;
    while (!pred()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((r) => {
        this.waiting = r;
        setTimeout(r, 50);
      });
    }
  }
}

async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const parts: number[] = [];
  const buf = new Uint8Array(1024);
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) return Uint8Array.from(parts);
    for (let i = 0; i < n; i++) parts.push(buf[i]);
  }
}

for (
  const [name, wrap] of [["by resource id", (c: Deno.TcpConn) => c], [
    "by the Deno.Conn's methods",
    withoutRid,
  ]] as const
) {
  Deno.test(`a TCP connection read and written ${name} carries bytes both ways and ends cleanly`, async () => {
    const pair = await socketPair();
    const client = pair.near;
    const accepted = pair.far;
    const conn = wrap(accepted);
    assert.equal(resourceId(conn) === -1, conn !== accepted, "which path is taken");
    // A linger longer than the wait below: the end must come from the peer's close, not the timer.
    const tcp = new TcpConnection(conn, 30_000);
    const rec = new Recorder();
    try {
      const local = client.localAddr as Deno.NetAddr;
      assert.equal(tcp.remoteAddress, `${local.hostname}:${local.port}`);
      tcp.start(rec);
      // More than a read slot, so the read buffer grows on the way.
      const sent = Uint8Array.from({ length: 3000 }, (_, i) => (i * 7) & 0xff);
      await client.write(sent);
      await rec.until(() => rec.received.length >= sent.length, "the client's bytes");
      assert.deepEqual(Uint8Array.from(rec.received), sent);
      const reply = new TextEncoder().encode("reply");
      let written = 0;
      while (written < reply.length) {
        const n = await tcp.write(reply.subarray(written));
        written += n;
      }
      tcp.end();
      // end() half-closes: the client reads the reply and then the end of the stream.
      assert.deepEqual(await readAll(client), reply);
      assert.equal(rec.closedCalls, 0, "still reading after the half-close");
      client.close();
      await rec.until(() => rec.closedCalls > 0, "the peer's close");
      assert.equal(rec.closedCalls, 1);
    } finally {
      tcp.close();
      pair.close();
    }
  });
}
