/**
 * The certificates a TLS listener sends in its handshake. With client certificates off the
 * listener sends `certfile` and the intermediates of `cafile` that lead up from it, not the
 * root (the client trusts it already): openssl's `s_client -showcerts` counts them, as a client
 * sees them on the wire. An intermediate that only `cafile` holds is still sent, so a client
 * trusting the root alone verifies the broker.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { issueLeafCertificate, type PemPair } from "../../src/auth/certs.ts";
import { servedChain } from "../../src/auth/cert_chain.ts";
import { PEM_CERT } from "../../src/auth/cert_check.ts";
import { connectClient, startSecureBroker } from "../helpers/broker.ts";
import { haveBinary, makeTestPki } from "../helpers/certs.ts";
import { openssl, opensslOrThrow } from "../helpers/openssl.ts";

const HAVE_OPENSSL = await haveBinary("openssl");
const dir = await Deno.makeTempDir({ prefix: "mcloudtt-tls-chain-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const pki = await makeTestPki(dir);
const read = (path: string) => Deno.readTextFileSync(path);
const root: PemPair = { certPem: read(pki.ca.cert), keyPem: read(pki.ca.key) };

/** An intermediate CA under the test root, made by openssl (CA:TRUE, may sign certificates). */
async function intermediateCa(): Promise<PemPair> {
  const key = join(dir, "int.key");
  const csr = join(dir, "int.csr");
  const crt = join(dir, "int.crt");
  const ext = join(dir, "int.ext");
  await Deno.writeTextFile(
    ext,
    "[v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n" +
      "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
  );
  await opensslOrThrow([
    "req",
    "-new",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    key,
    "-subj",
    "/CN=mcloudtt test intermediate",
    "-out",
    csr,
  ]);
  await opensslOrThrow([
    "x509",
    "-req",
    "-in",
    csr,
    "-CA",
    pki.ca.cert,
    "-CAkey",
    pki.ca.key,
    "-set_serial",
    "7",
    "-days",
    "2",
    "-extfile",
    ext,
    "-extensions",
    "v3",
    "-out",
    crt,
  ]);
  return { certPem: read(crt), keyPem: read(key) };
}

/** A server certificate for localhost issued by a fresh intermediate under the test root. */
async function leafUnderIntermediate(): Promise<{ int: PemPair; leaf: PemPair }> {
  const int = await intermediateCa();
  const leaf = await issueLeafCertificate(int, {
    kind: "server",
    commonName: "localhost",
    sans: ["localhost", "127.0.0.1"],
    days: 2,
  });
  return { int, leaf };
}

/** The certificates the server at `port` sends, as openssl sees them, and whether they verify. */
async function served(port: number, trust: string): Promise<{ count: number; out: string }> {
  const r = await openssl([
    "s_client",
    "-connect",
    `127.0.0.1:${port}`,
    "-servername",
    "localhost",
    "-showcerts",
    "-CAfile",
    trust,
    "-verify_return_error",
  ]);
  assert.match(r.out, /Verify return code: 0 \(ok\)/, r.out);
  return { count: r.out.match(/-----BEGIN CERTIFICATE-----/g)?.length ?? 0, out: r.out };
}

const certsOff = {
  general: { websocket: true },
  listeners: {
    tcp: { client_certificate: "none" as const },
    ws: { client_certificate: "none" as const },
  },
  auth: { allow_anonymous: true },
};

Deno.test({
  name: "without client certificates a TLS listener sends its own certificate, not the CA",
  ignore: !HAVE_OPENSSL,
  async fn() {
    await using b = await startSecureBroker(pki, certsOff);
    const tls = await served(b.tlsPort, pki.ca.cert);
    assert.equal(tls.count, 1, tls.out);
    assert.match(tls.out, /0 s:CN ?= ?localhost/);
    // The secure WebSocket listener takes the same options.
    const wss = await served(b.wssPort, pki.ca.cert);
    assert.equal(wss.count, 1, wss.out);
  },
});

Deno.test({
  name: "an intermediate that only cafile holds is sent: a client trusting the root connects",
  ignore: !HAVE_OPENSSL,
  async fn() {
    const { int, leaf } = await leafUnderIntermediate();
    const certfile = join(dir, "leaf.crt");
    const keyfile = join(dir, "leaf.key");
    const cafile = join(dir, "int-and-root.crt");
    await Deno.writeTextFile(certfile, leaf.certPem);
    await Deno.writeTextFile(keyfile, leaf.keyPem);
    await Deno.writeTextFile(cafile, int.certPem + root.certPem);
    await using b = await startSecureBroker(pki, {
      ...certsOff,
      tls: { certfile, keyfile, cafile },
    });
    const s = await served(b.tlsPort, pki.ca.cert);
    assert.equal(s.count, 2, s.out);
    assert.match(s.out, /1 s:CN ?= ?mcloudtt test intermediate/);
    // An MQTT client that trusts only the root: the handshake verifies and a CONNACK comes.
    await using c = await connectClient(b.tlsPort, {
      protocol: "mqtts",
      ca: root.certPem,
      servername: "localhost",
      rejectUnauthorized: true,
    });
    assert.ok(c.connected);
  },
});

Deno.test("servedChain: the leaf alone under a root, the intermediates of cafile, never the root", async () => {
  const leafUnderRoot = read(pki.broker.cert);
  assert.equal(servedChain(leafUnderRoot, root.certPem), leafUnderRoot);
  if (!HAVE_OPENSSL) return;
  const { int, leaf } = await leafUnderIntermediate();
  const blocks = (pem: string) => pem.match(PEM_CERT);
  // The intermediate comes from cafile, in either order of cafile.
  for (const ca of [int.certPem + root.certPem, root.certPem + int.certPem]) {
    assert.deepEqual(blocks(servedChain(leaf.certPem, ca)), blocks(leaf.certPem + int.certPem));
  }
  // A certfile that carries its intermediate already gets nothing more.
  const full = leaf.certPem + int.certPem;
  assert.equal(servedChain(full, int.certPem + root.certPem), full);
  // A self-signed certfile, an unrelated cafile, and text that does not parse stay as they are.
  assert.equal(servedChain(root.certPem, int.certPem), root.certPem);
  assert.equal(servedChain(leafUnderRoot, read(pki.otherCa.cert)), leafUnderRoot);
  assert.equal(servedChain("not a certificate", root.certPem), "not a certificate");
});

Deno.test({
  name: "after a certificate reload a listener without client certificates serves the new chain",
  ignore: !HAVE_OPENSSL,
  async fn() {
    // Files the broker reads; first the leaf issued by the root, then one issued by an
    // intermediate that only the new cafile holds.
    const certfile = join(dir, "live.crt");
    const keyfile = join(dir, "live.key");
    const cafile = join(dir, "live-ca.crt");
    await Deno.copyFile(pki.broker.cert, certfile);
    await Deno.copyFile(pki.broker.key, keyfile);
    await Deno.copyFile(pki.ca.cert, cafile);
    await using b = await startSecureBroker(pki, {
      ...certsOff,
      general: { ...certsOff.general, cert_reload_interval: 3600 },
      tls: { certfile, keyfile, cafile },
    });
    assert.equal((await served(b.tlsPort, pki.ca.cert)).count, 1);
    const { int, leaf } = await leafUnderIntermediate();
    await Deno.writeTextFile(certfile, leaf.certPem);
    await Deno.writeTextFile(keyfile, leaf.keyPem);
    await Deno.writeTextFile(cafile, int.certPem + root.certPem);
    await b.broker.reload();
    for (const port of [b.tlsPort, b.wssPort]) {
      const s = await served(port, pki.ca.cert);
      assert.equal(s.count, 2, s.out);
      assert.match(s.out, /1 s:CN ?= ?mcloudtt test intermediate/);
    }
  },
});
