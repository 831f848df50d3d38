/**
 * Raw bytes for the connection-side conformance audit (spec_audit_connect_test.ts,
 * spec_audit_connack_test.ts): a CONNECT built by hand with its flags, a will's fields, the
 * packets a client pipelines behind a CONNECT, and a read of a raw socket up to some bytes.
 * Built apart from the broker's codec, as tests/helpers/wire.ts is, whose builders these use.
 */
import { concatBytes, frame, str, varint } from "../helpers/wire.ts";

const enc = new TextEncoder();

export const CLEAN = 0x02;
export const WILL = 0x04;
export const WILL_RETAIN = 0x20;
export const PASSWORD = 0x40;
export const USERNAME = 0x80;

/**
 * A CONNECT built by hand: `payload` is everything after the variable header (client id, will,
 * user name, password), `props` the MQTT 5 property bytes (omitted below level 5).
 */
export function connectBytes(f: {
  level?: 4 | 5;
  flags?: number;
  keepAlive?: number;
  props?: number[];
  payload: number[];
}): Uint8Array {
  const level = f.level ?? 5;
  const ka = f.keepAlive ?? 60;
  return frame(0x10, [
    ...str("MQTT"),
    level,
    f.flags ?? CLEAN,
    ka >> 8,
    ka & 0xff,
    ...(level === 5 ? [...varint(f.props?.length ?? 0), ...(f.props ?? [])] : []),
    ...f.payload,
  ]);
}

/** A will's payload fields: MQTT 5 will properties, topic and message. */
export function willFields(
  topic: string | Uint8Array,
  message: string,
  v5 = true,
  props: number[] = [],
) {
  return [...(v5 ? [...varint(props.length), ...props] : []), ...str(topic), ...str(message)];
}

export const SUBSCRIBE_A = (filter: string, pid = 1, v5 = true) =>
  frame(0x82, [pid >> 8, pid & 0xff, ...(v5 ? [0] : []), ...str(filter), 1]);
export const PINGREQ = new Uint8Array([0xc0, 0]);
export const publishQos0 = (topic: string, payload: string, v5 = true) =>
  frame(0x30, [...str(topic), ...(v5 ? [0] : []), ...enc.encode(payload)]);

/** Reads from `conn` until the bytes read contain `needle`; returns them. */
export async function readUntil(conn: Deno.Conn, needle: Uint8Array, timeoutMs = 3000) {
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(4096);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const all = concatBytes(chunks);
    if (indexOf(all, needle) >= 0) return all;
    if (Date.now() > deadline) throw new Error("timed out reading");
    const n = await conn.read(buf);
    if (n === null) throw new Error("closed");
    chunks.push(buf.slice(0, n));
  }
}

export function indexOf(hay: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}
