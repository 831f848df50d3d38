/**
 * Bounds-checked reading of MQTT wire primitives from one packet body, and the
 * helpers to write them. The reader throws {@link MalformedPacketError} on any
 * overrun, so decoders never index past the packet they were given.
 */
import { MalformedPacketError } from "./reason_codes.ts";

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const utf8Encoder = new TextEncoder();

/** Encodes a string as UTF-8. */
export function utf8(s: string): Uint8Array {
  return utf8Encoder.encode(s);
}

/**
 * Decodes an MQTT UTF-8 string strictly: ill-formed UTF-8 and U+0000 make the
 * packet malformed [MQTT-1.5.4-1, MQTT-1.5.4-2]. Short ASCII strings (almost
 * every topic) skip the TextDecoder call.
 */
export function decodeUtf8(buf: Uint8Array, start: number, end: number): string {
  const n = end - start;
  if (n <= 64) {
    let ascii = true;
    for (let i = start; i < end; i++) {
      const b = buf[i];
      if (b === 0) throw new MalformedPacketError("string contains U+0000");
      if (b > 0x7f) {
        ascii = false;
        break;
      }
    }
    if (ascii) {
      return String.fromCharCode.apply(null, buf.subarray(start, end) as unknown as number[]);
    }
  }
  let s: string;
  try {
    s = strictUtf8.decode(buf.subarray(start, end));
  } catch {
    throw new MalformedPacketError("string is not well-formed UTF-8");
  }
  if (s.includes("\u0000")) throw new MalformedPacketError("string contains U+0000");
  return s;
}

/** True when the bytes are well-formed UTF-8 (used for Payload Format Indicator 1). */
export function isWellFormedUtf8(bytes: Uint8Array): boolean {
  try {
    strictUtf8.decode(bytes);
    return true;
  } catch {
    return false;
  }
}

/** Sequential reader over `buf[pos, end)`. */
export class Reader {
  constructor(public buf: Uint8Array, public pos: number, public end: number) {}

  get remaining(): number {
    return this.end - this.pos;
  }

  u8(): number {
    if (this.pos >= this.end) throw new MalformedPacketError("packet too short");
    return this.buf[this.pos++];
  }

  u16(): number {
    if (this.pos + 2 > this.end) throw new MalformedPacketError("packet too short");
    const v = (this.buf[this.pos] << 8) | this.buf[this.pos + 1];
    this.pos += 2;
    return v;
  }

  u32(): number {
    if (this.pos + 4 > this.end) throw new MalformedPacketError("packet too short");
    const b = this.buf;
    const p = this.pos;
    this.pos += 4;
    return ((b[p] << 24) >>> 0) + ((b[p + 1] << 16) | (b[p + 2] << 8) | b[p + 3]);
  }

  varint(): number {
    let value = 0;
    let mul = 1;
    for (let i = 0; i < 4; i++) {
      const b = this.u8();
      value += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) return value;
      mul *= 128;
    }
    throw new MalformedPacketError("variable byte integer longer than 4 bytes");
  }

  /** A length-prefixed UTF-8 string. */
  string(): string {
    const len = this.u16();
    if (this.pos + len > this.end) throw new MalformedPacketError("string overruns packet");
    const s = decodeUtf8(this.buf, this.pos, this.pos + len);
    this.pos += len;
    return s;
  }

  /** Length-prefixed binary data, copied so it outlives the read buffer. */
  binary(): Uint8Array {
    const len = this.u16();
    if (this.pos + len > this.end) throw new MalformedPacketError("binary data overruns packet");
    const out = this.buf.slice(this.pos, this.pos + len);
    this.pos += len;
    return out;
  }
}

/** Number of bytes the Variable Byte Integer encoding of `n` takes. */
export function varintSize(n: number): number {
  return n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4;
}

/** Writes `n` as a Variable Byte Integer at `pos`; returns the next position. */
export function writeVarint(buf: Uint8Array, pos: number, n: number): number {
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    buf[pos++] = b;
  } while (n > 0);
  return pos;
}

/** Growable byte writer for the rare packets that are built field by field. */
export class Writer {
  buf = new Uint8Array(64);
  len = 0;

  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  u8(v: number): this {
    this.ensure(1);
    this.buf[this.len++] = v;
    return this;
  }

  u16(v: number): this {
    this.ensure(2);
    this.buf[this.len++] = v >> 8;
    this.buf[this.len++] = v & 0xff;
    return this;
  }

  u32(v: number): this {
    this.ensure(4);
    this.buf[this.len++] = (v >>> 24) & 0xff;
    this.buf[this.len++] = (v >>> 16) & 0xff;
    this.buf[this.len++] = (v >>> 8) & 0xff;
    this.buf[this.len++] = v & 0xff;
    return this;
  }

  varint(v: number): this {
    this.ensure(4);
    this.len = writeVarint(this.buf, this.len, v);
    return this;
  }

  bytes(b: Uint8Array): this {
    this.ensure(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
    return this;
  }

  /** A length-prefixed binary field. */
  binary(b: Uint8Array): this {
    return this.u16(b.length).bytes(b);
  }

  /** A length-prefixed UTF-8 string. */
  string(s: string): this {
    return this.binary(utf8(s));
  }

  result(): Uint8Array {
    return this.buf.subarray(0, this.len);
  }
}
