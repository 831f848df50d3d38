/**
 * Development/operator PKI: a CA, a broker certificate and client certificates, generated with
 * WebCrypto and @peculiar/x509 so that no openssl binary is needed at run time.
 *
 * Layout (kept from the original gen-keys.sh):
 *   <dir>/ca.crt, <dir>/ca.key, <dir>/broker/broker.{crt,key}, <dir>/client/<name>.{crt,key}
 */
// @peculiar/x509 resolves its classes through tsyringe, which throws at load time unless a
// Reflect metadata polyfill is installed first.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { dirname, join } from "node:path";

/** Why a certificate operation was refused. */
export type CertsErrorCode =
  | "exists"
  | "ca-missing"
  | "ca-incomplete"
  | "ca-key-mismatch"
  | "unsupported-key"
  | "invalid-name"
  | "invalid-validity";

/** Error raised for every refused certificate operation; `code` says which refusal. */
export class CertsError extends Error {
  constructor(readonly code: CertsErrorCode, message: string) {
    super(message);
    this.name = "CertsError";
  }
}

/** A certificate and its private key, both PEM. */
export interface PemPair {
  certPem: string;
  keyPem: string;
}

/** Paths of one certificate and its key on disk. */
export interface CertFiles {
  cert: string;
  key: string;
}

/** What `generateCertificates` produced. */
export interface GeneratedCerts {
  ca: CertFiles & { reused: boolean };
  broker: CertFiles;
  clients: (CertFiles & { name: string })[];
  /** Every file written, in write order. */
  written: string[];
}

/** Validity window: explicit dates win over `days`. */
export interface Validity {
  days?: number;
  notBefore?: Date;
  notAfter?: Date;
}

const DAY_MS = 24 * 60 * 60 * 1000;
/** Backdating so that a peer whose clock runs a little behind still accepts a fresh cert. */
const CLOCK_SKEW_MS = 60 * 60 * 1000;
/** Default CA lifetime. */
export const DEFAULT_CA_DAYS = 3650;
/** Default leaf lifetime; 825 days is the longest that Apple platforms accept for TLS servers. */
export const DEFAULT_LEAF_DAYS = 825;
/** Names every broker certificate carries, so local clients verify it out of the box. */
export const DEFAULT_BROKER_NAMES: readonly string[] = ["localhost", "127.0.0.1", "::1"];
/** Client certificate name used when the caller names none. */
export const DEFAULT_CLIENT_NAME = "client";

const KEY_ALGORITHM: EcKeyGenParams = { name: "ECDSA", namedCurve: "P-256" };
const PRIVATE_KEY_MODE = 0o600;
const CERT_MODE = 0o644;

/** Create a self-signed CA (ECDSA P-256, SHA-256) valid for `days` (default 10 years). */
export async function createCertificateAuthority(
  opts: { commonName?: string } & Validity = {},
): Promise<PemPair> {
  const keys = await generateKeyPair();
  const { notBefore, notAfter } = validityWindow(opts, DEFAULT_CA_DAYS);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: [{ CN: [opts.commonName ?? "mcloudtt CA"] }],
    notBefore,
    notAfter,
    keys,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString("pem"), keyPem: await privateKeyPem(keys.privateKey) };
}

/** What a leaf certificate is for. */
export type LeafKind = "server" | "client";

/** Options for `issueLeafCertificate`. */
export interface LeafOptions extends Validity {
  kind: LeafKind;
  commonName: string;
  /** Subject alternative names; the type (DNS, IP, email, URI) is detected from the text. */
  sans?: readonly string[];
}

/** Issue a server or client certificate (ECDSA P-256) signed by the given CA. */
export async function issueLeafCertificate(ca: PemPair, opts: LeafOptions): Promise<PemPair> {
  const caCert = new x509.X509Certificate(ca.certPem);
  const signer = await importCaKey(caCert, ca.keyPem);
  const keys = await generateKeyPair();
  const { notBefore, notAfter } = validityWindow(opts, DEFAULT_LEAF_DAYS);
  const serverUse = opts.kind === "server";
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(
      serverUse
        ? x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment
        : x509.KeyUsageFlags.digitalSignature,
      true,
    ),
    new x509.ExtendedKeyUsageExtension(
      [serverUse ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth],
      false,
    ),
    await authorityKeyIdentifier(caCert),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
  ];
  if (opts.sans && opts.sans.length > 0) {
    extensions.push(new x509.SubjectAlternativeNameExtension(opts.sans.map(generalName), false));
  }
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: [{ CN: [opts.commonName] }],
    issuer: caCert.subjectName,
    notBefore,
    notAfter,
    publicKey: keys.publicKey,
    signingKey: signer.key,
    signingAlgorithm: signer.algorithm,
    extensions,
  });
  return { certPem: cert.toString("pem"), keyPem: await privateKeyPem(keys.privateKey) };
}

/** Options for `generateCertificates`. */
export interface GenerateOptions {
  dir: string;
  /** Extra broker names (DNS or IP) on top of localhost, 127.0.0.1 and ::1. */
  brokerNames?: readonly string[];
  /** Client certificate names; default `["client"]`. */
  clients?: readonly string[];
  /** Leaf lifetime in days (default 825); a new CA always gets 10 years. */
  days?: number;
  overwrite?: boolean;
}

/**
 * Create (or reuse) the CA in `dir`, then the broker and client certificates. Nothing is written
 * when any target file exists and `overwrite` is not set.
 */
export async function generateCertificates(opts: GenerateOptions): Promise<GeneratedCerts> {
  const clientNames = [...new Set(opts.clients ?? [DEFAULT_CLIENT_NAME])];
  clientNames.forEach(assertFileName);
  const caFiles = caPaths(opts.dir);
  const caState = await existingCaState(caFiles);
  if (caState === "partial" && !opts.overwrite) {
    throw new CertsError(
      "ca-incomplete",
      `only one of ${caFiles.cert} and ${caFiles.key} exists; remove it or pass --force`,
    );
  }
  const reuseCa = caState === "complete";
  const brokerFiles = leafPaths(opts.dir, "broker", "broker");
  const clientFiles = clientNames.map((name) => ({
    name,
    ...leafPaths(opts.dir, "client", name),
  }));
  const targets = [brokerFiles, ...clientFiles].flatMap((f) => [f.cert, f.key]);
  if (!reuseCa) targets.unshift(caFiles.cert, caFiles.key);
  if (!opts.overwrite) await refuseExisting(targets);

  // Everything is built in memory first so a failure (say, a CA key that does not match) leaves
  // the directory as it was.
  const ca = reuseCa ? await readCa(caFiles) : await createCertificateAuthority();
  const brokerNames = [...new Set([...DEFAULT_BROKER_NAMES, ...(opts.brokerNames ?? [])])];
  const broker = await issueLeafCertificate(ca, {
    kind: "server",
    commonName: opts.brokerNames?.[0] ?? "localhost",
    sans: brokerNames,
    days: opts.days,
  });
  const clients = await Promise.all(
    clientNames.map((name) =>
      issueLeafCertificate(ca, { kind: "client", commonName: name, days: opts.days })
    ),
  );

  const written: string[] = [];
  if (!reuseCa) await writePair(caFiles, ca, written);
  await writePair(brokerFiles, broker, written);
  for (const [i, files] of clientFiles.entries()) await writePair(files, clients[i], written);
  return {
    ca: { ...caFiles, reused: reuseCa },
    broker: brokerFiles,
    clients: clientFiles,
    written,
  };
}

/** Options for `issueClientCertificate`. */
export interface IssueClientOptions {
  dir: string;
  name: string;
  days?: number;
  /** Subject alternative names (DNS, IP, email or URI). */
  san?: readonly string[];
  overwrite?: boolean;
}

/** Issue `<dir>/client/<name>.{crt,key}` from the CA already in `dir`. */
export async function issueClientCertificate(opts: IssueClientOptions): Promise<CertFiles> {
  assertFileName(opts.name);
  const caFiles = caPaths(opts.dir);
  if (await existingCaState(caFiles) !== "complete") {
    throw new CertsError(
      "ca-missing",
      `no CA in ${opts.dir} (need ${caFiles.cert} and ${caFiles.key}); run 'mcloudtt certs' first`,
    );
  }
  const files = leafPaths(opts.dir, "client", opts.name);
  if (!opts.overwrite) await refuseExisting([files.cert, files.key]);
  const ca = await readCa(caFiles);
  const pair = await issueLeafCertificate(ca, {
    kind: "client",
    commonName: opts.name,
    sans: opts.san,
    days: opts.days,
  });
  await writePair(files, pair, []);
  return files;
}

// --- building blocks -------------------------------------------------------------------------

async function generateKeyPair(): Promise<CryptoKeyPair> {
  return await crypto.subtle.generateKey(KEY_ALGORITHM, true, ["sign", "verify"]);
}

async function privateKeyPem(key: CryptoKey): Promise<string> {
  const der = await crypto.subtle.exportKey("pkcs8", key);
  return x509.PemConverter.encode(der, "PRIVATE KEY");
}

function validityWindow(v: Validity, defaultDays: number): { notBefore: Date; notAfter: Date } {
  const now = Date.now();
  const notBefore = v.notBefore ?? new Date(now - CLOCK_SKEW_MS);
  const notAfter = v.notAfter ?? new Date(now + (v.days ?? defaultDays) * DAY_MS);
  if (notAfter.getTime() <= notBefore.getTime()) {
    throw new CertsError("invalid-validity", "notAfter must be later than notBefore");
  }
  return { notBefore, notAfter };
}

/** 16 random bytes with the top bit clear: positive, non-zero and under the 20-octet limit. */
function randomSerial(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[0] = (bytes[0] & 0x7f) | 0x01;
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const URI_SCHEME = /^[a-z][a-z0-9+.-]*:/i;

/** Type of a SAN from its text; a colon without a scheme-like prefix can only be IPv6. */
function generalName(text: string): x509.JsonGeneralName {
  if (IPV4.test(text) || (text.includes(":") && /^[0-9a-f:.]+$/i.test(text))) {
    return { type: "ip", value: text };
  }
  if (URI_SCHEME.test(text)) return { type: "url", value: text };
  if (text.includes("@")) return { type: "email", value: text };
  return { type: "dns", value: text };
}

/** The AKI must equal the CA's own SKI, which an externally made CA may have computed its way. */
async function authorityKeyIdentifier(
  caCert: x509.X509Certificate,
): Promise<x509.AuthorityKeyIdentifierExtension> {
  const ski = caCert.getExtension(x509.SubjectKeyIdentifierExtension);
  if (ski) return new x509.AuthorityKeyIdentifierExtension(ski.keyId, false);
  return await x509.AuthorityKeyIdentifierExtension.create(caCert.publicKey);
}

interface CaSigner {
  key: CryptoKey;
  algorithm: EcdsaParams | Algorithm;
}

/**
 * Import the CA key with the algorithm its certificate announces (an operator may bring an RSA or
 * P-384 CA), and check that the two belong together before anything is signed with them.
 */
async function importCaKey(caCert: x509.X509Certificate, keyPem: string): Promise<CaSigner> {
  const pem = x509.PemConverter.decodeWithHeaders(keyPem)[0];
  if (!pem || pem.type !== "PRIVATE KEY") {
    throw new CertsError(
      "unsupported-key",
      `CA key must be an unencrypted PKCS#8 PEM ("BEGIN PRIVATE KEY"), found ${
        pem ? `"${pem.type}"` : "no PEM block"
      }; convert it with: openssl pkcs8 -topk8 -nocrypt -in ca.key -out ca.pk8.key`,
    );
  }
  const alg = caCert.publicKey.algorithm as Algorithm & { namedCurve?: string };
  let importAlg: EcKeyImportParams | RsaHashedImportParams;
  let algorithm: EcdsaParams | Algorithm;
  if (alg.name === "ECDSA" && (alg.namedCurve === "P-256" || alg.namedCurve === "P-384")) {
    importAlg = { name: "ECDSA", namedCurve: alg.namedCurve };
    algorithm = { name: "ECDSA", hash: alg.namedCurve === "P-384" ? "SHA-384" : "SHA-256" };
  } else if (alg.name === "RSASSA-PKCS1-v1_5") {
    importAlg = { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
    algorithm = { name: "RSASSA-PKCS1-v1_5" };
  } else {
    throw new CertsError("unsupported-key", `unsupported CA key algorithm ${alg.name}`);
  }
  let key: CryptoKey;
  try {
    key = await crypto.subtle.importKey("pkcs8", pem.rawData, importAlg, true, ["sign"]);
  } catch (cause) {
    throw new CertsError("unsupported-key", `cannot import CA key: ${String(cause)}`);
  }
  const publicKey = await caCert.publicKey.export(importAlg, ["verify"]);
  const [priv, pub] = await Promise.all([
    crypto.subtle.exportKey("jwk", key),
    crypto.subtle.exportKey("jwk", publicKey),
  ]);
  if (priv.x !== pub.x || priv.y !== pub.y || priv.n !== pub.n) {
    throw new CertsError("ca-key-mismatch", "the CA key does not belong to the CA certificate");
  }
  return { key, algorithm };
}

function assertFileName(name: string): void {
  // The name becomes a file name and a CN; keep it to characters that are safe for both.
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name)) {
    throw new CertsError(
      "invalid-name",
      `invalid certificate name ${JSON.stringify(name)}: use letters, digits, '.', '_' or '-'`,
    );
  }
}

function caPaths(dir: string): CertFiles {
  return { cert: join(dir, "ca.crt"), key: join(dir, "ca.key") };
}

function leafPaths(dir: string, sub: string, name: string): CertFiles {
  return { cert: join(dir, sub, `${name}.crt`), key: join(dir, sub, `${name}.key`) };
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

async function existingCaState(files: CertFiles): Promise<"none" | "partial" | "complete"> {
  const [cert, key] = await Promise.all([exists(files.cert), exists(files.key)]);
  return cert && key ? "complete" : cert || key ? "partial" : "none";
}

async function refuseExisting(paths: readonly string[]): Promise<void> {
  const found: string[] = [];
  for (const path of paths) if (await exists(path)) found.push(path);
  if (found.length > 0) {
    throw new CertsError("exists", `refusing to overwrite ${found.join(", ")} (use --force)`);
  }
}

async function readCa(files: CertFiles): Promise<PemPair> {
  const [certPem, keyPem] = await Promise.all([
    Deno.readTextFile(files.cert),
    Deno.readTextFile(files.key),
  ]);
  return { certPem, keyPem };
}

async function writePair(files: CertFiles, pair: PemPair, written: string[]): Promise<void> {
  await writeFile(files.key, pair.keyPem, PRIVATE_KEY_MODE);
  written.push(files.key);
  await writeFile(files.cert, pair.certPem, CERT_MODE);
  written.push(files.cert);
}

/**
 * Writes a new file beside `path` and renames it over `path`. Writing to `path` itself would
 * follow a symlink found there (with --force: a link planted in certs/ had its target outside
 * certs/ overwritten with a private key and chmod-ed, even under the shipped write permission),
 * and an overwritten key file would be readable with its old bits until the chmod. A rename
 * replaces the link itself, and the file has its mode from the start.
 */
async function writeFile(path: string, text: string, mode: number): Promise<void> {
  await Deno.mkdir(dirname(path), { recursive: true });
  const temp = `${path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  try {
    // createNew: a link planted at the temporary name is refused, not followed.
    await Deno.writeTextFile(temp, text, { mode, createNew: true });
    // `mode` is masked by the umask; the bits must be exactly these.
    if (Deno.build.os !== "windows") await Deno.chmod(temp, mode);
    await Deno.rename(temp, path);
  } catch (e) {
    await Deno.remove(temp).catch(() => {});
    throw e;
  }
}
