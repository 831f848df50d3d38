/**
 * Checks that a broker certificate set can work before it is served: TLS servers accept any PEM
 * text at start and on rotation, and only the handshakes fail afterwards, for every client. So at
 * start, on reload and in `check-config` the set must pass:
 *
 * - `certfile`: at least one PEM certificate, each parseable and inside its validity period;
 * - `keyfile`: a parseable private key that belongs to the first certificate of `certfile`;
 * - the first certificate is issued by a certificate of `cafile` (directly or through the
 *   intermediates that follow it in `certfile`), or is self-signed, or `certfile` carries the chain
 *   of its issuers itself (each certificate signed by the next, as a public CA's "fullchain" file);
 * - `cafile`: at least one PEM certificate, each parseable, at least one inside its validity.
 *
 * node:crypto's X509Certificate does the parsing, key matching and signature checks (it works
 * under Deno, and verifies what node:tls will serve).
 */
import { createPrivateKey, type KeyObject, X509Certificate } from "node:crypto";

/** The config keys of the three files. */
export type TlsFileKey = "certfile" | "keyfile" | "cafile";

/** One reason a certificate set cannot work, blamed on a file. */
export interface CertProblem {
  key: TlsFileKey;
  path: string;
  reason: string;
}

/** The contents of the three files (PEM text). */
export interface CertSetText {
  cert: string;
  key: string;
  ca: string;
}

/** The paths of the three files, for messages. */
export interface CertSetPaths {
  certfile: string;
  keyfile: string;
  cafile: string;
}

/** A certificate set that cannot work; the message names the config key, the file and why. */
export class CertCheckError extends Error {
  override name = "CertCheckError";

  constructor(readonly problems: readonly CertProblem[]) {
    super(problems.map(formatCertProblem).join("; "));
  }
}

/** `tls.certfile "path": reason`. */
export function formatCertProblem(p: CertProblem): string {
  return `tls.${p.key} "${p.path}": ${p.reason}`;
}

/** One PEM certificate block (global: `match` finds them all). */
export const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;
/** Nested CA chains longer than this are not real; the bound keeps a crafted file from looping. */
export const MAX_CHAIN = 16;

/** Every problem of the set (empty when it can work), checked at `now` (ms since epoch). */
export function checkCertSet(
  text: CertSetText,
  paths: CertSetPaths,
  now: number = Date.now(),
): CertProblem[] {
  const problems: CertProblem[] = [];
  const blame = (key: TlsFileKey, reason: string) =>
    problems.push({ key, path: paths[key], reason });

  const chain = parseCerts(text.cert, (r) => blame("certfile", r));
  const roots = parseCerts(text.ca, (r) => blame("cafile", r));
  let key: KeyObject | undefined;
  try {
    key = createPrivateKey(text.key);
  } catch (e) {
    blame("keyfile", `not a readable PEM private key (${message(e)})`);
  }

  chain?.forEach((c, i) => {
    const what = i === 0 ? "the certificate" : `certificate ${i + 1} of the chain`;
    const problem = validityProblem(c, now);
    if (problem !== undefined) blame("certfile", `${what} (${c.subject}) ${problem}`);
  });
  if (roots !== undefined && roots.every((c) => validityProblem(c, now) !== undefined)) {
    const only = roots.length === 1 ? roots[0] : undefined;
    blame(
      "cafile",
      only !== undefined
        ? `the CA certificate (${only.subject}) ${validityProblem(only, now)}`
        : "no certificate in it is inside its validity period",
    );
  }
  if (chain === undefined) return problems;
  const leaf = chain[0];
  if (key !== undefined && !matches(leaf, key)) {
    blame(
      "certfile",
      `the certificate does not match the private key in tls.keyfile "${paths.keyfile}"`,
    );
  }
  if (roots !== undefined && !chainsUp(chain, roots)) {
    blame(
      "certfile",
      `the certificate (issuer ${leaf.issuer || "empty"}) is not issued by a certificate in ` +
        `tls.cafile "${paths.cafile}", is not self-signed, and certfile does not carry its issuer`,
    );
  }
  return problems;
}

/** Reads the three files and checks them; unreadable files are problems too. */
export async function checkCertFiles(paths: CertSetPaths, now?: number): Promise<CertProblem[]> {
  const problems: CertProblem[] = [];
  const read = async (key: TlsFileKey): Promise<string | undefined> => {
    try {
      return await Deno.readTextFile(paths[key]);
    } catch (e) {
      problems.push({ key, path: paths[key], reason: `cannot read: ${message(e)}` });
      return undefined;
    }
  };
  const [cert, key, ca] = [await read("certfile"), await read("keyfile"), await read("cafile")];
  if (cert === undefined || key === undefined || ca === undefined) return problems;
  return checkCertSet({ cert, key, ca }, paths, now);
}

function parseCerts(
  pem: string,
  fail: (reason: string) => void,
): X509Certificate[] | undefined {
  const blocks = pem.match(PEM_CERT);
  if (blocks === null) {
    fail("contains no PEM certificate (-----BEGIN CERTIFICATE-----)");
    return undefined;
  }
  const out: X509Certificate[] = [];
  for (let i = 0; i < blocks.length; i++) {
    try {
      out.push(new X509Certificate(blocks[i]));
    } catch (e) {
      fail(`certificate ${i + 1} cannot be parsed (${message(e)})`);
      return undefined;
    }
  }
  return out;
}

function validityProblem(c: X509Certificate, now: number): string | undefined {
  const from = Date.parse(c.validFrom);
  const to = Date.parse(c.validTo);
  if (Number.isNaN(from) || Number.isNaN(to)) return "has an unreadable validity period";
  if (now < from) return `is not valid before ${new Date(from).toISOString()}`;
  if (now > to) return `expired on ${new Date(to).toISOString()}`;
  return undefined;
}

function matches(cert: X509Certificate, key: KeyObject): boolean {
  try {
    return cert.checkPrivateKey(key);
  } catch {
    // A key of another type (RSA key, EC certificate) cannot be compared: it does not match.
    return false;
  }
}

/** Whether `issuer` signed `cert`. */
export function signedBy(cert: X509Certificate, issuer: X509Certificate): boolean {
  try {
    return cert.checkIssued(issuer) && cert.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

/**
 * Whether the leaf leads to a certificate of `roots` through the rest of `chain`, or the chain is
 * self-consistent: a self-signed leaf, or a leaf whose issuers `chain` carries.
 */
function chainsUp(chain: X509Certificate[], roots: X509Certificate[]): boolean {
  let cur = chain[0];
  let steps = 0;
  for (let hop = 0; hop < MAX_CHAIN; hop++) {
    if (roots.some((r) => signedBy(cur, r))) return true;
    if (signedBy(cur, cur)) return true;
    const next = chain.find((c) => c !== cur && signedBy(cur, c));
    if (next === undefined) return steps > 0;
    cur = next;
    steps++;
  }
  return false;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
