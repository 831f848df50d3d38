/**
 * The extensions of a DER certificate, read by walking its TLV structure. A full @peculiar/x509
 * parse takes ~340 µs and each extension read from it ~160 µs more (measured on Deno 2.9.6),
 * about as much as the rest of an mTLS connect: too much for every handshake. This walk takes a
 * few µs and copies nothing. It reads certificates the TLS verifier has already accepted, so it
 * only has to be strict, not forgiving: anything unexpected makes the certificate unreadable.
 */

/** One extension: `der` is the whole Extension (for @peculiar/x509), `value` its extnValue. */
export interface DerExtension {
  der: Uint8Array;
  value: Uint8Array;
}

/** Extensions by dotted OID. */
export type DerExtensions = ReadonlyMap<string, DerExtension>;

/** A TLV: tag, content [start, end) of the buffer it was read from. */
export interface Tlv {
  tag: number;
  start: number;
  end: number;
}

const SEQUENCE = 0x30;
const OID = 0x06;
const BOOLEAN = 0x01;
const OCTET_STRING = 0x04;
/** tbsCertificate's `[3] EXPLICIT Extensions`. */
const EXTENSIONS = 0xa3;

/**
 * The extensions of `der`, or undefined when it is not a certificate this walk can read, or
 * names an extension twice (RFC 5280 4.2 forbids it, and which copy counts would be a guess).
 * A certificate without extensions (X.509 v1) gives an empty map.
 */
export function certificateExtensions(der: Uint8Array): DerExtensions | undefined {
  const cert = readTlv(der, 0, der.length);
  if (cert?.tag !== SEQUENCE || cert.end !== der.length) return undefined;
  const tbs = readTlv(der, cert.start, cert.end);
  if (tbs?.tag !== SEQUENCE) return undefined;
  const out = new Map<string, DerExtension>();
  for (let pos = tbs.start; pos < tbs.end;) {
    const field = readTlv(der, pos, tbs.end);
    if (field === undefined) return undefined;
    pos = field.end;
    if (field.tag !== EXTENSIONS) continue;
    const list = readTlv(der, field.start, field.end);
    if (list?.tag !== SEQUENCE || list.end !== field.end) return undefined;
    for (let at = list.start; at < list.end;) {
      const ext = readTlv(der, at, list.end);
      if (ext?.tag !== SEQUENCE) return undefined;
      const read = readExtension(der, ext);
      if (read === undefined || out.has(read.oid)) return undefined;
      out.set(read.oid, { der: der.subarray(at, ext.end), value: read.value });
      at = ext.end;
    }
  }
  return out;
}

function readExtension(
  der: Uint8Array,
  ext: Tlv,
): { oid: string; value: Uint8Array } | undefined {
  const id = readTlv(der, ext.start, ext.end);
  if (id?.tag !== OID) return undefined;
  const oid = oidText(der.subarray(id.start, id.end));
  if (oid === undefined) return undefined;
  let next = readTlv(der, id.end, ext.end);
  // `critical` is the TLS verifier's business (it refuses critical extensions it does not know).
  if (next?.tag === BOOLEAN) next = readTlv(der, next.end, ext.end);
  if (next?.tag !== OCTET_STRING || next.end !== ext.end) return undefined;
  return { oid, value: der.subarray(next.start, next.end) };
}

/**
 * The TLV at `pos`, whose content must end by `limit`. Only what DER allows in a certificate:
 * one-byte tags, definite lengths in the fewest bytes up to 2^24.
 */
export function readTlv(der: Uint8Array, pos: number, limit: number): Tlv | undefined {
  if (pos + 2 > limit) return undefined;
  const tag = der[pos];
  if ((tag & 0x1f) === 0x1f) return undefined;
  let len = der[pos + 1];
  let start = pos + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 3 || start + n > limit || der[start] === 0) return undefined;
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + der[start + i];
    if (len < 0x80) return undefined;
    start += n;
  }
  const end = start + len;
  return end > limit ? undefined : { tag, start, end };
}

/** Dotted text of an OID's content bytes, or undefined when they are not a valid OID. */
export function oidText(bytes: Uint8Array): string | undefined {
  if (bytes.length === 0 || (bytes[bytes.length - 1] & 0x80) !== 0) return undefined;
  const arcs: number[] = [];
  let value = 0;
  for (let i = 0; i < bytes.length; i++) {
    // A leading 0x80 pads an arc, which DER forbids.
    if (value === 0 && bytes[i] === 0x80) return undefined;
    value = value * 128 + (bytes[i] & 0x7f);
    if (value > Number.MAX_SAFE_INTEGER / 128) return undefined;
    if ((bytes[i] & 0x80) !== 0) continue;
    if (arcs.length === 0) {
      arcs.push(value < 80 ? Math.floor(value / 40) : 2, value < 80 ? value % 40 : value - 80);
    } else arcs.push(value);
    value = 0;
  }
  return arcs.join(".");
}
