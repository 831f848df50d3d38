/**
 * The wire form of forwarded messages in a node's inbox: one stream entry
 * carries every message a publisher node sent to that destination in one
 * event-loop turn. Binary, versioned, and checked on decode so a foreign or
 * corrupt entry is reported (and skipped) instead of crashing the reader.
 *
 * Batch   = version:u8 (1), then records until the end.
 * Record  = groups:u16, each (len:u16, utf8), then the body.
 * Body    = flags:u8 (qos bits 0-1, retain bit 2, has-props bit 3, shared-redelivery bit 4),
 *           topic (len:u16, utf8), expiresAt:f64, origin (len:u16, utf8),
 *           [props (len:u32, bytes)], payload (len:u32, bytes).
 * The body is encoded once per message and shared by every destination;
 * only the group list differs.
 *
 * The messages' cluster-wide ids (`Message.id`) travel beside the batch, in
 * the entry's `i` field (one per record, space-separated, "" for QoS 0), so
 * a node that does not know that field still reads the batch.
 */
import { Message } from "../protocol/message.ts";

export const BATCH_VERSION = 1;

/** A forwarded entry that cannot be decoded. */
export class CodecError extends Error {
  override name = "CodecError";
}

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Flag of a message a share group's member left unacknowledged when its session ended, handed on
 * to another node's member: it goes to the record's groups only (the other subscribers had their
 * copy) and is no retained update. A node that does not know the bit skips the entry as corrupt
 * rather than deliver it to everyone.
 */
const REDELIVERY = 16;

/** The body of `msg`, shared by all destinations; `redelivery`: see REDELIVERY. */
export function encodeBody(msg: Message, redelivery = false): Uint8Array {
  const origin = utf8.encode(msg.origin);
  const props = msg.props;
  const size = 1 + 2 + msg.topicBytes.length + 8 + 2 + origin.length +
    (props === null ? 0 : 4 + props.length) + 4 + msg.payload.length;
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  let o = 0;
  out[o++] = msg.qos | (msg.retain ? 4 : 0) | (props === null ? 0 : 8) |
    (redelivery ? REDELIVERY : 0);
  view.setUint16(o, msg.topicBytes.length);
  out.set(msg.topicBytes, o + 2);
  o += 2 + msg.topicBytes.length;
  view.setFloat64(o, msg.expiresAt);
  o += 8;
  view.setUint16(o, origin.length);
  out.set(origin, o + 2);
  o += 2 + origin.length;
  if (props !== null) {
    view.setUint32(o, props.length);
    out.set(props, o + 4);
    o += 4 + props.length;
  }
  view.setUint32(o, msg.payload.length);
  out.set(msg.payload, o + 4);
  return out;
}

/**
 * Ids for the messages that enter the cluster here (and their order): moved to protocol/, where
 * the session journal gives them too; named here as well for the cluster's modules.
 */
export { idOrigin, idSeq, MessageIds } from "../protocol/message_ids.ts";

/** `[0, 0]`: no groups, shared by every record without groups. */
export const NO_GROUPS_HEADER: Uint8Array = new Uint8Array(2);

/** The group-list header of a record. */
export function encodeGroups(groups: readonly string[]): Uint8Array {
  if (groups.length === 0) return NO_GROUPS_HEADER;
  const parts = groups.map((g) => utf8.encode(g));
  const out = new Uint8Array(2 + parts.reduce((n, p) => n + 2 + p.length, 0));
  const view = new DataView(out.buffer);
  view.setUint16(0, parts.length);
  let o = 2;
  for (const p of parts) {
    view.setUint16(o, p.length);
    out.set(p, o + 2);
    o += 2 + p.length;
  }
  return out;
}

/** One decoded record. */
export interface Forwarded {
  msg: Message;
  groups: string[];
  /** A retained update's version (retain_version.ts), "" for none. */
  version: string;
  /** For `groups` only, handed on from a member whose session ended (REDELIVERY). */
  redelivery: boolean;
}

/** The `i` field of an entry: the records' ids, in order. */
export function encodeIds(ids: readonly string[]): string {
  return ids.join(" ");
}

/**
 * Decodes a whole batch; throws CodecError on anything malformed. `ids` is
 * the entry's `i` field, if any: record k gets id k (a list that does not fit
 * is ignored: the messages still count, only without ids).
 */
export function decodeBatch(data: Uint8Array, ids?: string, versions?: string): Forwarded[] {
  if (data.length === 0 || data[0] !== BATCH_VERSION) {
    throw new CodecError(`unknown batch version ${data[0]}`);
  }
  const r = new Reader(data, 1);
  const out: Forwarded[] = [];
  while (r.o < data.length) {
    const n = r.u16();
    const groups: string[] = [];
    for (let i = 0; i < n; i++) groups.push(r.text(r.u16()));
    const flags = r.u8();
    const qos = flags & 3;
    if (qos === 3 || flags > 31) throw new CodecError(`bad flags ${flags}`);
    // Topics are kept for the life of the message: copy them out of the batch buffer.
    const topicBytes = r.bytes(r.u16()).slice();
    const topic = decode(topicBytes);
    const expiresAt = r.f64();
    const origin = r.text(r.u16());
    const props = flags & 8 ? r.bytes(r.u32()) : null;
    const payload = r.bytes(r.u32());
    const msg = new Message(
      topic,
      topicBytes,
      payload,
      qos as 0 | 1 | 2,
      (flags & 4) !== 0,
      props,
      expiresAt,
      origin,
    );
    out.push({ msg, groups, version: "", redelivery: (flags & REDELIVERY) !== 0 });
  }
  if (ids !== undefined && ids !== "") {
    const list = ids.split(" ");
    if (list.length === out.length) {
      for (let k = 0; k < list.length; k++) out[k].msg.id = list[k];
    }
  }
  // The `v` field, beside the batch like `i` (an older node reads the batch without it).
  if (versions !== undefined && versions !== "") {
    const list = versions.split(" ");
    if (list.length === out.length) {
      for (let k = 0; k < list.length; k++) out[k].version = list[k];
    }
  }
  return out;
}

function decode(bytes: Uint8Array): string {
  try {
    return fromUtf8.decode(bytes);
  } catch {
    throw new CodecError("text is not UTF-8");
  }
}

class Reader {
  private view: DataView;
  constructor(private data: Uint8Array, public o: number) {
    this.view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  }
  private need(n: number): void {
    if (this.o + n > this.data.length) throw new CodecError("truncated entry");
  }
  u8(): number {
    this.need(1);
    return this.data[this.o++];
  }
  u16(): number {
    this.need(2);
    const v = this.view.getUint16(this.o);
    this.o += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.view.getUint32(this.o);
    this.o += 4;
    return v;
  }
  f64(): number {
    this.need(8);
    const v = this.view.getFloat64(this.o);
    this.o += 8;
    if (!Number.isFinite(v) || v < 0) throw new CodecError("bad expiry");
    return v;
  }
  bytes(n: number): Uint8Array {
    this.need(n);
    const v = this.data.subarray(this.o, this.o + n);
    this.o += n;
    return v;
  }
  text(n: number): string {
    return decode(this.bytes(n));
  }
}
