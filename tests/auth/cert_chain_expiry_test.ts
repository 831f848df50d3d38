/**
 * The certificate of the CA that issued a connected client's certificate expires before the
 * client's own: the handshake vouched for the client only while its whole chain was valid (a new
 * handshake is refused from then on), so the broker ends the connection then (DISCONNECT 0x87),
 * as it does at the client certificate's own notAfter (cert_expiry_test.ts).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import mqtt from "mqtt";
import { createCertificateAuthority, issueLeafCertificate } from "../../src/auth/certs.ts";
import { startSecureBroker } from "../helpers/broker.ts";
import { makeTestPki } from "../helpers/certs.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-cert-chain-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

Deno.test("a client whose issuing CA certificate expires while it is connected gets DISCONNECT 0x87 then", async () => {
  // X.509 keeps whole seconds: a few seconds of validity for the handshake below.
  const caExpires = Math.ceil((Date.now() + 4000) / 1000) * 1000;
  const shortCa = await createCertificateAuthority({
    commonName: "short-lived CA",
    notAfter: new Date(caExpires),
  });
  const leaf = await issueLeafCertificate(shortCa, { kind: "client", commonName: "c", days: 2 });
  // The broker trusts the test CA (its own certificate's) and the short-lived one.
  const bundle = join(dir, "bundle.pem");
  await Deno.writeTextFile(bundle, (await Deno.readTextFile(pki.ca.cert)) + shortCa.certPem);
  await using b = await startSecureBroker({ ca: { cert: bundle }, broker: pki.broker }, {
    limits: { sweep_interval_ms: 100 },
  });
  const c = mqtt.connect({
    protocol: "mqtts",
    host: "localhost",
    port: b.tlsPort,
    protocolVersion: 5,
    reconnectPeriod: 0,
    ca: await Deno.readTextFile(pki.ca.cert),
    cert: leaf.certPem,
    key: leaf.keyPem,
  });
  try {
    await new Promise<void>((resolve, reject) => {
      c.once("connect", () => resolve());
      c.once("error", reject);
    });
    const reason = await Promise.race([
      new Promise<number>((resolve) => c.once("disconnect", (p) => resolve(p.reasonCode ?? -1))),
      new Promise<string>((r) => setTimeout(() => r("none in 15 s"), 15_000)),
    ]);
    assert.equal(reason, 0x87);
    assert.ok(Date.now() >= caExpires - 1000, "disconnected before the CA certificate expired");
    assert.equal(b.broker.metrics.certificatesExpired, 1);
  } finally {
    c.end(true);
  }
});
