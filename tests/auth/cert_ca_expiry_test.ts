/**
 * A CA certificate of tls.cafile that expires while the broker runs. Deno's verifier does not
 * check a trust anchor's own validity: without the broker's own check, the clients it issued
 * would go on connecting, and those connected would stay, for good. At its notAfter (seen at the
 * next file poll, general.cert_reload_interval) it leaves the trusted list: new handshakes of its
 * clients fail and their connections are closed; the clients of the other CAs are not touched.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import type { IClientOptions } from "mqtt";
import { createCertificateAuthority, issueLeafCertificate } from "../../src/auth/certs.ts";
import { connackOf, connectClient, startSecureBroker } from "../helpers/broker.ts";
import { clientTls, makeTestPki } from "../helpers/certs.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-ca-expiry-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

Deno.test("a client CA of tls.cafile that expires: its clients are closed and refused from then on, the other CA's stay", async () => {
  // X.509 keeps whole seconds: a few seconds of validity for the handshakes below.
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
    general: { cert_reload_interval: 1 },
  });
  const ca = await Deno.readTextFile(pki.ca.cert);
  const short: IClientOptions = { ca, cert: leaf.certPem, key: leaf.keyPem, port: b.tlsPort };
  const tls = { protocol: "mqtts", host: "localhost" } as const;
  const c = await connectClient(b.tlsPort, { ...tls, ...short, clientId: "short" });
  const other = await connectClient(b.tlsPort, {
    ...tls,
    ...clientTls(pki, pki.alice),
    clientId: "alice",
  });
  try {
    const closed = await Promise.race([
      new Promise<string>((resolve) => c.once("close", () => resolve("closed"))),
      new Promise<string>((r) => setTimeout(() => r("still open after 15 s"), 15_000)),
    ]);
    assert.equal(closed, "closed");
    assert.ok(Date.now() >= caExpires - 1000, "closed before the CA certificate expired");
    // A certificate it issued is refused: by the handshake once the poll took the CA out, or,
    // before that poll, at CONNECT with 0x87 (the chain's earliest notAfter has passed: the
    // connection above was closed for the same reason). The other CA's client is served.
    const again = await connackOf(b.tlsPort, { ...short, protocol: "mqtts", host: "localhost" });
    assert.ok(again instanceof Error || again === 0x87, `connected again: CONNACK ${again}`);
    assert.ok(other.connected);
    await other.publishAsync("t", "x", { qos: 1 });
    assert.equal(
      await connackOf(b.tlsPort, {
        ...clientTls(pki, pki.bob),
        protocol: "mqtts",
        host: "localhost",
      }),
      0,
    );
  } finally {
    c.end(true);
    await other.endAsync();
  }
});
