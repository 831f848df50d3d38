/**
 * limits.connect_timeout bounds the whole time from a socket's accept to its CONNECT, on every
 * transport: a peer that spends most of it on its TLS handshake or WebSocket upgrade has only
 * the rest for CONNECT. Each step used to get a timeout of its own.
 */
import assert from "node:assert/strict";
import { makeTestPki } from "../helpers/certs.ts";
import { startSecureBroker } from "../helpers/broker.ts";
import { writeAll } from "../helpers/ws_raw.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-connect-deadline-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const caCert = Deno.readTextFileSync(pki.ca.cert);

const TIMEOUT_S = 3;
/** What each step before CONNECT takes: two of them already pass the timeout. */
const STEP_MS = 2000;

const UPGRADE = new TextEncoder().encode(
  "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
    "Sec-WebSocket-Protocol: mqtt\r\n\r\n",
);

/** The first two bytes of a CONNECT, and nothing after them. */
const CONNECT_START = new Uint8Array([0x10, 0x20]);
/** The same in a masked binary WebSocket frame (zero mask). */
const CONNECT_START_FRAME = new Uint8Array([0x82, 0x82, 0, 0, 0, 0, 0x10, 0x20]);

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Connects over TCP, then takes STEP_MS before each step: the TLS handshake (`tls`), the
 * WebSocket upgrade (`ws`), and the start of a CONNECT. Resolves with the milliseconds from the
 * TCP connect until the broker closed the socket.
 */
async function slowPeer(port: number, tls: boolean, ws: boolean): Promise<number> {
  const started = Date.now();
  let conn: Deno.Conn = await Deno.connect({ hostname: "127.0.0.1", port });
  let closedAt = 0;
  const watch = async (c: Deno.Conn) => {
    const buf = new Uint8Array(4096);
    try {
      for (let n; (n = await c.read(buf)) !== null;) {
        // A close frame (the broker then waits close_linger_ms for the answer), or the 101.
        if (n > 0 && buf[0] === 0x88) closedAt ||= Date.now();
      }
    } catch {
      // reset
    }
    closedAt ||= Date.now();
  };
  try {
    if (tls) {
      await delay(STEP_MS);
      conn = await Deno.startTls(conn as Deno.TcpConn, {
        hostname: "localhost",
        caCerts: [caCert],
      });
      await (conn as Deno.TlsConn).handshake();
    }
    const watching = watch(conn);
    for (const step of ws ? [UPGRADE, CONNECT_START_FRAME] : [CONNECT_START]) {
      await delay(STEP_MS);
      if (closedAt !== 0) break;
      await writeAll(conn, step).catch(() => {});
    }
    await Promise.race([watching, delay(4 * TIMEOUT_S * 1000)]);
  } catch {
    // a handshake or write the broker cut: the socket is closed
    closedAt ||= Date.now();
  } finally {
    try {
      conn.close();
    } catch {
      // closed already
    }
  }
  assert.ok(closedAt !== 0, "the broker never closed the socket");
  // A close frame, or the end of the stream, whichever came first.
  return closedAt - started;
}

for (
  const [name, tls, ws] of [["tls", true, false], ["ws", false, true], ["wss", true, true]] as const
) {
  Deno.test(`${name}: a peer slow in every step before CONNECT is cut limits.connect_timeout after its accept`, async () => {
    await using b = await startSecureBroker(pki, {
      general: { secure: tls },
      listeners: {
        tcp: { client_certificate: tls ? "none" : "auto" },
        ws: { client_certificate: tls ? "none" : "auto" },
      },
      auth: { allow_anonymous: true },
      limits: { connect_timeout: TIMEOUT_S, sweep_interval_ms: 100 },
    });
    const took = await slowPeer(ws ? b.wssPort : b.tlsPort, tls, ws);
    // Before, each step had a timeout of its own: the handshake, then the upgrade, then CONNECT
    // (tls and ws cut after 5 s, wss after 7 s; with the default 10 s, a wss peer stayed 29.6 s).
    assert.ok(
      took < TIMEOUT_S * 1000 + 1000,
      `closed ${took} ms after the TCP connect (connect_timeout ${TIMEOUT_S} s)`,
    );
  });
}
