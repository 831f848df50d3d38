import assert from "node:assert/strict";
import { join } from "node:path";
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import {
  type CertFiles,
  CertsError,
  createCertificateAuthority,
  generateCertificates,
  issueClientCertificate,
  issueLeafCertificate,
} from "../../src/auth/certs.ts";
import { haveBinary } from "../helpers/certs.ts";
import { withTempDir } from "../helpers/fs.ts";
import { openssl } from "../helpers/openssl.ts";

const HAVE_OPENSSL = await haveBinary("openssl");
const DAY_MS = 24 * 60 * 60 * 1000;

async function opensslText(cert: string): Promise<string> {
  const { ok, out } = await openssl(["x509", "-in", cert, "-noout", "-text"]);
  assert.ok(ok, out);
  return out;
}

/** The "X509v3 <name>" block of `openssl x509 -text`: the header line and the value line. */
function extension(text: string, name: string): string {
  const match = text.match(new RegExp(`X509v3 ${name}:( critical)?\\s*\\n\\s*(.*)`));
  assert.ok(match, `missing X509v3 ${name} in\n${text}`);
  return `${match[1] ? "critical " : ""}${match[2].trim()}`;
}

Deno.test("generateCertificates writes the gen-keys.sh layout with owner-only PKCS#8 keys", async () => {
  await withTempDir(async (dir) => {
    const result = await generateCertificates({ dir });
    const expected = [
      "ca.crt",
      "ca.key",
      "broker/broker.crt",
      "broker/broker.key",
      "client/client.crt",
      "client/client.key",
    ].map((p) => join(dir, p));
    assert.deepEqual([...result.written].sort(), [...expected].sort());
    assert.equal(result.ca.reused, false);
    assert.deepEqual(result.clients.map((c) => c.name), ["client"]);
    for (const path of expected) {
      const text = await Deno.readTextFile(path);
      if (path.endsWith(".key")) {
        assert.match(text, /^-----BEGIN PRIVATE KEY-----\n/);
        if (Deno.build.os !== "windows") {
          assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600, path);
        }
      } else {
        assert.match(text, /^-----BEGIN CERTIFICATE-----\n/);
      }
    }
  });
});

Deno.test({
  name: "generated certificates are X.509 v3 with the extensions rustls and OpenSSL expect",
  ignore: !HAVE_OPENSSL,
  fn: () =>
    withTempDir(async (dir) => {
      const r = await generateCertificates({
        dir,
        brokerNames: ["mqtt.example.com", "10.1.2.3", "fd00::7"],
        clients: ["alice"],
      });
      const ca = await opensslText(r.ca.cert);
      const broker = await opensslText(r.broker.cert);
      const client = await opensslText(r.clients[0].cert);
      for (const text of [ca, broker, client]) {
        assert.match(text, /Version: 3 \(0x2\)/);
        assert.match(text, /Signature Algorithm: ecdsa-with-SHA256/);
        assert.match(text, /NIST CURVE: P-256/);
      }
      assert.equal(extension(ca, "Basic Constraints"), "critical CA:TRUE");
      assert.equal(extension(ca, "Key Usage"), "critical Certificate Sign, CRL Sign");
      const caSki = extension(ca, "Subject Key Identifier");

      assert.equal(extension(broker, "Basic Constraints"), "critical CA:FALSE");
      assert.equal(extension(broker, "Key Usage"), "critical Digital Signature, Key Encipherment");
      assert.equal(extension(broker, "Extended Key Usage"), "TLS Web Server Authentication");
      assert.equal(
        extension(broker, "Subject Alternative Name"),
        "DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, " +
          "DNS:mqtt.example.com, IP Address:10.1.2.3, IP Address:FD00:0:0:0:0:0:0:7",
      );
      assert.match(broker, /Subject: CN = mqtt\.example\.com/);
      assert.equal(extension(broker, "Authority Key Identifier"), caSki);
      assert.match(extension(broker, "Subject Key Identifier"), /^([0-9A-F]{2}:){19}[0-9A-F]{2}$/);

      assert.match(client, /Subject: CN = alice/);
      assert.equal(extension(client, "Basic Constraints"), "critical CA:FALSE");
      assert.equal(extension(client, "Key Usage"), "critical Digital Signature");
      assert.equal(extension(client, "Extended Key Usage"), "TLS Web Client Authentication");
      assert.equal(extension(client, "Authority Key Identifier"), caSki);
      assert.doesNotMatch(client, /Subject Alternative Name/);
    }),
});

Deno.test({
  name: "openssl verify accepts the broker and client certificates for their purposes",
  ignore: !HAVE_OPENSSL,
  fn: () =>
    withTempDir(async (dir) => {
      const r = await generateCertificates({ dir, clients: ["client", "bob"] });
      const all = await openssl([
        "verify",
        "-CAfile",
        r.ca.cert,
        r.broker.cert,
        ...r.clients.map((c) => c.cert),
      ]);
      assert.ok(all.ok, all.out);
      const server = await openssl([
        "verify",
        "-purpose",
        "sslserver",
        "-CAfile",
        r.ca.cert,
        r.broker.cert,
      ]);
      assert.ok(server.ok, server.out);
      const client = await openssl([
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        r.ca.cert,
        r.clients[0].cert,
      ]);
      assert.ok(client.ok, client.out);
      // The purposes are real restrictions: a client certificate is no server certificate.
      const wrong = await openssl([
        "verify",
        "-purpose",
        "sslserver",
        "-CAfile",
        r.ca.cert,
        r.clients[0].cert,
      ]);
      assert.equal(wrong.ok, false, wrong.out);
    }),
});

Deno.test({
  name: "every private key matches its certificate",
  ignore: !HAVE_OPENSSL,
  fn: () =>
    withTempDir(async (dir) => {
      const r = await generateCertificates({ dir });
      const pairs: CertFiles[] = [r.ca, r.broker, ...r.clients];
      const publicKeys: string[] = [];
      for (const files of pairs) {
        const fromCert = await openssl(["x509", "-in", files.cert, "-noout", "-pubkey"]);
        const fromKey = await openssl(["pkey", "-in", files.key, "-pubout"]);
        assert.ok(fromCert.ok && fromKey.ok, fromCert.out + fromKey.out);
        assert.equal(fromKey.out, fromCert.out, files.key);
        publicKeys.push(fromKey.out);
      }
      assert.equal(new Set(publicKeys).size, pairs.length, "each certificate has its own key");
    }),
});

Deno.test("validity: leaf default 825 days, CA 10 years, backdated for clock skew, --days respected", async () => {
  await withTempDir(async (dir) => {
    const before = Date.now();
    const r = await generateCertificates({ dir });
    const ca = new x509.X509Certificate(await Deno.readTextFile(r.ca.cert));
    const broker = new x509.X509Certificate(await Deno.readTextFile(r.broker.cert));
    const days = (c: x509.X509Certificate) => Math.round((c.notAfter.getTime() - before) / DAY_MS);
    assert.equal(days(ca), 3650);
    assert.equal(days(broker), 825);
    for (const cert of [ca, broker]) {
      assert.ok(cert.notBefore.getTime() < before - 60_000, "notBefore lies in the past");
      assert.ok(cert.notBefore.getTime() > before - DAY_MS, "but only slightly");
    }
    const c = await issueClientCertificate({ dir, name: "short", days: 30 });
    const short = new x509.X509Certificate(await Deno.readTextFile(c.cert));
    assert.equal(days(short), 30);
  });
});

Deno.test("serial numbers are positive and differ between certificates", async () => {
  const ca = await createCertificateAuthority();
  const leaves = await Promise.all(
    [1, 2, 3].map(() => issueLeafCertificate(ca, { kind: "client", commonName: "x" })),
  );
  const serials = [ca, ...leaves].map((p) => new x509.X509Certificate(p.certPem).serialNumber);
  assert.equal(new Set(serials).size, serials.length);
  for (const serial of serials) {
    assert.ok(parseInt(serial.slice(0, 2), 16) < 0x80, `negative serial ${serial}`);
    assert.ok(BigInt(`0x${serial}`) > 0n);
  }
});

Deno.test("refuses to overwrite existing files and then writes nothing", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "broker"), { recursive: true });
    await Deno.writeTextFile(join(dir, "broker", "broker.crt"), "precious");
    const error = await generateCertificates({ dir }).then(() => undefined, (e) => e);
    assert.ok(error instanceof CertsError);
    assert.equal(error.code, "exists");
    assert.match(error.message, /broker\.crt/);
    assert.equal(await Deno.readTextFile(join(dir, "broker", "broker.crt")), "precious");
    const left = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(left, ["broker"], "no CA was written either");
  });
});

Deno.test({
  name: "an existing CA is reused, and the new leaves chain to it",
  ignore: !HAVE_OPENSSL,
  fn: () =>
    withTempDir(async (dir) => {
      const first = await generateCertificates({ dir });
      const caBefore = await Deno.readTextFile(first.ca.cert);
      const brokerBefore = await Deno.readTextFile(first.broker.cert);
      const second = await generateCertificates({ dir, overwrite: true });
      assert.equal(second.ca.reused, true);
      assert.ok(!second.written.includes(second.ca.cert));
      assert.equal(await Deno.readTextFile(second.ca.cert), caBefore);
      assert.notEqual(await Deno.readTextFile(second.broker.cert), brokerBefore);
      const v = await openssl(["verify", "-CAfile", second.ca.cert, second.broker.cert]);
      assert.ok(v.ok, v.out);
    }),
});

Deno.test({
  name: "an RSA CA made by openssl (as gen-keys.sh did) can issue client certificates",
  ignore: !HAVE_OPENSSL,
  fn: () =>
    withTempDir(async (dir) => {
      const ca = { cert: join(dir, "ca.crt"), key: join(dir, "ca.key") };
      const made = await openssl([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        ca.key,
        "-out",
        ca.cert,
        "-subj",
        "/CN=operator CA",
        "-days",
        "2",
      ]);
      assert.ok(made.ok, made.out);
      const files = await issueClientCertificate({ dir, name: "dave", san: ["spiffe://x/dave"] });
      const v = await openssl(["verify", "-purpose", "sslclient", "-CAfile", ca.cert, files.cert]);
      assert.ok(v.ok, v.out);
      const text = await opensslText(files.cert);
      assert.match(text, /Signature Algorithm: sha256WithRSAEncryption/);
      assert.equal(extension(text, "Subject Alternative Name"), "URI:spiffe://x/dave");
      // openssl computes the CA's SKI itself; the leaf's AKI must repeat it for chain building.
      assert.equal(
        extension(text, "Authority Key Identifier"),
        extension(await opensslText(ca.cert), "Subject Key Identifier"),
      );
    }),
});

Deno.test({
  name: "a CA key in SEC1 'EC PRIVATE KEY' form is refused with a conversion hint",
  ignore: !HAVE_OPENSSL,
  fn: () =>
    withTempDir(async (dir) => {
      const ca = { cert: join(dir, "ca.crt"), key: join(dir, "ca.key") };
      const key = await openssl(["ecparam", "-genkey", "-name", "prime256v1", "-noout"]);
      assert.ok(key.ok && key.out.includes("BEGIN EC PRIVATE KEY"), key.out);
      await Deno.writeTextFile(ca.key, key.out);
      const made = await openssl([
        "req",
        "-x509",
        "-key",
        ca.key,
        "-out",
        ca.cert,
        "-subj",
        "/CN=sec1 CA",
        "-days",
        "2",
      ]);
      assert.ok(made.ok, made.out);
      const error = await issueClientCertificate({ dir, name: "x" }).then(
        () => undefined,
        (e) => e,
      );
      assert.ok(error instanceof CertsError);
      assert.equal(error.code, "unsupported-key");
      assert.match(error.message, /openssl pkcs8 -topk8/);
    }),
});

Deno.test("a CA key that does not belong to ca.crt is refused before anything is written", async () => {
  await withTempDir(async (dir) => {
    await generateCertificates({ dir });
    const stranger = await createCertificateAuthority();
    await Deno.writeTextFile(join(dir, "ca.key"), stranger.keyPem);
    const error = await issueClientCertificate({ dir, name: "eve" }).then(
      () => undefined,
      (e) => e,
    );
    assert.ok(error instanceof CertsError);
    assert.equal(error.code, "ca-key-mismatch");
    await assert.rejects(Deno.stat(join(dir, "client", "eve.crt")), Deno.errors.NotFound);
  });
});

Deno.test("half a CA (ca.crt without ca.key) is refused unless forced", async () => {
  await withTempDir(async (dir) => {
    const first = await generateCertificates({ dir });
    const oldCa = await Deno.readTextFile(first.ca.cert);
    await Deno.remove(first.ca.key);
    const error = await generateCertificates({ dir }).then(() => undefined, (e) => e);
    assert.ok(error instanceof CertsError);
    assert.equal(error.code, "ca-incomplete");
    const forced = await generateCertificates({ dir, overwrite: true });
    assert.equal(forced.ca.reused, false);
    assert.notEqual(await Deno.readTextFile(forced.ca.cert), oldCa);
  });
});

Deno.test("issueClientCertificate needs a CA and a file-safe name", async () => {
  await withTempDir(async (dir) => {
    const noCa = await issueClientCertificate({ dir, name: "alice" }).then(
      () => undefined,
      (e) => e,
    );
    assert.ok(noCa instanceof CertsError);
    assert.equal(noCa.code, "ca-missing");
    await generateCertificates({ dir });
    for (const name of ["../evil", "", ".hidden", "a/b", "CN=x,O=y"]) {
      const bad = await issueClientCertificate({ dir, name }).then(() => undefined, (e) => e);
      assert.ok(bad instanceof CertsError, name);
      assert.equal(bad.code, "invalid-name");
    }
    const files = await issueClientCertificate({ dir, name: "alice", san: ["alice@example.com"] });
    assert.equal(files.cert, join(dir, "client", "alice.crt"));
    const cert = new x509.X509Certificate(await Deno.readTextFile(files.cert));
    assert.equal(cert.subject, "CN=alice");
    const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
    assert.deepEqual(san?.names.toJSON(), [{ type: "email", value: "alice@example.com" }]);
    const again = await issueClientCertificate({ dir, name: "alice" }).then(
      () => undefined,
      (e) => e,
    );
    assert.ok(again instanceof CertsError);
    assert.equal(again.code, "exists");
  });
});

Deno.test("a validity window that ends before it starts is refused", async () => {
  const ca = await createCertificateAuthority();
  await assert.rejects(
    issueLeafCertificate(ca, {
      kind: "client",
      commonName: "x",
      notBefore: new Date(),
      notAfter: new Date(Date.now() - 1000),
    }),
    (e: unknown) => e instanceof CertsError && e.code === "invalid-validity",
  );
});
