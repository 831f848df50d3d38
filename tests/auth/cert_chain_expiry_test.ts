/**
 * A client certificate whose issuing intermediate CA expires before it does: the handshake
 * vouched for the chain only until the earliest notAfter in it, so the broker ends the
 * connection when the intermediate expires (MQTT 5: DISCONNECT 0x87), not at the leaf's own
 * notAfter a day later. The intermediate is the client's to present (only the root is in
 * cafile), so no change of cafile tells the broker.
 */
import assert from "node:assert/strict";
import { issueLeafCertificate, type PemPair } from "../../src/auth/certs.ts";
import { connectClient, startSecureBroker } from "../helpers/broker.ts";
import { issueIntermediate, makeTestPki } from "../helpers/certs.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-chain-expiry-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const read = (path: string) => Deno.readTextFileSync(path);

Deno.test("a client whose intermediate CA expires while connected gets DISCONNECT 0x87 then, though its own certificate lasts a day", async () => {
  await using b = await startSecureBroker(pki, {
    listeners: { tcp: { client_certificate: "required" } },
  });
  const root: PemPair = { certPem: read(pki.ca.cert), keyPem: read(pki.ca.key) };
  // X.509 keeps whole seconds: at least 2 s of validity left for the handshake.
  const validFor = 4000;
  const issuedAt = Date.now();
  const intermediate = await issueIntermediate(root, new Date(issuedAt + validFor));
  const leaf = await issueLeafCertificate(intermediate, {
    kind: "client",
    commonName: "carol",
    days: 1,
  });
  const tlsOpts = {
    ca: read(pki.ca.cert),
    cert: `${leaf.certPem.trim()}\n${intermediate.certPem.trim()}\n`,
    key: leaf.keyPem,
  };
  const common = { protocol: "mqtts" as const, host: "localhost", port: b.tlsPort };
  const carol = await connectClient(b.tlsPort, { ...common, clientId: "carol", ...tlsOpts });
  const alice = await connectClient(b.tlsPort, {
    ...common,
    clientId: "alice",
    ca: read(pki.ca.cert),
    cert: read(pki.alice.cert),
    key: read(pki.alice.key),
  });
  try {
    const disconnect = new Promise<number>((resolve) => {
      carol.on("disconnect", (p) => resolve(p.reasonCode ?? -1));
    });
    const reason = await Promise.race([
      disconnect,
      new Promise<string>((r) => setTimeout(() => r("none in 15 s"), 15_000)),
    ]);
    assert.equal(reason, 0x87);
    // Not before the intermediate's notAfter (kept in whole seconds, so up to 1 s before it).
    assert.ok(Date.now() >= issuedAt + validFor - 1000, "disconnected before the chain expired");
    assert.equal(b.broker.metrics.certificatesExpired, 1);
    // A client whose chain is valid stays.
    assert.ok(alice.connected);
    await alice.publishAsync("still/here", "x", { qos: 1 });
  } finally {
    carol.end(true);
    await alice.endAsync();
  }
});
