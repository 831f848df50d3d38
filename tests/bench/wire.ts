/**
 * Hand-made MQTT encoding for the load generator.
 *
 * The generator must be cheaper than the broker it measures, so it never builds packets
 * on the hot path: every PUBLISH is encoded once into a batch template and only the
 * packet id, sequence number and timestamp are patched in place before each write.
 */

/** MQTT protocol level: 4 is MQTT 3.1.1, 5 is MQTT 5.0. */
export type ProtocolLevel = 4 | 5;

/** Control packet types used by the generator (upper nibble of the first byte). */
export const PacketType = {
  CONNECT: 1,
  CONNACK: 2,
  PUBLISH: 3,
  PUBACK: 4,
  PUBREC: 5,
  PUBREL: 6,
  PUBCOMP: 7,
  SUBSCRIBE: 8,
  SUBACK: 9,
  PINGREQ: 12,
  PINGRESP: 13,
  DISCONNECT: 14,
} as const;

/** Bytes at the start of every bench payload: publisher index, sequence number, send time. */
export const PAYLOAD_HEADER_BYTES = 16;

const encoder = new TextEncoder();

/** Thrown when bytes from the broker cannot be a valid MQTT packet. */
export class WireError extends Error {
  override name = "WireError";
}

/** Number of bytes the Remaining Length varint takes for `n`. */
export function varintSize(n: number): number {
  if (n < 128) return 1;
  if (n < 16_384) return 2;
  if (n < 2_097_152) return 3;
  return 4;
}

function writeVarint(buf: Uint8Array, at: number, n: number): number {
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 128;
    buf[at++] = byte;
  } while (n > 0);
  return at;
}

/** Builds a packet from its first byte and body. */
function packet(first: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(1 + varintSize(body.length) + body.length);
  out[0] = first;
  const at = writeVarint(out, 1, body.length);
  out.set(body, at);
  return out;
}

function utf8(s: string): Uint8Array {
  const bytes = encoder.encode(s);
  const out = new Uint8Array(2 + bytes.length);
  out[0] = bytes.length >> 8;
  out[1] = bytes.length & 0xff;
  out.set(bytes, 2);
  return out;
}

/** `parts` joined into one buffer. */
export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A packet: fixed header byte `first`, the Remaining Length, then `body`. */
export function framed(first: number, body: readonly number[]): Uint8Array {
  const len: number[] = [];
  let n = body.length;
  do {
    let b = n & 0x7f;
    n >>= 7;
    if (n > 0) b |= 0x80;
    len.push(b);
  } while (n > 0);
  return new Uint8Array([first, ...len, ...body]);
}

/**
 * CONNECT without will or credentials. With `sessionExpiry` (seconds) the session is persistent:
 * Clean Start 0 and, on MQTT 5, a Session Expiry Interval property (3.1.1: Clean Session 0).
 */
export function encodeConnect(
  version: ProtocolLevel,
  clientId: string,
  keepAlive: number,
  sessionExpiry?: number,
): Uint8Array {
  const persistent = sessionExpiry !== undefined;
  const header = new Uint8Array([
    0,
    4,
    0x4d,
    0x51,
    0x54,
    0x54,
    version,
    persistent ? 0x00 : 0x02,
    keepAlive >> 8,
    keepAlive & 0xff,
  ]);
  const expiry = sessionExpiry ?? 0;
  // Property 0x11, Session Expiry Interval, a four-byte integer.
  const sessionProps = [
    5,
    0x11,
    expiry >>> 24,
    (expiry >>> 16) & 0xff,
    (expiry >>> 8) & 0xff,
    expiry & 0xff,
  ];
  const props = version === 5 ? [new Uint8Array(persistent ? sessionProps : [0])] : [];
  return packet(PacketType.CONNECT << 4, concat([header, ...props, utf8(clientId)]));
}

/** SUBSCRIBE to one filter at `qos`. */
export function encodeSubscribe(
  version: ProtocolLevel,
  packetId: number,
  filter: string,
  qos: number,
): Uint8Array {
  const id = new Uint8Array([packetId >> 8, packetId & 0xff]);
  const props = version === 5 ? [new Uint8Array([0])] : [];
  return packet(0x82, concat([id, ...props, utf8(filter), new Uint8Array([qos])]));
}

/** A 4-byte acknowledgement (PUBACK, PUBREC, PUBREL, PUBCOMP) with reason "success". */
export function encodeAck(type: number, packetId: number): Uint8Array {
  const out = new Uint8Array(4);
  writeAck(out, 0, type, packetId);
  return out;
}

/** Writes a 4-byte acknowledgement into `buf` at `at`; returns the offset after it. */
export function writeAck(buf: Uint8Array, at: number, type: number, packetId: number): number {
  buf[at] = (type << 4) | (type === PacketType.PUBREL ? 0x02 : 0);
  buf[at + 1] = 2;
  buf[at + 2] = packetId >> 8;
  buf[at + 3] = packetId & 0xff;
  return at + 4;
}

/** PINGREQ, to keep idle connections alive. */
export const PINGREQ: Uint8Array = new Uint8Array([0xc0, 0]);

/** DISCONNECT with reason "normal" (valid for both protocol levels). */
export const DISCONNECT: Uint8Array = new Uint8Array([0xe0, 0]);

/** A buffer of `count` identical PUBLISH packets and where to patch each of them. */
export interface PublishBatch {
  /** All packets back to back; write a prefix of `n * packetBytes` to send `n`. */
  readonly buf: Uint8Array;
  readonly view: DataView;
  readonly count: number;
  readonly packetBytes: number;
  /** Offset of the packet id inside one packet, or -1 for QoS 0. */
  readonly packetIdAt: number;
  /** Offset of the payload inside one packet. */
  readonly payloadAt: number;
}

/** Encodes `count` PUBLISH packets to `topic`; payload bytes after the bench header are zero. */
export function encodePublishBatch(
  version: ProtocolLevel,
  topic: string,
  qos: number,
  payloadBytes: number,
  count: number,
  publisherIndex: number,
): PublishBatch {
  if (payloadBytes < PAYLOAD_HEADER_BYTES) {
    throw new RangeError(`payload must be at least ${PAYLOAD_HEADER_BYTES} bytes`);
  }
  const topicBytes = utf8(topic);
  const idBytes = qos > 0 ? 2 : 0;
  const propBytes = version === 5 ? 1 : 0;
  const bodyBytes = topicBytes.length + idBytes + propBytes + payloadBytes;
  const headerBytes = 1 + varintSize(bodyBytes);
  const packetBytes = headerBytes + bodyBytes;
  const buf = new Uint8Array(packetBytes * count);
  const view = new DataView(buf.buffer);
  const packetIdAt = qos > 0 ? headerBytes + topicBytes.length : -1;
  const payloadAt = headerBytes + topicBytes.length + idBytes + propBytes;
  for (let i = 0; i < count; i++) {
    const base = i * packetBytes;
    buf[base] = (PacketType.PUBLISH << 4) | (qos << 1);
    writeVarint(buf, base + 1, bodyBytes);
    buf.set(topicBytes, base + headerBytes);
    // The v5 property length byte stays 0: no properties.
    view.setUint32(base + payloadAt, publisherIndex);
  }
  return { buf, view, count, packetBytes, packetIdAt, payloadAt };
}

/** Patches message `i` of a batch with its packet id (ignored for QoS 0), sequence and send time. */
export function patchPublish(
  batch: PublishBatch,
  i: number,
  packetId: number,
  seq: number,
  sentAtMs: number,
): void {
  const base = i * batch.packetBytes;
  if (batch.packetIdAt >= 0) batch.view.setUint16(base + batch.packetIdAt, packetId);
  batch.view.setUint32(base + batch.payloadAt + 4, seq);
  batch.view.setFloat64(base + batch.payloadAt + 8, sentAtMs);
}

/** Receives one complete packet: `buf[body, end)` is its variable header and payload. */
export type PacketHandler = (
  type: number,
  flags: number,
  buf: Uint8Array,
  body: number,
  end: number,
) => void;

/**
 * Splits a byte stream into packets without copying complete packets.
 *
 * Packets wholly inside a chunk are handed out as views of that chunk (valid only during
 * the callback); only a trailing partial packet is copied aside until the rest arrives.
 */
export class FrameReader {
  #carry = new Uint8Array(64 * 1024);
  #carryLength = 0;

  /** Feeds `chunk[0, length)` and calls `onPacket` for every complete packet. */
  push(chunk: Uint8Array, length: number, onPacket: PacketHandler): void {
    let data = chunk;
    let end = length;
    if (this.#carryLength > 0) {
      this.#reserve(this.#carryLength + length);
      this.#carry.set(chunk.subarray(0, length), this.#carryLength);
      data = this.#carry;
      end = this.#carryLength + length;
    }
    let p = 0;
    while (end - p >= 2) {
      let remaining = 0;
      let multiplier = 1;
      let i = p + 1;
      let byte: number;
      let complete = true;
      do {
        if (i >= end) {
          complete = false;
          break;
        }
        byte = data[i++];
        remaining += (byte & 127) * multiplier;
        multiplier *= 128;
        if (multiplier > 268_435_456) throw new WireError("malformed remaining length");
      } while (byte & 128);
      if (!complete || i + remaining > end) break;
      onPacket(data[p] >> 4, data[p] & 15, data, i, i + remaining);
      p = i + remaining;
    }
    const rest = end - p;
    if (data === this.#carry) {
      this.#carry.copyWithin(0, p, end);
    } else {
      this.#reserve(rest);
      this.#carry.set(data.subarray(p, end), 0);
    }
    this.#carryLength = rest;
  }

  #reserve(bytes: number): void {
    if (bytes <= this.#carry.length) return;
    let size = this.#carry.length;
    while (size < bytes) size *= 2;
    const bigger = new Uint8Array(size);
    bigger.set(this.#carry.subarray(0, this.#carryLength));
    this.#carry = bigger;
  }
}

/** Reads a big-endian u16 (packet ids, string lengths). */
export function readU16(buf: Uint8Array, at: number): number {
  return (buf[at] << 8) | buf[at + 1];
}

/** Decodes a varint at `at`; returns [value, offset after it]. */
export function readVarint(buf: Uint8Array, at: number): [number, number] {
  let value = 0;
  let multiplier = 1;
  let byte: number;
  do {
    byte = buf[at++];
    value += (byte & 127) * multiplier;
    multiplier *= 128;
  } while (byte & 128);
  return [value, at];
}

/** Offset of the payload in a received PUBLISH whose body starts at `body`. */
export function publishPayloadAt(
  buf: Uint8Array,
  body: number,
  qos: number,
  version: ProtocolLevel,
): number {
  let at = body + 2 + readU16(buf, body);
  if (qos > 0) at += 2;
  if (version === 5) {
    const [propLength, after] = readVarint(buf, at);
    at = after + propLength;
  }
  return at;
}

/** Packet id of a received PUBLISH with QoS > 0. */
export function publishPacketId(buf: Uint8Array, body: number): number {
  return readU16(buf, body + 2 + readU16(buf, body));
}

/** What the generator needs from a CONNACK. */
export interface ConnackInfo {
  readonly reasonCode: number;
  /** Receive Maximum from the properties (v5), or undefined when absent / 3.1.1. */
  readonly receiveMaximum?: number;
}

// Byte width of each CONNACK property; -1 = UTF-8 string / binary, -2 = string pair, 0 = varint.
const PROPERTY_WIDTH: Record<number, number> = {
  0x11: 4, // session expiry interval
  0x12: -1, // assigned client identifier
  0x13: 2, // server keep alive
  0x15: -1, // authentication method
  0x16: -1, // authentication data
  0x1a: -1, // response information
  0x1c: -1, // server reference
  0x1f: -1, // reason string
  0x21: 2, // receive maximum
  0x22: 2, // topic alias maximum
  0x24: 1, // maximum qos
  0x25: 1, // retain available
  0x26: -2, // user property
  0x27: 4, // maximum packet size
  0x28: 1, // wildcard subscription available
  0x29: 1, // subscription identifiers available
  0x2a: 1, // shared subscription available
};

/** Decodes the parts of a CONNACK body the generator uses. */
export function parseConnack(
  buf: Uint8Array,
  body: number,
  end: number,
  version: ProtocolLevel,
): ConnackInfo {
  const reasonCode = buf[body + 1];
  if (version !== 5 || end - body <= 2) return { reasonCode };
  const [propLength, start] = readVarint(buf, body + 2);
  const stop = start + propLength;
  let receiveMaximum: number | undefined;
  let at = start;
  while (at < stop) {
    const id = buf[at++];
    const width = PROPERTY_WIDTH[id];
    if (width === undefined) throw new WireError(`unknown CONNACK property 0x${id.toString(16)}`);
    if (id === 0x21) receiveMaximum = readU16(buf, at);
    if (width > 0) at += width;
    else if (width === -1) at += 2 + readU16(buf, at);
    else {
      at += 2 + readU16(buf, at);
      at += 2 + readU16(buf, at);
    }
  }
  return { reasonCode, receiveMaximum };
}

/** Return codes of a SUBACK body (one per filter). */
export function subackCodes(
  buf: Uint8Array,
  body: number,
  end: number,
  version: ProtocolLevel,
): number[] {
  let at = body + 2;
  if (version === 5) {
    const [propLength, after] = readVarint(buf, at);
    at = after + propLength;
  }
  return Array.from(buf.subarray(at, end));
}
