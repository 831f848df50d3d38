/**
 * limits.max_connections bounds the sockets a broker holds, not only the clients that sent
 * CONNECT: sockets that never speak (no CONNECT, no TLS handshake, no WebSocket upgrade) count
 * from accept. Once the broker holds max_connections and its margin (1 %, at least 16), a new
 * socket makes room by closing the oldest one not past CONNECT, on every listener; only when
 * every socket is past CONNECT (or answered and closing) is the new one closed at once. So
 * silent sockets can neither grow without bound nor keep clients out.
 */
import assert from "node:assert/strict";
import {
  collect,
  connectClient,
  delay,
  endClient,
  startBroker,
  startSecureBroker,
} from "../helpers/broker.ts";
import { clientTls, makeTestPki } from "../helpers/certs.ts";
import { RawWsClient } from "../helpers/ws_raw.ts";
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

Deno.test("silent TCP and WebSocket sockets count: past the limit the oldest one is closed to make room for a new socket", async () => {
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
    const m = b.broker.metrics;
    const [rejected, evicted] = [m.connectionsRejected, m.connectionsEvicted];
    const [tcp] = await openSilent(b.port, 1);
    await delay(100);
    const [ws] = await openSilent(wsPort, 1);
    // The two oldest made room; the new ones are in. Before, the new ones were closed at once
    // and the old ones kept every socket until their connect timeout (10 s).
    assert.equal(await fate(held[0]), "closed", "the oldest silent socket was not closed");
    assert.equal(await fate(held[1]), "closed", "the second oldest silent socket was not closed");
    assert.equal(await fate(tcp, 300), "open", "the new TCP socket was closed");
    assert.equal(await fate(ws, 300), "open", "the new WebSocket socket was closed");
    assert.equal(await fate(held[2], 100), "open");
    closeAll([tcp, ws]);
    assert.equal(m.connectionsEvicted - evicted, 2);
    assert.equal(m.connectionsRejected - rejected, 0);
  } finally {
    closeAll(held);
  }
  // Room again once they are gone.
  await delay(200);
  const c = await connectClient(b.port, { clientId: "after", protocolVersion: 5 });
  await endClient(c);
});

Deno.test("silent TLS sockets (no handshake) count: past the limit the oldest one makes room", async () => {
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
      await delay(100);
      const [wss] = await openSilent(b.wssPort, 1);
      assert.equal(await fate(held[0]), "closed", "the oldest silent TLS socket was held");
      assert.equal(await fate(held[1]), "closed", "the second oldest silent TLS socket was held");
      assert.equal(await fate(tls, 300), "open");
      assert.equal(await fate(wss, 300), "open");
      assert.equal(b.broker.metrics.socketsHeld, LIMIT);
      closeAll([tls, wss]);
    } finally {
      closeAll(held);
    }
    await delay(300);
    assert.equal(b.broker.metrics.socketsHeld, 0, "closed sockets are no longer counted");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a peer holding every socket with silent ones does not keep clients out: a client's TLS socket makes room, it connects and stays", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-socket-limit-" });
  try {
    const pki = await makeTestPki(dir);
    // The shipped defaults: TLS and secure WebSocket with client certificates.
    await using b = await startSecureBroker(pki, { limits: { max_connections: MAX } });
    let held = [...await openSilent(b.tlsPort, LIMIT)];
    try {
      await delay(200);
      // Before, this client's socket was closed at accept until the silent ones timed out.
      await using client = await connectClient(b.tlsPort, {
        protocol: "mqtts",
        ...clientTls(pki, pki.alice),
        clientId: "alice-1",
      });
      const inbox = collect(client);
      await client.subscribeAsync("room/#", { qos: 1 });
      // The peer goes on: another full set of silent sockets pushes out its own, not the client.
      held = [...held, ...await openSilent(b.tlsPort, LIMIT)];
      await delay(300);
      await client.publishAsync("room/x", "still here", { qos: 1 });
      assert.equal((await inbox.next(3000)).payload, "still here");
      assert.ok(b.broker.metrics.connectionsEvicted >= LIMIT, "silent sockets were not evicted");
    } finally {
      closeAll(held);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("TLS peers past their handshake but without CONNECT make room too: the oldest is closed, its connection ends", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-socket-limit-" });
  try {
    const pki = await makeTestPki(dir);
    await using b = await startSecureBroker(pki, {
      limits: { max_connections: MAX },
      listeners: { tcp: { client_certificate: "none" } },
      auth: { allow_anonymous: true },
    });
    const caCerts = [Deno.readTextFileSync(pki.ca.cert)];
    const held: Deno.TlsConn[] = [];
    try {
      for (let i = 0; i < LIMIT; i++) {
        const c = await Deno.connectTls({ hostname: "localhost", port: b.tlsPort, caCerts });
        await c.handshake();
        held.push(c);
      }
      await delay(200);
      const m = b.broker.metrics;
      assert.equal(m.connectionsByListener.tls, LIMIT, "every handshake made a connection");
      const late = await Deno.connectTls({ hostname: "localhost", port: b.tlsPort, caCerts });
      await late.handshake();
      assert.equal(await fate(held[0]), "closed", "the oldest connection without CONNECT stayed");
      assert.equal(await fate(late, 300), "open");
      await delay(200);
      assert.equal(m.connectionsByListener.tls, LIMIT, "the evicted connection still counts");
      closeAll([late]);
    } finally {
      closeAll(held);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("when every socket is past CONNECT or answered and closing, a new socket is closed at accept", async () => {
  await using b = await startBroker({
    general: { websocket: true },
    limits: { max_connections: MAX, close_linger_ms: 10_000 },
  });
  const wsPort = b.broker.addresses.find((a) => a.kind === "ws")!.port;
  const clients = [];
  for (let i = 0; i < MAX; i++) clients.push(await connectClient(b.port, { clientId: `in-${i}` }));
  // The margin: WebSocket clients over max_connections, refused with 0x97, which do not answer
  // the close that follows (their sockets linger, held, for close_linger_ms).
  const refused: RawWsClient[] = [];
  try {
    for (let i = 0; i < LIMIT - MAX; i++) {
      const ws = await RawWsClient.open(wsPort);
      refused.push(ws);
      await ws.sendPacket({
        cmd: "connect",
        protocolId: "MQTT",
        protocolVersion: 5,
        clientId: `over-${i}`,
        clean: true,
        keepalive: 0,
      });
      assert.equal((await ws.expect("connack")).reasonCode, 0x97);
    }
    const before = b.broker.metrics.connectionsRejected;
    const [late] = await openSilent(b.port, 1);
    assert.equal(await fate(late), "closed", "a socket over the limit was held");
    closeAll([late]);
    assert.equal(b.broker.metrics.connectionsRejected - before, 1);
  } finally {
    for (const ws of refused) ws.close();
    for (const c of clients) await endClient(c);
  }
});
