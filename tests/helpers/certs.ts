/**
 * Test PKI fixtures: one directory with a CA, a broker certificate and client certificates that
 * are valid, from another CA, expired, and X.509 v1, for TLS/WSS tests.
 */
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { join } from "node:path";
import tls from "node:tls";
import {
  type CertFiles,
  createCertificateAuthority,
  issueLeafCertificate,
  type PemPair,
} from "../../src/auth/certs.ts";
import { opensslOrThrow as openssl } from "./openssl.ts";

/** Paths of every fixture `makeTestPki` writes. */
export interface TestPki {
  dir: string;
  /** The CA that the broker trusts. */
  ca: CertFiles;
  /** Server certificate for localhost, 127.0.0.1 and ::1. */
  broker: CertFiles;
  /** Valid client, CN "alice", no SAN. */
  alice: CertFiles;
  /** Valid client, CN "bob", SAN email bob@example.com. */
  bob: CertFiles;
  /** A second, unrelated CA. */
  otherCa: CertFiles;
  /** Client CN "mallory" signed by `otherCa`. */
  otherCaClient: CertFiles;
  /** Client CN "expired" from the right CA, whose validity ended yesterday. */
  expired: CertFiles;
  /**
   * Client CN "v1client" from the right CA, X.509 version 1 (no extensions). Made with openssl;
   * undefined (after a loud warning) when openssl is missing outside CI.
   */
  v1: CertFiles | undefined;
}

const DAY_MS = 24 * 60 * 60 * 1000;

/**
 * True when `name` can be run. When it cannot, prints a loud warning so the skip is seen, or
 * throws when the CI env var is set, because CI must run every test.
 */
export function haveBinary(name: string, versionArg = "version"): Promise<boolean> {
  // Asked once per binary, so a missing one is announced once rather than by every fixture.
  let answer = probed.get(name);
  if (!answer) {
    answer = probeBinary(name, versionArg);
    probed.set(name, answer);
  }
  return answer;
}

const probed = new Map<string, Promise<boolean>>();

async function probeBinary(name: string, versionArg: string): Promise<boolean> {
  try {
    const out = await new Deno.Command(name, { args: [versionArg], stdout: "null", stderr: "null" })
      .output();
    if (out.success) return true;
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  if (Deno.env.get("CI")) throw new Error(`${name} is required in CI but is not available`);
  console.warn(`\n!!! ${name} NOT FOUND: skipping the tests that need it !!!\n`);
  return false;
}

/**
 * The TLS options of a client of `pki` (node:tls, ws and MQTT.js take them alike): it trusts
 * the test CA and presents `client`'s certificate, or none when `client` is undefined.
 */
export function clientTls(
  pki: TestPki,
  client: CertFiles | undefined,
): { ca: string; cert?: string; key?: string } {
  const ca = Deno.readTextFileSync(pki.ca.cert);
  if (client === undefined) return { ca };
  return { ca, cert: Deno.readTextFileSync(client.cert), key: Deno.readTextFileSync(client.key) };
}

/** Read a certificate and its key as PEM text. */
export async function readPair(files: CertFiles): Promise<{ cert: string; key: string }> {
  const [cert, key] = await Promise.all([
    Deno.readTextFile(files.cert),
    Deno.readTextFile(files.key),
  ]);
  return { cert, key };
}

/**
 * Write the whole test PKI into `dir`. Only the v1 certificate needs openssl (WebCrypto tooling
 * writes v3 only), so the rest stays usable on a machine without it.
 */
export async function makeTestPki(dir: string): Promise<TestPki> {
  const now = Date.now();
  // The CA predates the expired leaf's window, so expiry is that certificate's only defect.
  const ca = await createCertificateAuthority({
    commonName: "mcloudtt test CA",
    notBefore: new Date(now - 60 * DAY_MS),
    days: 30,
  });
  const otherCa = await createCertificateAuthority({ commonName: "some other CA", days: 30 });
  const [broker, alice, bob, mallory, expired] = await Promise.all([
    issueLeafCertificate(ca, {
      kind: "server",
      commonName: "localhost",
      sans: ["localhost", "127.0.0.1", "::1"],
      days: 2,
    }),
    issueLeafCertificate(ca, { kind: "client", commonName: "alice", days: 2 }),
    issueLeafCertificate(ca, {
      kind: "client",
      commonName: "bob",
      sans: ["bob@example.com"],
      days: 2,
    }),
    issueLeafCertificate(otherCa, { kind: "client", commonName: "mallory", days: 2 }),
    issueLeafCertificate(ca, {
      kind: "client",
      commonName: "expired",
      notBefore: new Date(now - 30 * DAY_MS),
      notAfter: new Date(now - DAY_MS),
    }),
  ]);
  const files = {
    ca: await write(dir, "ca", ca),
    broker: await write(dir, "broker", broker),
    alice: await write(dir, "alice", alice),
    bob: await write(dir, "bob", bob),
    otherCa: await write(dir, "other-ca", otherCa),
    otherCaClient: await write(dir, "mallory", mallory),
    expired: await write(dir, "expired", expired),
  };
  const v1 = await haveBinary("openssl") ? await makeV1Client(dir, files.ca) : undefined;
  return { dir, ...files, v1 };
}

async function write(dir: string, name: string, pair: PemPair): Promise<CertFiles> {
  const files = { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(files.cert, pair.certPem);
  await Deno.writeTextFile(files.key, pair.keyPem, { mode: 0o600 });
  return files;
}

/** A client certificate `opensslClient` makes. */
export interface OpensslClientOptions {
  /** The subject CN, and the name of its files. */
  name: string;
  /** The key type; default EC P-256. */
  key?: "ec" | "rsa";
  /**
   * Lines of the openssl extension file (`keyUsage = critical, keyEncipherment`); without them
   * `x509 -req` signs a v1 certificate.
   */
  extensions?: readonly string[];
}

/**
 * A client certificate signed by `ca` with openssl, for the shapes WebCrypto tooling cannot
 * make (v1) or the broker's own issuer never would (odd key usages).
 */
export async function opensslClient(
  dir: string,
  ca: CertFiles,
  opts: OpensslClientOptions,
): Promise<CertFiles> {
  const files = { cert: join(dir, `${opts.name}.crt`), key: join(dir, `${opts.name}.key`) };
  const csr = join(dir, `${opts.name}.csr`);
  await openssl(
    opts.key === "rsa"
      ? ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", files.key]
      : ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", files.key],
  );
  await openssl(["req", "-new", "-key", files.key, "-subj", `/CN=${opts.name}`, "-out", csr]);
  const extArgs: string[] = [];
  if (opts.extensions !== undefined) {
    const extfile = join(dir, `${opts.name}.ext`);
    await Deno.writeTextFile(extfile, opts.extensions.join("\n") + "\n");
    extArgs.push("-extfile", extfile);
  }
  await openssl([
    "x509",
    "-req",
    "-in",
    csr,
    "-CA",
    ca.cert,
    "-CAkey",
    ca.key,
    // Issuer and serial name a certificate: each of a CA's gets its own.
    "-set_serial",
    `0x${crypto.randomUUID().replaceAll("-", "").slice(0, 15)}`,
    "-days",
    "2",
    "-sha256",
    ...extArgs,
    "-out",
    files.cert,
  ]);
  return files;
}

/** `openssl x509 -req` without an extension file signs a v1 certificate. */
async function makeV1Client(dir: string, ca: CertFiles): Promise<CertFiles> {
  const files = await opensslClient(dir, ca, { name: "v1client" });
  // Newer OpenSSL releases may add extensions (and so v3) by default; the fixture would then
  // silently test nothing, so check.
  const text = await openssl(["x509", "-in", files.cert, "-noout", "-text"]);
  if (!/Version: 1 \(0x0\)/.test(text)) {
    throw new Error(`openssl did not produce a v1 certificate:\n${text}`);
  }
  return files;
}

/** Node's fingerprint256 form (upper-case hex, colon separated) of a PEM certificate. */
export function fingerprintOf(pem: string): string {
  const der = Buffer.from(pem.replace(/-----[^-]+-----/g, "").replace(/\s/g, ""), "base64");
  const hex = createHash("sha256").update(der).digest("hex").toUpperCase();
  return hex.match(/../g)!.join(":");
}

/** The fingerprint of the certificate the broker serves to a new TLS connection. */
export function servedFingerprint(port: number, ca: string, client: { cert: string; key: string }) {
  return new Promise<string>((resolve, reject) => {
    const socket = tls.connect({
      host: "127.0.0.1",
      port,
      servername: "localhost",
      ca,
      cert: client.cert,
      key: client.key,
    });
    socket.once("secureConnect", () => {
      const fp = socket.getPeerCertificate().fingerprint256;
      socket.once("close", () => resolve(fp));
      socket.destroy();
    });
    socket.once("error", reject);
  });
}

/**
 * An intermediate CA (ECDSA P-256, CA:TRUE, may sign certificates) issued by `root`, valid until
 * `notAfter`: for chains whose middle expires first. The root's key must be P-256 PKCS#8.
 */
export async function issueIntermediate(root: PemPair, notAfter: Date): Promise<PemPair> {
  const x509 = await import("@peculiar/x509");
  const rootCert = new x509.X509Certificate(root.certPem);
  const der = x509.PemConverter.decode(root.keyPem)[0];
  const alg = { name: "ECDSA", namedCurve: "P-256" };
  const rootKey = await crypto.subtle.importKey("pkcs8", der, alg, false, ["sign"]);
  const keys = await crypto.subtle.generateKey(alg, true, ["sign", "verify"]);
  const ski = rootCert.getExtension(x509.SubjectKeyIdentifierExtension);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: "0a" + crypto.randomUUID().replaceAll("-", "").slice(0, 14),
    subject: [{ CN: ["mcloudtt test intermediate"] }],
    issuer: rootCert.subjectName,
    notBefore: new Date(Date.now() - 60_000),
    notAfter,
    publicKey: keys.publicKey,
    signingKey: rootKey,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
        true,
      ),
      new x509.AuthorityKeyIdentifierExtension(ski!.keyId, false),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", keys.privateKey));
  return { certPem: cert.toString("pem"), keyPem: x509.PemConverter.encode(pkcs8, "PRIVATE KEY") };
}
