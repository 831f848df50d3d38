/**
 * limits.max_connections bounds the sockets a broker holds, not only the clients that sent
 * CONNECT: sockets that never speak (no CONNECT, no TLS handshake, no WebSocket upgrade) count
 * from accept, and once the broker holds max_connections and its margin (1 %, at least 16) a
 * new socket is closed at once, on every listener, instead of being held until its deadline.
 */
import assert from "node:assert/strict";
import {
  connectClient,
  delay,
  endClient,
  startBroker,
  startSecureBroker,
} from "../helpers/broker.ts";
import { makeTestPki } from "../helpers/certs.ts";
import { socketLimit } from "../../src/session/admission.ts";

const MAX = 4;
const LIMIT = socketLimit(MAX);

/** How a socket that sent nothing ended within `ms`: "closed" (EOF or reset) or "open". */
async function fate(conn: Deno.Conn, ms = 2000): Promise<"closed" | "open"> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<"open">((r) => timer = setTimeout(() => r("open"), ms));
  const read = conn.read(new Uint8Array(64)).then(
    (n) => (n === null ? "closed" as const : "open" as const),
    () => "closed" as const,
  );
  try {
    return await Promise.race([read, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function openSilent(port: number, n: number): Promise<Deno.Conn[]> {
  const conns: Deno.Conn[] = [];
  for (let i = 0; i < n; i++) conns.push(await Deno.connect({ hostname: "127.0.0.1", port }));
  return conns;
}

function closeAll(conns: Deno.Conn[]): void {
  for (const c of conns) {
    try {
      c.close();
    } catch {
      // the broker closed it
    }
  }
}

Deno.test("the margin over max_connections is 1 % of it, at least 16", () => {
  assert.equal(socketLimit(4), 20);
  assert.equal(socketLimit(100_000), 101_000);
});

Deno.test("silent TCP and WebSocket sockets count: past the limit a new socket is closed at accept", async () => {
  await using b = await startBroker({
    general: { websocket: true },
    limits: { max_connections: MAX },
  });
  const wsPort = b.broker.addresses.find((a) => a.kind === "ws")!.port;
  // Half the room on each listener; none sends a byte (no CONNECT, no upgrade request).
  const held = [
    ...await openSilent(b.port, LIMIT / 2),
    ...await openSilent(wsPort, LIMIT / 2),
  ];
  try {
    await delay(200);
    const before = b.broker.metrics.connectionsRejected;
    const [tcp] = await openSilent(b.port, 1);
    const [ws] = await openSilent(wsPort, 1);
    // Without the bound both would stay open until connect_timeout (10 s).
    assert.equal(await fate(tcp), "closed", "a TCP socket past the limit was held");
    assert.equal(await fate(ws), "closed", "a WebSocket socket past the limit was held");
    closeAll([tcp, ws]);
    assert.equal(b.broker.metrics.connectionsRejected - before, 2);
    // The ones let in are still open: the bound closes new sockets, not old ones.
    assert.equal(await fate(held[0], 200), "open");
    assert.equal(await fate(held[held.length - 1], 200), "open");
  } finally {
    closeAll(held);
  }
  // Room again once they are gone.
  await delay(200);
  const c = await connectClient(b.port, { clientId: "after", protocolVersion: 5 });
  await endClient(c);
});

Deno.test("silent TLS sockets (no handshake) count: past the limit a new one is closed at accept", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-socket-limit-" });
  try {
    const pki = await makeTestPki(dir);
    await using b = await startSecureBroker(pki, { limits: { max_connections: MAX } });
    const held = [
      ...await openSilent(b.tlsPort, LIMIT / 2),
      ...await openSilent(b.wssPort, LIMIT / 2),
    ];
    try {
      await delay(200);
      const [tls] = await openSilent(b.tlsPort, 1);
      const [wss] = await openSilent(b.wssPort, 1);
      assert.equal(await fate(tls), "closed", "a TLS socket past the limit was held");
      assert.equal(await fate(wss), "closed", "a secure WebSocket socket past the limit was held");
      closeAll([tls, wss]);
      assert.equal(b.broker.metrics.socketsHeld, LIMIT);
    } finally {
      closeAll(held);
    }
    await delay(300);
    assert.equal(b.broker.metrics.socketsHeld, 0, "closed sockets are no longer counted");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
