/**
 * MQTT over TLS with client certificates: the README's mosquitto commands, MQTT.js over mqtts,
 * and the certificates the secure default must refuse before any CONNACK.
 */
import assert from "node:assert/strict";
import tls from "node:tls";
import mqttPacket from "mqtt-packet";
import type { CertFiles } from "../../src/auth/certs.ts";
import { collect, connectClient, delay, startSecureBroker } from "../helpers/broker.ts";
import { makeTestPki } from "../helpers/certs.ts";
import { mosquittoPub, requireBinary, skipWithout, spawn } from "../helpers/mosquitto.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-tls-test-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

const read = (path: string) => Deno.readTextFileSync(path);

/** MQTT.js options for mqtts with `client`'s certificate. */
function mqtts(client: CertFiles, clientId: string) {
  return {
    protocol: "mqtts" as const,
    clientId,
    ca: read(pki.ca.cert),
    cert: read(client.cert),
    key: read(client.key),
  };
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
      ca: read(pki.ca.cert),
      ...(client ? { cert: read(client.cert), key: read(client.key) } : {}),
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

/** A good client still gets through: alice subscribes, bob publishes at QoS 1. */
async function assertServesGoodClients(port: number): Promise<void> {
  await using alice = await connectClient(port, mqtts(pki.alice, "alice-after"));
  await using bob = await connectClient(port, mqtts(pki.bob, "bob-after"));
  const inbox = collect(alice);
  await alice.subscribeAsync("after/refusal", { qos: 1 });
  await bob.publishAsync("after/refusal", "still here", { qos: 1 });
  assert.equal((await inbox.next()).payload, "still here");
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
  await using alice = await connectClient(b.tlsPort, mqtts(pki.alice, "alice"));
  await using bob = await connectClient(b.tlsPort, mqtts(pki.bob, "bob"));
  const aliceInbox = collect(alice);
  const bobInbox = collect(bob);
  await alice.subscribeAsync("tls/to-alice", { qos: 1 });
  await bob.subscribeAsync("tls/to-bob", { qos: 1 });
  await bob.publishAsync("tls/to-alice", "hi alice", { qos: 1 });
  await alice.publishAsync("tls/to-bob", "hi bob", { qos: 1 });
  const a = await aliceInbox.next();
  const m = await bobInbox.next();
  assert.deepEqual([a.payload, a.packet.qos], ["hi alice", 1]);
  assert.deepEqual([m.payload, m.packet.qos], ["hi bob", 1]);
});

const refusals: { name: string; client: () => CertFiles | undefined; needs?: () => boolean }[] = [
  { name: "without a client certificate", client: () => undefined },
  { name: "with a certificate from another CA", client: () => pki.otherCaClient },
  { name: "with an expired certificate", client: () => pki.expired },
  { name: "with an X.509 v1 certificate", client: () => pki.v1, needs: () => pki.v1 !== undefined },
];

for (const r of refusals) {
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
      await assertServesGoodClients(b.tlsPort);
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

Deno.test("stopping the broker does not wait for a peer that never finishes the TLS handshake", async () => {
  const b = await startSecureBroker(pki, { general: { websocket: false } });
  const silent = await Deno.connect({ hostname: "127.0.0.1", port: b.tlsPort });
  try {
    // Let the server see the connection; it then waits for a ClientHello that never comes.
    await delay(50);
    const took = await timed(b.stop(), 5000);
    assert.notEqual(took, "hang", "stop() waited for the silent peer");
  } finally {
    silent.close();
    await b.stop();
  }
});

Deno.test("a TLS handshake that completes while the broker stops is closed at once", async () => {
  const b = await startSecureBroker(pki, { general: { websocket: false } });
  let stopping: Promise<void> = Promise.resolve();
  let stopAt = 0;
  let closedAt = 0;
  const socket = tls.connect({
    host: "127.0.0.1",
    port: b.tlsPort,
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
  // In TLS 1.3 the client is done before the server has checked its certificate, so the
  // server hands this connection to the broker only after stop() has begun.
  socket.on("secureConnect", () => {
    stopAt = Date.now();
    stopping = b.stop();
  });
  try {
    assert.notEqual(await timed(closed, 5000), "hang", "the late connection was never closed");
    // Well inside the listener's 1 s grace for stuck handshakes: the broker closed it itself.
    assert.ok(closedAt - stopAt < 900, `closed ${closedAt - stopAt} ms after stop()`);
    assert.notEqual(await timed(stopping, 5000), "hang", "stop() never finished");
  } finally {
    socket.destroy();
    await b.stop();
  }
});
