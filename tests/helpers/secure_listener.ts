/**
 * What the TLS and the secure WebSocket listener tests check alike: which client certificates
 * the secure default refuses, that a refusal leaves the broker serving good clients, and that
 * stopping the broker is not held up by TLS handshakes.
 */
import assert from "node:assert/strict";
import tls from "node:tls";
import type { IClientOptions } from "mqtt";
import type { CertFiles } from "../../src/auth/certs.ts";
import { connectClient, delay, type SecureTestBroker, subscriber } from "./broker.ts";
import { clientTls, type TestPki } from "./certs.ts";

/** A client certificate (or none) that a listener requiring client certificates must refuse. */
export interface CertRefusal {
  name: string;
  client: () => CertFiles | undefined;
  /** False when the certificate could not be made here (the test is then ignored). */
  needs?: () => boolean;
}

/** Every client certificate the secure default refuses before any CONNACK. */
export function certRefusals(pki: TestPki): CertRefusal[] {
  return [
    { name: "without a client certificate", client: () => undefined },
    { name: "with a certificate from another CA", client: () => pki.otherCaClient },
    { name: "with an expired certificate", client: () => pki.expired },
    {
      name: "with an X.509 v1 certificate",
      client: () => pki.v1,
      needs: () => pki.v1 !== undefined,
    },
  ];
}

/**
 * A good client still gets through: alice subscribes, bob publishes at QoS 1. `options` gives
 * the MQTT.js options (transport and certificate) of a client.
 */
export async function assertServesGoodClients(
  port: number,
  pki: TestPki,
  options: (client: CertFiles, clientId: string) => IClientOptions,
): Promise<void> {
  await using alice = await subscriber(port, "after/refusal", 1, options(pki.alice, "alice-after"));
  await using bob = await connectClient(port, options(pki.bob, "bob-after"));
  await bob.publishAsync("after/refusal", "still here", { qos: 1 });
  assert.equal((await alice.inbox.next()).payload, "still here");
}

/** Milliseconds until `p` settles, or "hang" after `limitMs`. */
export async function timed(p: Promise<unknown>, limitMs: number): Promise<number | "hang"> {
  const start = Date.now();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const limit = new Promise<"hang">((r) => timer = setTimeout(() => r("hang"), limitMs));
  try {
    return await Promise.race([p.then(() => Date.now() - start), limit]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Stops `b` while a peer connected to `port` never sends its ClientHello: stop() must not wait
 * for it.
 */
export async function assertStopIgnoresSilentPeer(
  b: SecureTestBroker,
  port: number,
): Promise<void> {
  const silent = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    // Let the server see the connection; it then waits for a ClientHello that never comes.
    await delay(50);
    assert.notEqual(await timed(b.stop(), 5000), "hang", "stop() waited for the silent peer");
  } finally {
    silent.close();
    await b.stop();
  }
}

/**
 * Peers on `port` that never finish the TLS handshake, one silent and one trickling a ClientHello
 * a byte at a time, are cut within `limitMs` (the listener's handshake bound plus slack), so idle
 * sockets cannot hold `max_connections` slots and file descriptors for ever.
 */
export async function assertStalledHandshakesCut(port: number, limitMs: number): Promise<void> {
  const silent = await Deno.connect({ hostname: "127.0.0.1", port });
  const trickling = await Deno.connect({ hostname: "127.0.0.1", port });
  const readUntilClosed = async (c: Deno.Conn) => {
    const buf = new Uint8Array(256);
    try {
      while ((await c.read(buf)) !== null);
    } catch {
      // A reset counts as closed.
    }
  };
  const silentClosed = timed(readUntilClosed(silent), limitMs);
  const trickleClosed = timed(readUntilClosed(trickling), limitMs);
  // A TLS record header announcing a 512-byte ClientHello, then its body a byte every 200 ms.
  const hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
  let done = false;
  const trickle = (async () => {
    for (let i = 0; !done; i++) {
      try {
        await trickling.write(new Uint8Array([i < hello.length ? hello[i] : 7]));
      } catch {
        return;
      }
      await delay(200);
    }
  })();
  try {
    const [s, t] = await Promise.all([silentClosed, trickleClosed]);
    assert.notEqual(s, "hang", "a peer that never sent a ClientHello is still connected");
    assert.notEqual(t, "hang", "a peer trickling its ClientHello is still connected");
  } finally {
    done = true;
    await trickle;
    silent.close();
    trickling.close();
  }
}

/**
 * Stops `b` the moment alice's TLS handshake on `port` completes: the broker must close that
 * late connection itself, well inside the listener's 1 s grace for stuck handshakes.
 */
export async function assertLateHandshakeClosed(
  b: SecureTestBroker,
  port: number,
  pki: TestPki,
): Promise<void> {
  let stopping: Promise<void> = Promise.resolve();
  let stopAt = 0;
  let closedAt = 0;
  const socket = tls.connect({
    host: "127.0.0.1",
    port,
    servername: "localhost",
    ...clientTls(pki, pki.alice),
  });
  socket.on("error", () => {});
  const closed = new Promise<void>((resolve) =>
    socket.on("close", () => {
      closedAt = Date.now();
      resolve();
    })
  );
  // In TLS 1.3 the client is done before the server has checked its certificate, so the
  // server hands this connection on only after stop() has begun (and over WSS no HTTP
  // request ever follows).
  socket.on("secureConnect", () => {
    stopAt = Date.now();
    stopping = b.stop();
  });
  try {
    assert.notEqual(await timed(closed, 5000), "hang", "the late connection was never closed");
    assert.ok(closedAt - stopAt < 900, `closed ${closedAt - stopAt} ms after stop()`);
    assert.notEqual(await timed(stopping, 5000), "hang", "stop() never finished");
  } finally {
    socket.destroy();
    await b.stop();
  }
}
