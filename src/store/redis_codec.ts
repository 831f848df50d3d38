/**
 * Compact binary values of the Redis store: a stored message, a queued
 * delivery, an inflight entry and a will. Binary rather than JSON because a
 * queued message is the one value a Redis deployment holds millions of: no
 * base64 of the payload, no field names. Every value starts with a format
 * version byte so a future layout can be told apart, and decoding throws
 * {@link CorruptValueError} on anything it does not recognise (the store logs
 * and skips those, it never crashes on them).
 */
import type {
  StoredDelivery,
  StoredInflight,
  StoredMessage,
  StoredSubscription,
  StoredWill,
} from "./types.ts";

/** The first byte of every binary value written by this version. */
export const FORMAT_VERSION = 1;

/** A value under our key prefix that this version cannot read. */
export class CorruptValueError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CorruptValueError";
  }
}

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

class Writer {
  private buf: Uint8Array;
  private view: DataView;
  private pos = 0;

  /** `size`: what the value is expected to take (a message's is its payload and a little). */
  constructor(size = 64) {
    // At least 64 (NaN too: `room` doubles the length, and from 0 it never grows).
    this.buf = new Uint8Array(size >= 64 ? size : 64);
    this.view = new DataView(this.buf.buffer);
  }

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  u8(v: number): void {
    this.room(1);
    this.buf[this.pos++] = v;
  }

  /** Unsigned LEB128, for lengths and small integers (up to 2^53). */
  varint(v: number): void {
    this.room(8);
    while (v >= 0x80) {
      this.buf[this.pos++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.pos++] = v;
  }

  f64(v: number): void {
    this.room(8);
    this.view.setFloat64(this.pos, v);
    this.pos += 8;
  }

  bytes(b: Uint8Array): void {
    // Checked: a value that is not bytes would otherwise be written as garbage.
    if (!(b instanceof Uint8Array)) throw new TypeError("a payload or property block is not bytes");
    this.varint(b.length);
    this.room(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  string(s: string): void {
    this.bytes(enc.encode(s));
  }

  /** `s` (ASCII) as it is, without a length. */
  ascii(s: string): void {
    this.room(s.length);
    for (let i = 0; i < s.length; i++) this.buf[this.pos++] = s.charCodeAt(i);
  }

  done(): Uint8Array {
    // Sized well (a message's expected size): the buffer itself, not a copy of it.
    if (this.pos >= this.buf.length - (this.buf.length >> 3)) return this.buf.subarray(0, this.pos);
    return this.buf.slice(0, this.pos);
  }
}

class Reader {
  private pos = 0;
  private readonly view: DataView;

  constructor(private readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  private need(n: number): void {
    if (this.pos + n > this.buf.length) throw new CorruptValueError("value is truncated");
  }

  u8(): number {
    this.need(1);
    return this.buf[this.pos++];
  }

  varint(): number {
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 8; i++) {
      const b = this.u8();
      v += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) return v;
      mul *= 0x80;
    }
    throw new CorruptValueError("integer too long");
  }

  f64(): number {
    this.need(8);
    const v = this.view.getFloat64(this.pos);
    this.pos += 8;
    return v;
  }

  bytes(): Uint8Array {
    const n = this.varint();
    this.need(n);
    // A plain copy: a stored message owns its bytes (never a view of a reply
    // buffer, and never a Node Buffer, whose slice() is a view).
    const b = new Uint8Array(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return b;
  }

  string(): string {
    try {
      return dec.decode(this.bytes());
    } catch (e) {
      if (e instanceof CorruptValueError) throw e;
      throw new CorruptValueError("string is not UTF-8");
    }
  }

  end(): void {
    if (this.pos !== this.buf.length) throw new CorruptValueError("trailing bytes");
  }
}

function version(r: Reader): void {
  const v = r.u8();
  if (v !== FORMAT_VERSION) throw new CorruptValueError(`unknown format version ${v}`);
}

function qosOf(bits: number): 0 | 1 | 2 {
  if (bits > 2) throw new CorruptValueError(`QoS ${bits}`);
  return bits as 0 | 1 | 2;
}

// Message flags: bits 0-1 QoS, bit 2 retain, bit 3 has properties.
function writeMessage(w: Writer, m: StoredMessage): void {
  w.u8(m.qos | (m.retain ? 4 : 0) | (m.props !== null ? 8 : 0));
  w.f64(m.expiresAt);
  w.string(m.topic);
  w.string(m.origin);
  if (m.props !== null) w.bytes(m.props);
  w.bytes(m.payload);
}

function readMessage(r: Reader): StoredMessage {
  const flags = r.u8();
  if (flags > 15) throw new CorruptValueError("unknown message flags");
  const expiresAt = r.f64();
  const topic = r.string();
  const origin = r.string();
  const props = (flags & 8) !== 0 ? r.bytes() : null;
  const payload = r.bytes();
  return {
    topic,
    payload,
    qos: qosOf(flags & 3),
    retain: (flags & 4) !== 0,
    props,
    expiresAt,
    origin,
  };
}

// Delivery flags: bits 0-1 QoS, bit 2 retain, bit 3 released (inflight only), bit 4 the
// message's cluster-wide id follows the identifiers.
function writeDelivery(w: Writer, d: StoredDelivery, released: boolean): void {
  const id = d.msg.id ?? "";
  w.u8(d.qos | (d.retain ? 4 : 0) | (released ? 8 : 0) | (id !== "" ? 16 : 0));
  // 0 = null, n + 1 = n identifiers (an empty list and null stay distinct).
  if (d.subIds === null) w.varint(0);
  else {
    w.varint(d.subIds.length + 1);
    for (const id of d.subIds) w.varint(id);
  }
  if (id !== "") w.string(id);
  writeMessage(w, d.msg);
}

function readDelivery(r: Reader): StoredDelivery & { released: boolean } {
  const flags = r.u8();
  if (flags > 31) throw new CorruptValueError("unknown delivery flags");
  const qos = qosOf(flags & 3);
  if (qos === 0) throw new CorruptValueError("a QoS 0 delivery cannot be stored");
  const n = r.varint();
  let subIds: number[] | null = null;
  if (n > 0) {
    subIds = [];
    for (let i = 1; i < n; i++) subIds.push(r.varint());
  }
  const id = (flags & 16) !== 0 ? r.string() : "";
  const m = readMessage(r);
  const msg = id === "" ? m : { ...m, id };
  return { msg, qos, retain: (flags & 4) !== 0, subIds, released: (flags & 8) !== 0 };
}

export function encodeMessage(m: StoredMessage): Uint8Array {
  const w = new Writer(encodedSize(m));
  w.u8(FORMAT_VERSION);
  writeMessage(w, m);
  return w.done();
}

export function decodeMessage(b: Uint8Array): StoredMessage {
  const r = new Reader(b);
  version(r);
  const m = readMessage(r);
  r.end();
  return m;
}

export function decodeDelivery(b: Uint8Array): StoredDelivery {
  const r = new Reader(b);
  version(r);
  const { released: _, ...d } = readDelivery(r);
  r.end();
  return d;
}

/**
 * A message's expected encoded size: room for its payload, properties and topic at once. Grown
 * by doubling from 64 bytes and sliced at the end, a 512 KiB payload took 1.5 MiB of buffers
 * beside the value, for every session it was queued for (redis_batch.ts).
 */
export function encodedSize(m: StoredMessage): number {
  return 96 + m.payload.length + (m.props?.length ?? 0) + 3 * (m.topic.length + m.origin.length);
}

/** `prefix` (ASCII, e.g. "<seq>|") followed by the encoded delivery: a queue list entry. */
export function encodeDeliveryEntry(prefix: string, d: StoredDelivery): Uint8Array {
  const w = new Writer(prefix.length + encodedSize(d.msg) + (d.subIds?.length ?? 0) * 5);
  w.ascii(prefix);
  w.u8(FORMAT_VERSION);
  writeDelivery(w, d, false);
  return w.done();
}

/** `prefix` (ASCII, e.g. "<packet id>|") followed by the encoded in-flight entry. */
export function encodeInflightEntry(prefix: string, f: StoredInflight): Uint8Array {
  const w = new Writer(prefix.length + encodedSize(f.msg) + (f.subIds?.length ?? 0) * 5 + 8);
  w.ascii(prefix);
  w.u8(FORMAT_VERSION);
  w.varint(f.packetId);
  writeDelivery(w, f, f.released);
  return w.done();
}

export function decodeInflight(b: Uint8Array): StoredInflight {
  const r = new Reader(b);
  version(r);
  const packetId = r.varint();
  if (packetId < 1 || packetId > 0xffff) throw new CorruptValueError(`packet id ${packetId}`);
  const d = readDelivery(r);
  r.end();
  return { ...d, packetId };
}

export function encodeWill(will: StoredWill): Uint8Array {
  const w = new Writer();
  w.u8(FORMAT_VERSION);
  w.varint(will.delay);
  // -1 (no expiry) is stored as 0, n as n + 1.
  w.varint(will.expiry + 1);
  writeMessage(w, will.msg);
  return w.done();
}

export function decodeWill(b: Uint8Array): StoredWill {
  const r = new Reader(b);
  version(r);
  const delay = r.varint();
  const expiry = r.varint() - 1;
  const msg = readMessage(r);
  r.end();
  return { msg, delay, expiry };
}

/** Subscriptions are few and small: JSON keeps them readable with redis-cli. */
export function encodeSubscription(s: StoredSubscription): string {
  return JSON.stringify([
    s.key,
    s.qos,
    s.noLocal,
    s.retainAsPublished,
    s.retainHandling,
    s.subscriptionId,
  ]);
}

export function decodeSubscription(value: string): StoredSubscription {
  let v: unknown;
  try {
    v = JSON.parse(value);
  } catch {
    throw new CorruptValueError("subscription is not JSON");
  }
  if (
    !Array.isArray(v) || v.length !== 6 || typeof v[0] !== "string" || ![0, 1, 2].includes(v[1]) ||
    typeof v[2] !== "boolean" || typeof v[3] !== "boolean" || ![0, 1, 2].includes(v[4]) ||
    !Number.isInteger(v[5]) || v[5] < 0
  ) {
    throw new CorruptValueError("subscription has an unknown shape");
  }
  return {
    key: v[0],
    qos: v[1],
    noLocal: v[2],
    retainAsPublished: v[3],
    retainHandling: v[4],
    subscriptionId: v[5],
  };
}
