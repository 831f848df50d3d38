/**
 * The certificate chain a TLS listener that asks for no client certificate serves: `certfile`,
 * then the intermediates of `cafile` that lead from it towards its root, and not the root.
 *
 * node:tls in Deno sends every certificate of its `ca` option after the server's own (OpenSSL's
 * auto-chaining, as its source says) and parses that option again on every handshake. Without
 * client certificates the CA has no other use on the server, so the listener is given no `ca`
 * and this chain instead: the root is what the client already trusts (RFC 8446 4.4.2 lets it be
 * omitted), while an intermediate that only `cafile` holds is still sent, so a client that
 * trusts the root can verify a leaf issued by it. Issue 14's A/B: broker CPU per TLS reconnect
 * 340-344 -> 320-326 µs (tests/bench/results/2026-11-30-session18-tls-chain-ab.md).
 */
import { X509Certificate } from "node:crypto";
import { MAX_CHAIN, PEM_CERT, signedBy } from "./cert_check.ts";

/**
 * `cert` (PEM) followed by the certificates of `ca` (PEM) that continue its chain up to, not
 * including, a self-signed one. `cert` as it is when either cannot be parsed (the set is checked
 * before it is served: cert_check.ts).
 */
export function servedChain(cert: string, ca: string): string {
  const own = cert.match(PEM_CERT);
  const cas = ca.match(PEM_CERT);
  if (own === null || cas === null) return cert;
  let top: X509Certificate;
  let pool: { pem: string; x509: X509Certificate }[];
  try {
    top = new X509Certificate(own[own.length - 1]);
    pool = cas.map((pem) => ({ pem, x509: new X509Certificate(pem) }));
  } catch {
    return cert;
  }
  const added: string[] = [];
  for (let hop = 0; hop < MAX_CHAIN && !signedBy(top, top); hop++) {
    const issuer = pool.find((c) => signedBy(top, c.x509));
    if (issuer === undefined || signedBy(issuer.x509, issuer.x509)) break;
    added.push(issuer.pem);
    pool = pool.filter((c) => c !== issuer);
    top = issuer.x509;
  }
  if (added.length === 0) return cert;
  return `${cert.trimEnd()}\n${added.join("\n")}\n`;
}

/**
 * Whether a peer's chain (leaf first, then the issuers its handshake reported) leads to a
 * certificate of `trusted` (the parsed certificates of a cafile): one of them issued a certificate
 * of the chain, or is one, and every link below it holds.
 */
export function chainTrusted(
  chain: readonly X509Certificate[],
  trusted: readonly X509Certificate[],
): boolean {
  for (let i = 0; i < chain.length && i < MAX_CHAIN; i++) {
    const cur = chain[i];
    if (trusted.some((t) => signedBy(cur, t) || t.raw.equals(cur.raw))) return true;
    const next = chain[i + 1];
    if (next === undefined || !signedBy(cur, next)) return false;
  }
  return false;
}

/** The certificates of a PEM bundle that parse. */
export function parsePem(pem: string): X509Certificate[] {
  const out: X509Certificate[] = [];
  for (const block of pem.match(PEM_CERT) ?? []) {
    try {
      out.push(new X509Certificate(block));
    } catch {
      // cafile was checked before it was taken (cert_check.ts); a block that fails here trusts
      // nothing.
    }
  }
  return out;
}
