import assert from "node:assert/strict";
import * as tls from "node:tls";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import {
  certificateIdentity,
  CertificateParseError,
  encodedCertificateIdentity,
  type PeerCertificateLike,
} from "../../src/auth/cert_identity.ts";
import { type CertFiles, issueLeafCertificate } from "../../src/auth/certs.ts";
import { haveBinary, makeTestPki, readPair, type TestPki } from "../helpers/certs.ts";
import { openssl } from "../helpers/openssl.ts";

const HAVE_OPENSSL = await haveBinary("openssl");
const HANDSHAKE_TIMEOUT_MS = 5000;

async function withPki(fn: (pki: TestPki) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-pki-" });
  try {
    await fn(await makeTestPki(dir));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

interface ServerView {
  authorized: boolean;
  authorizationError?: string;
  peer: tls.PeerCertificate;
}

/** A mutual-TLS server on 127.0.0.1:0 that answers "ok" and records what it saw of each peer. */
async function startServer(pki: TestPki, rejectUnauthorized: boolean) {
  const broker = await readPair(pki.broker);
  const seen: ServerView[] = [];
  const clientErrors: string[] = [];
  const server = tls.createServer({
    key: broker.key,
    cert: broker.cert,
    ca: await Deno.readTextFile(pki.ca.cert),
    requestCert: true,
    rejectUnauthorized,
  }, (socket) => {
    seen.push({
      authorized: socket.authorized,
      authorizationError: socket.authorizationError?.toString(),
      peer: socket.getPeerCertificate(),
    });
    socket.end("ok");
  });
  server.on("tlsClientError", (error) => clientErrors.push(error.message));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  const close = () => new Promise<void>((resolve) => server.close(() => resolve()));
  return { port, seen, clientErrors, close };
}

/** Connect with a client certificate; resolves with what the client received once it closed. */
async function connectWith(pki: TestPki, port: number, client: CertFiles): Promise<string> {
  const { cert, key } = await readPair(client);
  const ca = await Deno.readTextFile(pki.ca.cert);
  return await new Promise<string>((resolve, reject) => {
    let received = "";
    const socket = tls.connect({ host: "127.0.0.1", port, servername: "localhost", ca, cert, key });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error("handshake did not finish"));
    }, HANDSHAKE_TIMEOUT_MS);
    socket.on("data", (chunk) => received += String(chunk));
    // A refused client certificate shows up as a reset or a plain close, depending on timing.
    socket.on("error", () => {});
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(received);
    });
  });
}

Deno.test({
  name: "mutual TLS: alice's certificate is accepted and her CN is the identity",
  fn: () =>
    withPki(async (pki) => {
      const server = await startServer(pki, true);
      try {
        assert.equal(await connectWith(pki, server.port, pki.alice), "ok");
        assert.equal(server.seen.length, 1);
        const [view] = server.seen;
        assert.equal(view.authorized, true);
        assert.equal(certificateIdentity(view.peer, "cn"), "alice");
        // alice has no SAN; the san mode must not fall back to something else.
        assert.equal(certificateIdentity(view.peer, "san"), undefined);
      } finally {
        await server.close();
      }
    }),
});

Deno.test({
  name: "mutual TLS: bob's SAN email and fingerprint are read from the peer certificate",
  ignore: !HAVE_OPENSSL,
  fn: () =>
    withPki(async (pki) => {
      const server = await startServer(pki, true);
      try {
        assert.equal(await connectWith(pki, server.port, pki.bob), "ok");
        const [view] = server.seen;
        assert.equal(certificateIdentity(view.peer, "cn"), "bob");
        assert.equal(certificateIdentity(view.peer, "san"), "bob@example.com");
        const fp = await openssl([
          "x509",
          "-in",
          pki.bob.cert,
          "-noout",
          "-fingerprint",
          "-sha256",
        ]);
        assert.ok(fp.ok, fp.out);
        const expected = fp.out.trim().split("=")[1].replaceAll(":", "").toLowerCase();
        assert.match(expected, /^[0-9a-f]{64}$/);
        assert.equal(certificateIdentity(view.peer, "fingerprint"), expected);
        // Without the raw bytes the reported fingerprint256 gives the same answer.
        const { raw: _raw, ...withoutRaw } = view.peer;
        assert.equal(certificateIdentity(withoutRaw, "fingerprint"), expected);
      } finally {
        await server.close();
      }
    }),
});

for (
  const [label, pick, needsOpenssl] of [
    ["a certificate from another CA", (p: TestPki) => p.otherCaClient, false],
    ["an expired certificate", (p: TestPki) => p.expired, false],
    ["an X.509 v1 certificate", (p: TestPki) => p.v1!, true],
  ] as const
) {
  Deno.test({
    name: `mutual TLS: ${label} is refused`,
    ignore: needsOpenssl && !HAVE_OPENSSL,
    fn: () =>
      withPki(async (pki) => {
        const strict = await startServer(pki, true);
        try {
          assert.equal(await connectWith(pki, strict.port, pick(pki)), "");
          assert.equal(strict.seen.length, 0, "the connection never reached the application");
          assert.ok(strict.clientErrors.length > 0, "the server reported a TLS client error");
        } finally {
          await strict.close();
        }
        // Same certificate, server told to let it through: it sees an unauthorized peer.
        const lax = await startServer(pki, false);
        try {
          assert.equal(await connectWith(pki, lax.port, pick(pki)), "ok");
          assert.equal(lax.seen[0].authorized, false);
          assert.ok(lax.seen[0].authorizationError, "an authorization error is given");
        } finally {
          await lax.close();
        }
      }),
  });
}

Deno.test({
  name: "the refused v1 and expired certificates are otherwise valid, so version and time decide",
  ignore: !HAVE_OPENSSL,
  fn: () =>
    withPki(async (pki) => {
      // OpenSSL accepts a v1 leaf; rustls (behind Deno's node:tls) is what refuses it.
      const v1 = await openssl(["verify", "-CAfile", pki.ca.cert, pki.v1!.cert]);
      assert.ok(v1.ok, v1.out);
      const text = await openssl(["x509", "-in", pki.v1!.cert, "-noout", "-text"]);
      assert.match(text.out, /Version: 1 \(0x0\)/);
      const expired = await openssl(["verify", "-CAfile", pki.ca.cert, pki.expired.cert]);
      assert.equal(expired.ok, false);
      assert.match(expired.out, /certificate has expired/);
      const tenDaysAgo = String(Math.floor(Date.now() / 1000) - 10 * 24 * 3600);
      const then = await openssl([
        "verify",
        "-attime",
        tenDaysAgo,
        "-CAfile",
        pki.ca.cert,
        pki.expired.cert,
      ]);
      assert.ok(then.ok, then.out);
    }),
});

Deno.test({
  name: "openssl s_client with alice's certificate completes the handshake with the server",
  ignore: !HAVE_OPENSSL,
  fn: () =>
    withPki(async (pki) => {
      const server = await startServer(pki, true);
      try {
        const result = await openssl([
          "s_client",
          "-connect",
          `127.0.0.1:${server.port}`,
          "-servername",
          "localhost",
          "-CAfile",
          pki.ca.cert,
          "-cert",
          pki.alice.cert,
          "-key",
          pki.alice.key,
          "-verify_return_error",
        ]);
        assert.match(result.out, /Verify return code: 0 \(ok\)/);
        // The server side may see the connection a moment after s_client has gone.
        for (let i = 0; i < 50 && server.seen.length === 0; i++) {
          await new Promise((r) => setTimeout(r, 20));
        }
        assert.equal(server.seen.length, 1, result.out);
        assert.equal(certificateIdentity(server.seen[0].peer, "cn"), "alice");
      } finally {
        await server.close();
      }
    }),
});

Deno.test({
  name: "encodedCertificateIdentity reads CN, SAN and fingerprint from PEM and DER",
  ignore: !HAVE_OPENSSL,
  fn: () =>
    withPki(async (pki) => {
      const pem = await Deno.readTextFile(pki.bob.cert);
      const derOut = await new Deno.Command("openssl", {
        args: ["x509", "-in", pki.bob.cert, "-outform", "DER"],
        stdout: "piped",
      }).output();
      assert.ok(derOut.success);
      const der = derOut.stdout;
      const fp = await openssl(["x509", "-in", pki.bob.cert, "-noout", "-fingerprint", "-sha256"]);
      const expected = fp.out.trim().split("=")[1].replaceAll(":", "").toLowerCase();
      for (const cert of [pem, der]) {
        assert.equal(encodedCertificateIdentity(cert, "cn"), "bob");
        assert.equal(encodedCertificateIdentity(cert, "san"), "bob@example.com");
        assert.equal(encodedCertificateIdentity(cert, "fingerprint"), expected);
      }
      const alice = await Deno.readTextFile(pki.alice.cert);
      assert.equal(encodedCertificateIdentity(alice, "san"), undefined);
      const v1 = await Deno.readTextFile(pki.v1!.cert);
      assert.equal(encodedCertificateIdentity(v1, "cn"), "v1client");
      assert.equal(encodedCertificateIdentity(v1, "san"), undefined);
    }),
});

Deno.test("encodedCertificateIdentity throws CertificateParseError for garbage", () => {
  for (const junk of ["not a certificate", new Uint8Array([1, 2, 3])]) {
    assert.throws(() => encodedCertificateIdentity(junk, "cn"), CertificateParseError);
  }
});

Deno.test("SAN identity prefers email, then URI, then DNS, and never an IP address", () => {
  const san = (subjectaltname: string) => certificateIdentity({ subjectaltname }, "san");
  assert.equal(
    san("DNS:host.example, URI:spiffe://td/ns/a, email:a@example.com"),
    "a@example.com",
  );
  assert.equal(
    san("IP Address:10.0.0.1, DNS:host.example, URI:spiffe://td/ns/a"),
    "spiffe://td/ns/a",
  );
  assert.equal(san("IP Address:10.0.0.1, DNS:host.example"), "host.example");
  assert.equal(san("IP Address:10.0.0.1, IP Address:0:0:0:0:0:0:0:1"), undefined);
  assert.equal(san(""), undefined);
});

Deno.test("a quoted SAN value cannot smuggle in a second, preferred entry", () => {
  // Node quotes values containing separators; the quoted text is one DNS name, not an email.
  const peer = { subjectaltname: 'DNS:"x.example, email:admin@example.com"' };
  assert.equal(certificateIdentity(peer, "san"), "x.example, email:admin@example.com");
  assert.equal(
    certificateIdentity({ subjectaltname: 'DNS:"a\\"b", email:c@example.com' }, "san"),
    "c@example.com",
  );
});

Deno.test({
  name: "over a real handshake, a SAN whose text looks like a second entry is one name",
  fn: () =>
    withPki(async (pki) => {
      // Deno's node:tls prints subjectaltname without Node's quoting: this single URI reads back
      // as `URI:spiffe://x, email:admin@example.com`, which a text parser takes for an email.
      const ca = {
        certPem: await Deno.readTextFile(pki.ca.cert),
        keyPem: await Deno.readTextFile(pki.ca.key),
      };
      const forged = await issueLeafCertificate(ca, {
        kind: "client",
        commonName: "forger",
        sans: ["spiffe://x, email:admin@example.com"],
      });
      const files = { cert: join(pki.dir, "forger.crt"), key: join(pki.dir, "forger.key") };
      await Deno.writeTextFile(files.cert, forged.certPem);
      await Deno.writeTextFile(files.key, forged.keyPem);
      const server = await startServer(pki, true);
      try {
        assert.equal(await connectWith(pki, server.port, files), "ok");
        const [view] = server.seen;
        assert.equal(view.authorized, true);
        assert.equal(
          certificateIdentity(view.peer, "san"),
          "spiffe://x, email:admin@example.com",
        );
      } finally {
        await server.close();
      }
    }),
});

Deno.test("no certificate or no such field gives no identity", () => {
  const empty: PeerCertificateLike = {};
  for (const mode of ["cn", "san", "fingerprint"] as const) {
    assert.equal(certificateIdentity(empty, mode), undefined);
    assert.equal(certificateIdentity(null, mode), undefined);
  }
  assert.equal(certificateIdentity({ subject: { CN: "" } }, "cn"), undefined);
  assert.equal(certificateIdentity({ subject: { CN: ["first", "second"] } }, "cn"), "first");
  assert.equal(
    certificateIdentity({ fingerprint256: "AB:CD:EF" }, "fingerprint"),
    "abcdef",
  );
});
