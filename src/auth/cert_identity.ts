/**
 * The identity a client proves with its TLS certificate: subject CN, a subject alternative name,
 * or the certificate's SHA-256 fingerprint.
 */
// @peculiar/x509 resolves its classes through tsyringe, which throws at load time unless a
// Reflect metadata polyfill is installed first.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { createHash } from "node:crypto";
import { certificateExtensions, type DerExtension } from "./cert_der.ts";
import { clientUseRefusal } from "./cert_usage.ts";

/** Which part of the certificate names the client. */
export type CertIdentityMode = "cn" | "san" | "fingerprint";

/**
 * The fields of node:tls `TLSSocket.getPeerCertificate()` that are read here; Node's and Deno's
 * `PeerCertificate` objects fit this shape.
 */
export interface PeerCertificateLike {
  /** Node gives an array when a field occurs more than once. */
  subject?: { CN?: string | readonly string[] };
  /** Node's text form, e.g. `DNS:localhost, IP Address:127.0.0.1, email:bob@example.com`. */
  subjectaltname?: string;
  /** Upper-case hex with colons. */
  fingerprint256?: string;
  /** DER bytes of the certificate. */
  raw?: Uint8Array;
}

/** A PEM or DER blob that is not a certificate @peculiar/x509 can read. */
export class CertificateParseError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "CertificateParseError";
  }
}

/** Subject alternative name kinds that may serve as an identity, most preferred first. */
type SanKind = "email" | "uri" | "dns";

/**
 * Email and URI names are issued to name one principal (a person/account, or a workload such as a
 * SPIFFE ID), so they win; a DNS name names a host, which several clients may share. IP
 * addresses are never identities: they describe where a device sits, not who it is.
 */
const SAN_PREFERENCE: readonly SanKind[] = ["email", "uri", "dns"];

/** What a verified peer certificate says about its client. */
export interface PeerCertificateReading {
  /** The identity per [tls] identity; undefined when the certificate lacks that part. */
  identity: string | undefined;
  /** Why the certificate may not authenticate a TLS client (cert_usage.ts); undefined if it may. */
  refusal: string | undefined;
}

/** A certificate the TLS verifier took but the DER walk cannot read: refused, not guessed at. */
export const UNREADABLE_REFUSAL = "the client certificate cannot be read";

/**
 * Identity and usage of a peer certificate as node:tls reports it, from one walk of its DER.
 * Without a certificate (Node reports an empty object) there is neither.
 */
export function readPeerCertificate(
  peer: PeerCertificateLike | null | undefined,
  mode: CertIdentityMode,
): PeerCertificateReading {
  if (!peer) return { identity: undefined, refusal: undefined };
  if (!peer.raw || peer.raw.length === 0) {
    return { identity: reportedIdentity(peer, mode), refusal: undefined };
  }
  const extensions = certificateExtensions(peer.raw);
  if (extensions === undefined) return { identity: undefined, refusal: UNREADABLE_REFUSAL };
  let identity: string | undefined;
  switch (mode) {
    case "cn":
      identity = firstNonEmpty(peer.subject?.CN);
      break;
    case "san":
      // From the DER: Deno's node:tls prints subjectaltname without Node's quoting, so the
      // single name `URI:spiffe://x, email:admin@example.com` would read back as two entries
      // and name the client admin@example.com.
      identity = sanExtensionIdentity(extensions.get(SUBJECT_ALT_NAME));
      break;
    case "fingerprint":
      identity = sha256Hex(peer.raw);
  }
  return { identity, refusal: clientUseRefusal(extensions) };
}

/**
 * Identity of a peer certificate as node:tls reports it, or undefined when the certificate lacks
 * the requested part (or there is no certificate, which Node reports as an empty object).
 */
export function certificateIdentity(
  peer: PeerCertificateLike | null | undefined,
  mode: CertIdentityMode,
): string | undefined {
  return readPeerCertificate(peer, mode).identity;
}

/** Identity from node:tls's own fields, for a peer object without the DER. */
function reportedIdentity(peer: PeerCertificateLike, mode: CertIdentityMode): string | undefined {
  switch (mode) {
    case "cn":
      return firstNonEmpty(peer.subject?.CN);
    case "san":
      return preferredSan(parseNodeAltNames(peer.subjectaltname ?? ""));
    case "fingerprint":
      return peer.fingerprint256
        ? peer.fingerprint256.replaceAll(":", "").toLowerCase()
        : undefined;
  }
}

/**
 * Identity of a PEM or DER certificate, for paths (such as WebSocket upgrades behind a proxy)
 * that only carry the raw certificate. Throws CertificateParseError for anything unreadable.
 */
export function encodedCertificateIdentity(
  cert: string | Uint8Array,
  mode: CertIdentityMode,
): string | undefined {
  let parsed: x509.X509Certificate;
  try {
    parsed = new x509.X509Certificate(typeof cert === "string" ? cert : toArrayBuffer(cert));
  } catch (cause) {
    throw new CertificateParseError("not a readable X.509 certificate", { cause });
  }
  switch (mode) {
    case "cn":
      return firstNonEmpty(parsed.subjectName.getField("CN"));
    case "san":
      return preferredSan(altNames(parsed));
    case "fingerprint":
      return sha256Hex(new Uint8Array(parsed.rawData));
  }
}

const SUBJECT_ALT_NAME = "2.5.29.17";

/** The identity SAN of a verified peer's SAN extension; undefined when none or unreadable. */
function sanExtensionIdentity(ext: DerExtension | undefined): string | undefined {
  if (ext === undefined) return undefined;
  let san: x509.SubjectAlternativeNameExtension;
  try {
    san = new x509.SubjectAlternativeNameExtension(toArrayBuffer(ext.der));
  } catch {
    return undefined;
  }
  return preferredSan(sanNames(san));
}

/** The subject alternative names that may serve as an identity, in certificate order. */
function altNames(parsed: x509.X509Certificate): AltName[] {
  const ext = parsed.getExtension(x509.SubjectAlternativeNameExtension);
  return ext === null ? [] : sanNames(ext);
}

function sanNames(ext: x509.SubjectAlternativeNameExtension): AltName[] {
  return ext.names.items.flatMap((n): AltName[] => {
    const kind = n.type === "url" ? "uri" : n.type;
    return kind === "email" || kind === "uri" || kind === "dns" ? [{ kind, value: n.value }] : [];
  });
}

interface AltName {
  kind: SanKind;
  value: string;
}

function preferredSan(names: readonly AltName[]): string | undefined {
  for (const kind of SAN_PREFERENCE) {
    const found = names.find((n) => n.kind === kind && n.value !== "");
    if (found) return found.value;
  }
  return undefined;
}

const NODE_SAN_KINDS: Record<string, SanKind> = { email: "email", URI: "uri", DNS: "dns" };

/**
 * Parse Node's `subjectaltname` text. Node JSON-quotes a value that contains a separator or a
 * quote (`DNS:"a, DNS:b"`), so a crafted name cannot smuggle in a second entry; quoted values are
 * decoded here rather than split on ", ".
 */
function parseNodeAltNames(text: string): AltName[] {
  const names: AltName[] = [];
  let i = 0;
  while (i < text.length) {
    const colon = text.indexOf(":", i);
    if (colon === -1) break;
    const prefix = text.slice(i, colon);
    let value: string;
    let end: number;
    if (text[colon + 1] === '"') {
      end = closingQuote(text, colon + 2);
      if (end === -1) break;
      end += 1;
      try {
        value = JSON.parse(text.slice(colon + 1, end));
      } catch {
        break;
      }
    } else {
      end = text.indexOf(", ", colon + 1);
      if (end === -1) end = text.length;
      value = text.slice(colon + 1, end);
    }
    const kind = NODE_SAN_KINDS[prefix];
    if (kind) names.push({ kind, value });
    // A malformed tail ends the parse instead of being guessed at.
    if (end < text.length && !text.startsWith(", ", end)) break;
    i = end + 2;
  }
  return names;
}

function closingQuote(text: string, from: number): number {
  for (let i = from; i < text.length; i++) {
    if (text[i] === "\\") i++;
    else if (text[i] === '"') return i;
  }
  return -1;
}

function firstNonEmpty(value: string | readonly string[] | undefined): string | undefined {
  // With several CNs the first one counts, as in OpenSSL-based brokers.
  const first = typeof value === "string" ? value : value?.[0];
  return first ? first : undefined;
}

function sha256Hex(der: Uint8Array): string {
  return createHash("sha256").update(der).digest("hex");
}

function toArrayBuffer(bytes: Uint8Array): ArrayBuffer {
  return bytes.slice().buffer;
}
