/**
 * Whether a certificate may authenticate a TLS client. Deno's node:tls verifier (rustls/webpki)
 * checks the chain, the validity and the extendedKeyUsage, but not the keyUsage extension: a
 * certificate the CA issued for key encipherment or for signing certificates would otherwise
 * log a client in. RFC 5280 4.2.1.3: the client's key signs the handshake (CertificateVerify),
 * so keyUsage, when present, must allow digitalSignature; 4.2.1.12: extendedKeyUsage, when
 * present, must allow client authentication.
 */
import { type DerExtensions, oidText, readTlv } from "./cert_der.ts";

const KEY_USAGE = "2.5.29.15";
const EXTENDED_KEY_USAGE = "2.5.29.37";
const CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";
const ANY_EXTENDED_KEY_USAGE = "2.5.29.37.0";

const BIT_STRING = 0x03;
const SEQUENCE = 0x30;
const OID = 0x06;

export const KEY_USAGE_REFUSAL = "the client certificate's keyUsage lacks digitalSignature";
export const EXTENDED_KEY_USAGE_REFUSAL =
  "the client certificate's extendedKeyUsage lacks clientAuth";

/** Why a certificate with `extensions` may not authenticate a TLS client; undefined if it may. */
export function clientUseRefusal(extensions: DerExtensions): string | undefined {
  const ku = extensions.get(KEY_USAGE);
  if (ku !== undefined && !allowsDigitalSignature(ku.value)) return KEY_USAGE_REFUSAL;
  const eku = extensions.get(EXTENDED_KEY_USAGE);
  if (eku !== undefined && !allowsClientAuth(eku.value)) return EXTENDED_KEY_USAGE_REFUSAL;
  return undefined;
}

/** A keyUsage BIT STRING whose first bit (digitalSignature) is set; unreadable reads as not. */
function allowsDigitalSignature(value: Uint8Array): boolean {
  const bits = readTlv(value, 0, value.length);
  if (bits?.tag !== BIT_STRING || bits.end !== value.length || bits.end - bits.start < 2) {
    return false;
  }
  return (value[bits.start + 1] & 0x80) !== 0;
}

/** An ExtKeyUsageSyntax naming clientAuth or anyExtendedKeyUsage; unreadable reads as not. */
function allowsClientAuth(value: Uint8Array): boolean {
  const list = readTlv(value, 0, value.length);
  if (list?.tag !== SEQUENCE || list.end !== value.length) return false;
  for (let pos = list.start; pos < list.end;) {
    const id = readTlv(value, pos, list.end);
    if (id?.tag !== OID) return false;
    const oid = oidText(value.subarray(id.start, id.end));
    if (oid === CLIENT_AUTH || oid === ANY_EXTENDED_KEY_USAGE) return true;
    pos = id.end;
  }
  return false;
}
