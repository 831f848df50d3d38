/**
 * MQTT over secure WebSocket with client certificates: MQTT.js over wss, the HTTP-level checks
 * (path, subprotocol), and the certificates the secure default must refuse before any CONNACK.
 */
import assert from "node:assert/strict";
import mqttPacket from "mqtt-packet";
import WebSocket from "ws";
import type { CertFiles } from "../../src/auth/certs.ts";
import { startSecureBroker, subscriber } from "../helpers/broker.ts";
import { clientTls, makeTestPki } from "../helpers/certs.ts";
import {
  assertLateHandshakeClosed,
  assertServesGoodClients,
  assertStalledHandshakesCut,
  assertStopIgnoresSilentPeer,
  certRefusals,
} from "../helpers/secure_listener.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-wss-test-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

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
    ...clientTls(pki, client),
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
    const ws = new WebSocket(`wss://localhost:${port}${path}`, protocols, clientTls(pki, client));
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

Deno.test("MQTT.js over wss with client certificates exchanges QoS 1 messages", async () => {
  await using b = await wssBroker();
  await using alice = await subscriber(b.wssPort, "wss/to-alice", 1, wss(pki.alice, "alice"));
  await using bob = await subscriber(b.wssPort, "wss/to-bob", 1, wss(pki.bob, "bob"));
  await bob.publishAsync("wss/to-alice", "hi alice", { qos: 1 });
  await alice.publishAsync("wss/to-bob", "hi bob", { qos: 1 });
  const a = await alice.inbox.next();
  const m = await bob.inbox.next();
  assert.deepEqual([a.payload, a.packet.qos], ["hi alice", 1]);
  assert.deepEqual([m.payload, m.packet.qos], ["hi bob", 1]);
});

Deno.test("a secure WebSocket connection outlives limits.connect_timeout once upgraded (the upgrade deadline is cleared)", async () => {
  await using b = await wssBroker({ limits: { connect_timeout: 1 } });
  await using alice = await subscriber(b.wssPort, "wss/late", 1, wss(pki.alice, "alice"));
  await new Promise((r) => setTimeout(r, 2_000));
  assert.equal(alice.connected, true);
  await alice.publishAsync("wss/late", "still here", { qos: 1 });
  assert.equal((await alice.inbox.next()).payload, "still here");
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

for (const r of certRefusals(pki)) {
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
      await assertServesGoodClients(b.wssPort, pki, wss);
    },
  });
}

Deno.test("stopping the broker does not wait for a WSS peer that never finishes the TLS handshake", async () => {
  const b = await wssBroker();
  await assertStopIgnoresSilentPeer(b, b.wssPort);
});

Deno.test("a WSS TLS handshake that completes while the broker stops is closed at once", async () => {
  const b = await wssBroker();
  await assertLateHandshakeClosed(b, b.wssPort, pki);
});

Deno.test("a WSS peer that never finishes its handshake is cut after limits.connect_timeout", async () => {
  // Deno's node:tls reports the handshake timeout (tlsClientError) but leaves the socket open.
  await using b = await wssBroker({ limits: { connect_timeout: 1 } });
  await assertStalledHandshakesCut(b.wssPort, 4000);
});
