/**
 * A client certificate that expires while its client is connected: the handshake vouched for
 * the identity only until the certificate's notAfter, so the broker ends the connection then
 * (MQTT 5: DISCONNECT 0x87), over mqtts and wss, and counts it. Clients with valid
 * certificates stay connected.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import type { MqttClient } from "mqtt";
import { join } from "node:path";
import { type CertFiles, issueLeafCertificate, type PemPair } from "../../src/auth/certs.ts";
import { connectClient, startSecureBroker } from "../helpers/broker.ts";
import { clientTls, makeTestPki, type TestPki } from "../helpers/certs.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-cert-expiry-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

/** A client certificate from the broker's CA that expires `ms` from now. */
async function expiringIn(p: TestPki, name: string, ms: number): Promise<CertFiles> {
  const ca: PemPair = {
    certPem: await Deno.readTextFile(p.ca.cert),
    keyPem: await Deno.readTextFile(p.ca.key),
  };
  const pair = await issueLeafCertificate(ca, {
    kind: "client",
    commonName: name,
    notAfter: new Date(Date.now() + ms),
  });
  const files = { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
  await Deno.writeTextFile(files.cert, pair.certPem);
  await Deno.writeTextFile(files.key, pair.keyPem);
  return files;
}

Deno.test("a client whose certificate expires while connected gets DISCONNECT 0x87 then, over mqtts and wss; others stay", async () => {
  await using b = await startSecureBroker(pki, {
    listeners: { tcp: { client_certificate: "required" }, ws: { client_certificate: "required" } },
  });
  const transports = [
    { name: "mqtts", port: b.tlsPort, extra: {} },
    { name: "wss", port: b.wssPort, extra: { path: "/mqtt" } },
  ] as const;
  // X.509 keeps whole seconds: at least 2 s of validity left for the handshakes below.
  const validFor = 4000;
  const brief = await Promise.all(
    transports.map((t) => expiringIn(pki, `brief-${t.name}`, validFor)),
  );
  const issuedAt = Date.now();
  const clients: {
    short: MqttClient;
    long: MqttClient;
    disconnect: Promise<number>;
    will: Promise<string>;
  }[] = [];
  for (const [i, t] of transports.entries()) {
    const common = { protocol: t.name, host: "localhost", port: t.port, ...t.extra };
    const long = await connectClient(t.port, {
      ...common,
      clientId: `long-${t.name}`,
      ...clientTls(pki, pki.alice),
    });
    // The client that stays hears the other's will: the broker ended that connection.
    const will = new Promise<string>((resolve) => {
      long.on("message", (topic, payload) => {
        if (topic === `wills/${t.name}`) resolve(payload.toString());
      });
    });
    await long.subscribeAsync(`wills/${t.name}`, { qos: 1 });
    const short = await connectClient(t.port, {
      ...common,
      clientId: `short-${t.name}`,
      ...clientTls(pki, brief[i]),
      will: { topic: `wills/${t.name}`, payload: Buffer.from("gone"), qos: 1, retain: false },
    });
    const disconnect = new Promise<number>((resolve) => {
      short.on("disconnect", (p) => resolve(p.reasonCode ?? -1));
    });
    clients.push({ short, long, disconnect, will });
  }
  try {
    for (const c of clients) {
      const reason = await Promise.race([
        c.disconnect,
        new Promise<string>((r) => setTimeout(() => r("none in 15 s"), 15_000)),
      ]);
      assert.equal(reason, 0x87);
      assert.equal(await c.will, "gone");
    }
    // Not before the certificate's notAfter (kept in whole seconds, so up to 1 s before it).
    assert.ok(
      Date.now() >= issuedAt + validFor - 1000,
      "disconnected before the certificate expired",
    );
    assert.equal(b.broker.metrics.certificatesExpired, transports.length);
    // The clients with valid certificates are still served.
    for (const c of clients) {
      assert.ok(c.long.connected);
      await c.long.publishAsync("still/here", "x", { qos: 1 });
    }
  } finally {
    for (const c of clients) {
      c.short.end(true);
      await c.long.endAsync();
    }
  }
});
