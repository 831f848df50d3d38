/**
 * MQTT over TLS with client certificates: the README's mosquitto commands, MQTT.js over mqtts,
 * and the certificates the secure default must refuse before any CONNACK.
 */
import assert from "node:assert/strict";
import tls from "node:tls";
import mqttPacket from "mqtt-packet";
import type { CertFiles } from "../../src/auth/certs.ts";
import { delay, startSecureBroker, subscriber } from "../helpers/broker.ts";
import { clientTls, makeTestPki } from "../helpers/certs.ts";
import {
  assertLateHandshakeClosed,
  assertServesGoodClients,
  assertStalledHandshakesCut,
  assertStopIgnoresSilentPeer,
  certRefusals,
} from "../helpers/secure_listener.ts";
import { mosquittoPub, requireBinary, skipWithout, spawn } from "../helpers/mosquitto.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-tls-test-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

/** MQTT.js options for mqtts with `client`'s certificate. */
function mqtts(client: CertFiles, clientId: string) {
  return { protocol: "mqtts" as const, clientId, ...clientTls(pki, client) };
}

interface Probe {
  /** Bytes the broker sent after the handshake (a CONNACK would start with 0x20). */
  received: Uint8Array;
  /** The connection closed on its own (rather than being cut by our timeout). */
  closed: boolean;
}

/** Opens TLS with `client`'s certificate (none if undefined), sends CONNECT and records the answer. */
function probe(port: number, client: CertFiles | undefined): Promise<Probe> {
  const connect = mqttPacket.generate({
    cmd: "connect",
    protocolId: "MQTT",
    protocolVersion: 5,
    clientId: "probe",
    clean: true,
    keepalive: 60,
  }, { protocolVersion: 5 });
  return new Promise((resolve) => {
    const socket = tls.connect({
      host: "127.0.0.1",
      port,
      servername: "localhost",
      ...clientTls(pki, client),
    });
    const chunks: Uint8Array[] = [];
    let closed = true;
    const timer = setTimeout(() => {
      closed = false;
      socket.destroy();
    }, 3000);
    socket.on("secureConnect", () => socket.write(connect));
    socket.on("data", (d: Uint8Array) => {
      chunks.push(new Uint8Array(d));
      // One answer is enough; closing ourselves keeps an accepting broker from holding us.
      socket.end();
    });
    socket.on("error", () => {
      // a refused handshake; 'close' follows
    });
    socket.on("close", () => {
      clearTimeout(timer);
      const received = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
      let off = 0;
      for (const c of chunks) {
        received.set(c, off);
        off += c.length;
      }
      resolve({ received, closed });
    });
  });
}

/**
 * Runs the README's mosquitto_sub and mosquitto_pub lines (client certificate `client`) and
 * returns how the subscriber ended. The subscriber may not have subscribed yet when the first
 * publish arrives, so the publish is repeated until the subscriber exits.
 */
async function readmeCommands(port: number, client: CertFiles, version: "5" | "311") {
  const tlsArgs = ["--cafile", pki.ca.cert, "--cert", client.cert, "--key", client.key];
  const target = ["-h", "localhost", "-p", `${port}`, "-t", "test"];
  await using sub = spawn(
    requireBinary("mosquitto_sub"),
    [...target, ...tlsArgs, "-V", version, "-C", "1", "-W", "10"],
  );
  let done = false;
  sub.done.finally(() => done = true);
  while (!done) {
    const pub = await mosquittoPub([...target, "-m", "test message", ...tlsArgs, "-V", version]);
    assert.equal(pub.code, 0, `mosquitto_pub failed: ${pub.stderr}`);
    await Promise.race([sub.done, delay(200)]);
  }
  return await sub.done;
}

for (const version of ["5", "311"] as const) {
  Deno.test({
    name: `README: mosquitto_sub -V ${version} over TLS with a client certificate receives ` +
      `what mosquitto_pub sends`,
    ignore: skipWithout("mosquitto_sub", "mosquitto_pub"),
    async fn() {
      await using b = await startSecureBroker(pki, { general: { websocket: false } });
      const result = await readmeCommands(b.tlsPort, pki.alice, version);
      assert.equal(result.code, 0, `mosquitto_sub failed: ${result.stderr}`);
      assert.equal(result.stdout, "test message\n");
    },
  });
}

Deno.test("MQTT.js over mqtts with client certificates exchanges QoS 1 messages", async () => {
  await using b = await startSecureBroker(pki, { general: { websocket: false } });
  await using alice = await subscriber(b.tlsPort, "tls/to-alice", 1, mqtts(pki.alice, "alice"));
  await using bob = await subscriber(b.tlsPort, "tls/to-bob", 1, mqtts(pki.bob, "bob"));
  await bob.publishAsync("tls/to-alice", "hi alice", { qos: 1 });
  await alice.publishAsync("tls/to-bob", "hi bob", { qos: 1 });
  const a = await alice.inbox.next();
  const m = await bob.inbox.next();
  assert.deepEqual([a.payload, a.packet.qos], ["hi alice", 1]);
  assert.deepEqual([m.payload, m.packet.qos], ["hi bob", 1]);
});

for (const r of certRefusals(pki)) {
  Deno.test({
    name: `a TLS client ${r.name} never gets a CONNACK, and the broker keeps serving others`,
    ignore: r.needs ? !r.needs() : false,
    async fn() {
      // The same client passes a listener that does not check certificates, so the refusal
      // below is the certificate check at work and not some other failure.
      {
        await using lax = await startSecureBroker(pki, {
          general: { websocket: false },
          listeners: { tcp: { client_certificate: "none" } },
          auth: { allow_anonymous: true },
        });
        const accepted = await probe(lax.tlsPort, r.client());
        assert.equal(accepted.received[0], 0x20, "the unchecked listener should send CONNACK");
      }
      await using b = await startSecureBroker(pki, { general: { websocket: false } });
      const refused = await probe(b.tlsPort, r.client());
      assert.equal(refused.received.length, 0, "the broker must not answer the CONNECT");
      assert.ok(refused.closed, "the broker must close the connection");
      await assertServesGoodClients(b.tlsPort, pki, mqtts);
    },
  });
}

Deno.test("stopping the broker does not wait for a peer that never finishes the TLS handshake", async () => {
  const b = await startSecureBroker(pki, { general: { websocket: false } });
  await assertStopIgnoresSilentPeer(b, b.tlsPort);
});

Deno.test("a TLS handshake that completes while the broker stops is closed at once", async () => {
  const b = await startSecureBroker(pki, { general: { websocket: false } });
  await assertLateHandshakeClosed(b, b.tlsPort, pki);
});

Deno.test("a TLS peer that never finishes its handshake is cut after limits.connect_timeout", async () => {
  // Deno's node:tls reports the handshake timeout (tlsClientError) but leaves the socket open.
  await using b = await startSecureBroker(pki, {
    general: { websocket: false },
    limits: { connect_timeout: 1 },
  });
  await assertStalledHandshakesCut(b.tlsPort, 4000);
});
