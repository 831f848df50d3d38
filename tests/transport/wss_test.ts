/**
 * MQTT over secure WebSocket with client certificates: MQTT.js over wss, the HTTP-level checks
 * (path, subprotocol), and the certificates the secure default must refuse before any CONNACK.
 */
import assert from "node:assert/strict";
import tls from "node:tls";
import mqttPacket from "mqtt-packet";
import WebSocket from "ws";
import type { CertFiles } from "../../src/auth/certs.ts";
import { collect, connectClient, delay, startSecureBroker } from "../helpers/broker.ts";
import { makeTestPki } from "../helpers/certs.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-wss-test-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

const read = (path: string) => Deno.readTextFileSync(path);

/** Only the WSS listener, with the secure defaults unless `extra` changes them. */
function wssBroker(extra: Parameters<typeof startSecureBroker>[1] = {}) {
  return startSecureBroker(pki, {
    ...extra,
    listeners: { tcp: { enabled: false }, ...extra.listeners },
  });
}

/** MQTT.js options for wss://127.0.0.1:port/mqtt with `client`'s certificate. */
function wss(client: CertFiles, clientId: string) {
  return {
    protocol: "wss" as const,
    path: "/mqtt",
    clientId,
    ca: read(pki.ca.cert),
    cert: read(client.cert),
    key: read(client.key),
  };
}

interface Probe {
  /** HTTP status when the upgrade was answered with something other than 101. */
  status?: number;
  /** The WebSocket opened. */
  opened: boolean;
  /** The subprotocol the broker selected. */
  protocol?: string;
  /** Bytes received over the WebSocket (a CONNACK would start with 0x20). */
  received: number[];
  /** The connection ended on its own (rather than being cut by our timeout). */
  closed: boolean;
}

/** Opens a WebSocket to `path` offering `protocols`, sends CONNECT and records the answer. */
function probe(
  port: number,
  client: CertFiles | undefined,
  { path = "/mqtt", protocols = ["mqtt"] }: { path?: string; protocols?: string[] } = {},
): Promise<Probe> {
  const connect = mqttPacket.generate({
    cmd: "connect",
    protocolId: "MQTT",
    protocolVersion: 5,
    clientId: "probe",
    clean: true,
    keepalive: 60,
  }, { protocolVersion: 5 });
  return new Promise((resolve) => {
    const ws = new WebSocket(`wss://localhost:${port}${path}`, protocols, {
      ca: read(pki.ca.cert),
      ...(client ? { cert: read(client.cert), key: read(client.key) } : {}),
    });
    const result: Probe = { opened: false, received: [], closed: true };
    let settled = false;
    const finish = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(result);
    };
    const timer = setTimeout(() => {
      result.closed = false;
      ws.terminate();
      finish();
    }, 3000);
    ws.on("open", () => {
      result.opened = true;
      result.protocol = ws.protocol;
      ws.send(connect);
    });
    ws.on("message", (data: Buffer) => {
      result.received.push(...data);
      ws.close();
    });
    ws.on("unexpected-response", (req, res) => {
      result.status = res.statusCode;
      res.resume();
      req.destroy();
      finish();
    });
    ws.on("error", () => {
      // a refused handshake; 'close' follows unless the upgrade was answered
    });
    ws.on("close", finish);
  });
}

/** A good client still gets through: alice subscribes, bob publishes at QoS 1. */
async function assertServesGoodClients(port: number): Promise<void> {
  await using alice = await connectClient(port, wss(pki.alice, "alice-after"));
  await using bob = await connectClient(port, wss(pki.bob, "bob-after"));
  const inbox = collect(alice);
  await alice.subscribeAsync("after/refusal", { qos: 1 });
  await bob.publishAsync("after/refusal", "still here", { qos: 1 });
  assert.equal((await inbox.next()).payload, "still here");
}

Deno.test("MQTT.js over wss with client certificates exchanges QoS 1 messages", async () => {
  await using b = await wssBroker();
  await using alice = await connectClient(b.wssPort, wss(pki.alice, "alice"));
  await using bob = await connectClient(b.wssPort, wss(pki.bob, "bob"));
  const aliceInbox = collect(alice);
  const bobInbox = collect(bob);
  await alice.subscribeAsync("wss/to-alice", { qos: 1 });
  await bob.subscribeAsync("wss/to-bob", { qos: 1 });
  await bob.publishAsync("wss/to-alice", "hi alice", { qos: 1 });
  await alice.publishAsync("wss/to-bob", "hi bob", { qos: 1 });
  const a = await aliceInbox.next();
  const m = await bobInbox.next();
  assert.deepEqual([a.payload, a.packet.qos], ["hi alice", 1]);
  assert.deepEqual([m.payload, m.packet.qos], ["hi bob", 1]);
});

Deno.test("a secure WebSocket negotiates mqtt (or mqttv3.1) and answers CONNECT [MQTT-6.0.0-4]", async () => {
  await using b = await wssBroker();
  const ok = await probe(b.wssPort, pki.alice, { protocols: ["chat", "mqtt"] });
  assert.equal(ok.protocol, "mqtt");
  assert.equal(ok.received[0], 0x20);
  const old = await probe(b.wssPort, pki.alice, { protocols: ["mqttv3.1"] });
  assert.equal(old.protocol, "mqttv3.1");
  assert.equal(old.received[0], 0x20);
});

Deno.test("a secure WebSocket on another path gets 404", async () => {
  await using b = await wssBroker();
  const r = await probe(b.wssPort, pki.alice, { path: "/elsewhere" });
  assert.equal(r.status, 404);
  assert.equal(r.opened, false);
});

Deno.test("a secure WebSocket offering only a non-MQTT subprotocol is refused", async () => {
  await using b = await wssBroker();
  const r = await probe(b.wssPort, pki.alice, { protocols: ["chat"] });
  assert.equal(r.status, 400);
  assert.equal(r.opened, false);
});

const refusals: { name: string; client: () => CertFiles | undefined; needs?: () => boolean }[] = [
  { name: "without a client certificate", client: () => undefined },
  { name: "with a certificate from another CA", client: () => pki.otherCaClient },
  { name: "with an expired certificate", client: () => pki.expired },
  { name: "with an X.509 v1 certificate", client: () => pki.v1, needs: () => pki.v1 !== undefined },
];

for (const r of refusals) {
  Deno.test({
    name: `a WSS client ${r.name} never gets a CONNACK, and the broker keeps serving others`,
    ignore: r.needs ? !r.needs() : false,
    async fn() {
      // The same client passes a listener that does not check certificates, so the refusal
      // below is the certificate check at work and not some other failure.
      {
        await using lax = await wssBroker({
          listeners: { ws: { client_certificate: "none" } },
          auth: { allow_anonymous: true },
        });
        const accepted = await probe(lax.wssPort, r.client());
        assert.equal(accepted.received[0], 0x20, "the unchecked listener should send CONNACK");
      }
      await using b = await wssBroker();
      const refused = await probe(b.wssPort, r.client());
      assert.equal(refused.opened, false, "the WebSocket must not open");
      assert.deepEqual(refused.received, [], "the broker must not answer the CONNECT");
      assert.ok(refused.closed, "the broker must end the connection");
      await assertServesGoodClients(b.wssPort);
    },
  });
}

/** Milliseconds until `p` settles, or "hang" after `limitMs`. */
async function timed(p: Promise<unknown>, limitMs: number): Promise<number | "hang"> {
  const start = Date.now();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const limit = new Promise<"hang">((r) => timer = setTimeout(() => r("hang"), limitMs));
  try {
    return await Promise.race([p.then(() => Date.now() - start), limit]);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("stopping the broker does not wait for a WSS peer that never finishes the TLS handshake", async () => {
  const b = await wssBroker();
  const silent = await Deno.connect({ hostname: "127.0.0.1", port: b.wssPort });
  try {
    // Let the server see the connection; it then waits for a ClientHello that never comes.
    await delay(50);
    assert.notEqual(await timed(b.stop(), 5000), "hang", "stop() waited for the silent peer");
  } finally {
    silent.close();
    await b.stop();
  }
});

Deno.test("a WSS TLS handshake that completes while the broker stops is closed at once", async () => {
  const b = await wssBroker();
  let stopping: Promise<void> = Promise.resolve();
  let stopAt = 0;
  let closedAt = 0;
  const socket = tls.connect({
    host: "127.0.0.1",
    port: b.wssPort,
    servername: "localhost",
    ca: read(pki.ca.cert),
    cert: read(pki.alice.cert),
    key: read(pki.alice.key),
  });
  socket.on("error", () => {});
  const closed = new Promise<void>((resolve) =>
    socket.on("close", () => {
      closedAt = Date.now();
      resolve();
    })
  );
  // The server finishes this handshake after stop() began; no HTTP request ever follows.
  socket.on("secureConnect", () => {
    stopAt = Date.now();
    stopping = b.stop();
  });
  try {
    assert.notEqual(await timed(closed, 5000), "hang", "the late connection was never closed");
    // Well inside the listener's 1 s grace for stuck handshakes: the listener closed it itself.
    assert.ok(closedAt - stopAt < 900, `closed ${closedAt - stopAt} ms after stop()`);
    assert.notEqual(await timed(stopping, 5000), "hang", "stop() never finished");
  } finally {
    socket.destroy();
    await b.stop();
  }
});
