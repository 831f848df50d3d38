/**
 * Hand-written PUBLISH and acknowledgement codec: the hot path. Control packets
 * that are rare (CONNACK, SUBACK...) go through mqtt-packet in control.ts.
 * Tests check these bytes against mqtt-packet for random packets.
 */
import { decodeUtf8, isWellFormedUtf8, varintSize, writeVarint } from "./bytes.ts";
import { type EncodedPublish, Message } from "./message.ts";
import { Prop } from "./properties.ts";
import { MalformedPacketError, ProtocolError, ReasonCode } from "./reason_codes.ts";

/**
 * Decoded fields of an incoming PUBLISH. Decoding fills one reused object:
 * the broker handles one packet at a time, and this keeps the hot path free
 * of a per-packet allocation.
 */
export interface IncomingPublish {
  qos: 0 | 1 | 2;
  dup: boolean;
  retain: boolean;
  packetId: number;
  /** Topic name; "" when the packet relies on a topic alias. */
  topic: string;
  /** True when the topic equals the `last` topic passed to decodePublish (already validated). */
  known: boolean;
  topicStart: number;
  topicEnd: number;
  /** Topic Alias property, 0 when absent. */
  topicAlias: number;
  /** Message Expiry Interval in seconds, -1 when absent. */
  expiry: number;
  /** Payload Format Indicator, -1 when absent. */
  payloadFormat: number;
  propsStart: number;
  propsEnd: number;
  /** True when the property block holds properties that must not be forwarded as-is. */
  propsNeedFilter: boolean;
  payloadStart: number;
  end: number;
}

const scratch: IncomingPublish = {
  qos: 0,
  dup: false,
  retain: false,
  packetId: 0,
  topic: "",
  known: false,
  topicStart: 0,
  topicEnd: 0,
  topicAlias: 0,
  expiry: -1,
  payloadFormat: -1,
  propsStart: 0,
  propsEnd: 0,
  propsNeedFilter: false,
  payloadStart: 0,
  end: 0,
};

const ONCE_BITS: Record<number, number> = {
  [Prop.PayloadFormatIndicator]: 1,
  [Prop.MessageExpiryInterval]: 2,
  [Prop.ContentType]: 4,
  [Prop.ResponseTopic]: 8,
  [Prop.CorrelationData]: 16,
  [Prop.TopicAlias]: 32,
};

/** A topic already decoded and validated, with its own copy of the UTF-8 bytes. */
export interface KnownTopic {
  topic: string;
  bytes: Uint8Array;
}

function sameBytes(buf: Uint8Array, pos: number, known: Uint8Array): boolean {
  for (let i = known.length - 1; i >= 0; i--) if (buf[pos + i] !== known[i]) return false;
  return true;
}

function u16(buf: Uint8Array, pos: number, end: number): number {
  if (pos + 2 > end) throw new MalformedPacketError("PUBLISH too short");
  return (buf[pos] << 8) | buf[pos + 1];
}

function propStringEnd(buf: Uint8Array, pos: number, end: number, validate: boolean): number {
  const len = u16(buf, pos, end);
  const e = pos + 2 + len;
  if (e > end) throw new MalformedPacketError("PUBLISH property overruns packet");
  if (validate) decodeUtf8(buf, pos + 2, e);
  return e;
}

/**
 * Decodes the PUBLISH whose fixed-header flags are `flags` and whose body is
 * `buf[start, end)`. The result is valid until the next call.
 */
export function decodePublish(
  buf: Uint8Array,
  start: number,
  end: number,
  flags: number,
  v5: boolean,
  last: KnownTopic | null = null,
): IncomingPublish {
  const p = scratch;
  const qos = (flags >> 1) & 0x03;
  if (qos === 3) throw new MalformedPacketError("PUBLISH with QoS 3");
  p.qos = qos as 0 | 1 | 2;
  p.dup = (flags & 0x08) !== 0;
  p.retain = (flags & 0x01) !== 0;
  if (qos === 0 && p.dup) throw new MalformedPacketError("PUBLISH QoS 0 with DUP set");
  const tlen = u16(buf, start, end);
  let pos = start + 2;
  if (pos + tlen > end) throw new MalformedPacketError("PUBLISH topic overruns packet");
  p.topicStart = pos;
  p.topicEnd = pos + tlen;
  // Publishers mostly repeat one topic: comparing bytes with the last one skips the string
  // decode, the validation and the copy, and keeps the string V8 has already hashed.
  if (last !== null && last.bytes.length === tlen && tlen > 0 && sameBytes(buf, pos, last.bytes)) {
    p.topic = last.topic;
    p.known = true;
  } else {
    p.topic = decodeUtf8(buf, pos, pos + tlen);
    p.known = false;
  }
  pos += tlen;
  if (qos > 0) {
    p.packetId = u16(buf, pos, end);
    if (p.packetId === 0) throw new MalformedPacketError("PUBLISH with Packet Identifier 0");
    pos += 2;
  } else {
    p.packetId = 0;
  }
  p.topicAlias = 0;
  p.expiry = -1;
  p.payloadFormat = -1;
  p.propsNeedFilter = false;
  if (v5) {
    // Property length as Variable Byte Integer.
    let len = 0;
    let mul = 1;
    for (let i = 0;; i++) {
      if (i === 4) throw new MalformedPacketError("bad property length");
      if (pos >= end) throw new MalformedPacketError("PUBLISH too short");
      const b = buf[pos++];
      len += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) break;
      mul *= 128;
    }
    const pend = pos + len;
    if (pend > end) throw new MalformedPacketError("PUBLISH properties overrun packet");
    p.propsStart = pos;
    p.propsEnd = pend;
    let seen = 0;
    while (pos < pend) {
      const id = buf[pos++];
      // Single-valued properties may appear once; one bit each in `seen`.
      const bit = ONCE_BITS[id] ?? 0;
      if (seen & bit) {
        throw new ProtocolError(
          ReasonCode.ProtocolError,
          `PUBLISH repeats property 0x${id.toString(16)}`,
        );
      }
      seen |= bit;
      switch (id) {
        case Prop.PayloadFormatIndicator:
          if (pos >= pend) throw new MalformedPacketError("PUBLISH property overruns");
          p.payloadFormat = buf[pos++];
          if (p.payloadFormat > 1) {
            throw new ProtocolError(ReasonCode.ProtocolError, "Payload Format Indicator above 1");
          }
          break;
        case Prop.MessageExpiryInterval:
          if (pos + 4 > pend) throw new MalformedPacketError("PUBLISH property overruns");
          p.expiry = ((buf[pos] << 24) >>> 0) + ((buf[pos + 1] << 16) | (buf[pos + 2] << 8) |
            buf[pos + 3]);
          pos += 4;
          p.propsNeedFilter = true;
          break;
        case Prop.ContentType:
          pos = propStringEnd(buf, pos, pend, true);
          break;
        case Prop.ResponseTopic: {
          const e = propStringEnd(buf, pos, pend, false);
          const rt = decodeUtf8(buf, pos + 2, e);
          if (rt.length === 0 || rt.includes("+") || rt.includes("#")) {
            throw new ProtocolError(
              ReasonCode.ProtocolError,
              "Response Topic is not a valid topic name",
            );
          }
          pos = e;
          break;
        }
        case Prop.CorrelationData:
          pos = propStringEnd(buf, pos, pend, false);
          break;
        case Prop.TopicAlias:
          p.topicAlias = u16(buf, pos, pend);
          // 0 doubles as "absent" in topicAlias, so it is refused here [MQTT-3.3.2-8].
          if (p.topicAlias === 0) {
            throw new ProtocolError(ReasonCode.TopicAliasInvalid, "Topic Alias 0");
          }
          pos += 2;
          p.propsNeedFilter = true;
          break;
        case Prop.UserProperty:
          pos = propStringEnd(buf, pos, pend, true);
          pos = propStringEnd(buf, pos, pend, true);
          break;
        case Prop.SubscriptionIdentifier:
          throw new ProtocolError(
            ReasonCode.ProtocolError,
            "PUBLISH from a client with a Subscription Identifier",
          );
        default:
          throw new MalformedPacketError(`PUBLISH property 0x${id.toString(16)} not allowed`);
      }
    }
    if (pos !== pend) throw new MalformedPacketError("PUBLISH property overruns");
  } else {
    p.propsStart = p.propsEnd = pos;
  }
  p.payloadStart = pos;
  p.end = end;
  if (p.payloadFormat === 1 && !isWellFormedUtf8(buf.subarray(pos, end))) {
    p.payloadFormat = -2; // signalled to the caller: 0x99 Payload Format Invalid
  }
  return p;
}

/**
 * The forwardable property bytes, dropping alias and expiry: a view into the
 * read buffer when nothing is dropped, else a filtered copy.
 */
function passthroughProps(buf: Uint8Array, p: IncomingPublish): Uint8Array | null {
  if (p.propsEnd === p.propsStart) return null;
  if (!p.propsNeedFilter) return buf.subarray(p.propsStart, p.propsEnd);
  const out = new Uint8Array(p.propsEnd - p.propsStart);
  let n = 0;
  let pos = p.propsStart;
  while (pos < p.propsEnd) {
    const id = buf[pos];
    let next: number;
    switch (id) {
      case Prop.PayloadFormatIndicator:
        next = pos + 2;
        break;
      case Prop.MessageExpiryInterval:
        pos += 5;
        continue;
      case Prop.TopicAlias:
        pos += 3;
        continue;
      case Prop.UserProperty: {
        const a = pos + 3 + ((buf[pos + 1] << 8) | buf[pos + 2]);
        next = a + 2 + ((buf[a] << 8) | buf[a + 1]);
        break;
      }
      default: // ContentType, ResponseTopic, CorrelationData: 2-byte length prefix
        next = pos + 3 + ((buf[pos + 1] << 8) | buf[pos + 2]);
    }
    out.set(buf.subarray(pos, next), n);
    n += next - pos;
    pos = next;
  }
  return n === 0 ? null : out.subarray(0, n);
}

/**
 * Builds the shared Message for a decoded PUBLISH. Payload and properties
 * stay views into `buf` (see Message.own); `topicBytes` must be owned.
 * `dedicated` says `buf` belongs to this packet alone (never reused), so the
 * views may be kept as they are.
 */
export function toMessage(
  buf: Uint8Array,
  p: IncomingPublish,
  topic: string,
  topicBytes: Uint8Array,
  origin: string,
  now: number,
  dedicated = false,
): Message {
  const expiresAt = p.expiry >= 0 ? now + p.expiry * 1000 : 0;
  return new Message(
    topic,
    topicBytes,
    buf.subarray(p.payloadStart, p.end),
    p.qos,
    p.retain,
    passthroughProps(buf, p),
    expiresAt,
    origin,
    dedicated,
  );
}

/**
 * Payloads from this size on are not copied into each receiver's packet: the
 * packet's header is encoded alone and the payload buffer is written after it,
 * shared by every delivery of the message. Below it, one coalesced copy per
 * receiver is cheaper than an extra write.
 */
export const SHARED_PAYLOAD_MIN = 64 * 1024;

/**
 * How a PUBLISH to an MQTT 5 client uses a server-to-client Topic Alias:
 * not at all, sending the topic and the alias that now stands for it, or
 * sending only the alias (empty topic). The alias number itself differs per
 * connection: forms carry a placeholder at `aliasOffset`, patched per
 * receiver like the packet id.
 */
export const AliasMode = { None: 0, Set: 1, Use: 2 } as const;
export type AliasMode = typeof AliasMode[keyof typeof AliasMode];

/** Size in bytes of the PUBLISH `writePublish` would produce. */
function publishSize(
  msg: Message,
  v5: boolean,
  qos: number,
  expiry: number,
  subIds: readonly number[] | null,
  alias: AliasMode,
): { total: number; rem: number; propLen: number } {
  let propLen = 0;
  if (v5) {
    if (alias !== AliasMode.None) propLen += 3;
    if (expiry >= 0) propLen += 5;
    if (subIds) { for (const id of subIds) propLen += 1 + varintSize(id); }
    if (msg.props) propLen += msg.props.length;
  }
  const rem = 2 + (alias === AliasMode.Use ? 0 : msg.topicBytes.length) + (qos > 0 ? 2 : 0) +
    (v5 ? varintSize(propLen) + propLen : 0) + msg.payload.length;
  return { total: 1 + varintSize(rem) + rem, rem, propLen };
}

/** Where the last writePublish put the Topic Alias value, -1 for none (saves a result object). */
let lastAliasOffset = -1;

/** Writes a PUBLISH at the start of `out` (which must be large enough); returns the pid offset. */
function writePublish(
  out: Uint8Array,
  rem: number,
  propLen: number,
  msg: Message,
  v5: boolean,
  qos: number,
  retain: boolean,
  dup: boolean,
  packetId: number,
  expiry: number,
  subIds: readonly number[] | null,
  withPayload: boolean,
  alias: AliasMode,
): number {
  const tlen = alias === AliasMode.Use ? 0 : msg.topicBytes.length;
  out[0] = 0x30 | (dup ? 0x08 : 0) | (qos << 1) | (retain ? 1 : 0);
  let pos = writeVarint(out, 1, rem);
  out[pos++] = tlen >> 8;
  out[pos++] = tlen & 0xff;
  if (tlen !== 0) out.set(msg.topicBytes, pos);
  pos += tlen;
  let pidOffset = -1;
  if (qos > 0) {
    pidOffset = pos;
    out[pos++] = packetId >> 8;
    out[pos++] = packetId & 0xff;
  }
  lastAliasOffset = -1;
  if (v5) {
    pos = writeVarint(out, pos, propLen);
    if (alias !== AliasMode.None) {
      out[pos++] = Prop.TopicAlias;
      lastAliasOffset = pos;
      out[pos++] = 0;
      out[pos++] = 0;
    }
    if (expiry >= 0) {
      out[pos++] = Prop.MessageExpiryInterval;
      out[pos++] = (expiry >>> 24) & 0xff;
      out[pos++] = (expiry >>> 16) & 0xff;
      out[pos++] = (expiry >>> 8) & 0xff;
      out[pos++] = expiry & 0xff;
    }
    if (subIds) {
      for (const id of subIds) {
        out[pos++] = Prop.SubscriptionIdentifier;
        pos = writeVarint(out, pos, id);
      }
    }
    if (msg.props) {
      out.set(msg.props, pos);
      pos += msg.props.length;
    }
  }
  if (withPayload) out.set(msg.payload, pos);
  return pidOffset;
}

/**
 * Encodes a PUBLISH into a new buffer. `expiry` is the Message Expiry
 * Interval to send (-1 for none); `subIds` are Subscription Identifiers
 * (MQTT 5 only); `alias` leaves room for a Topic Alias (MQTT 5 only).
 */
export function encodePublish(
  msg: Message,
  v5: boolean,
  qos: number,
  retain: boolean,
  dup: boolean,
  packetId: number,
  expiry: number,
  subIds: readonly number[] | null,
  alias: AliasMode = AliasMode.None,
): EncodedPublish {
  const { total, rem, propLen } = publishSize(msg, v5, qos, expiry, subIds, alias);
  const shared = msg.payload.length >= SHARED_PAYLOAD_MIN;
  // Shared: the buffer is kept by outboxes past this packet, so it must not be a read buffer.
  if (shared) msg.own();
  const length = shared ? total - msg.payload.length : total;
  const out = new Uint8Array(length);
  const pidOffset = writePublish(
    out,
    rem,
    propLen,
    msg,
    v5,
    qos,
    retain,
    dup,
    packetId,
    expiry,
    subIds,
    !shared,
    alias,
  );
  return {
    bytes: out,
    length,
    pidOffset,
    aliasOffset: lastAliasOffset,
    expiry,
    payload: shared ? msg.payload : null,
  };
}

/**
 * One reusable encoding per form (protocol x QoS x retain flag). A fan-out
 * encodes each form of a message once into its slot and every receiver copies
 * from there; the next message overwrites the slot. Nothing allocates per
 * message, and a slot is only valid until the next publishForm call for the
 * same form — callers copy the bytes at once (Outbox.pushPublish does).
 */
interface FormSlot {
  msg: Message | null;
  form: EncodedPublish;
}

/** Slots per table: alias mode (3) x protocol (2) x QoS (3) x retain flag (2). */
function newSlots(): FormSlot[] {
  return Array.from({ length: 36 }, () => ({
    msg: null,
    form: {
      bytes: new Uint8Array(256),
      length: 0,
      pidOffset: -1,
      aliasOffset: -1,
      expiry: -1,
      payload: null,
    },
  }));
}

const slots = newSlots();
/**
 * Forms of messages with a shared payload (SHARED_PAYLOAD_MIN): only their
 * headers are encoded. These slots let go of their message once the current
 * fan-out is over, so a large payload is not kept alive by the cache.
 */
const sharedSlots = newSlots();
let sharedHeld = false;

function releaseShared(): void {
  sharedHeld = false;
  for (const s of sharedSlots) {
    s.msg = null;
    s.form.payload = null;
  }
}

/** A slot that grew past this for a large message is replaced by a small one when next used. */
const SLOT_KEEP = 64 * 1024;

/**
 * The encoding of `msg` for (protocol, QoS, retain flag, expiry, alias mode),
 * shared by every receiver of that form. Forms with Subscription Identifiers
 * are specific to one subscriber and use encodePublish.
 */
export function publishForm(
  msg: Message,
  v5: boolean,
  qos: number,
  retain: boolean,
  expiry: number,
  alias: AliasMode = AliasMode.None,
): EncodedPublish {
  const shared = msg.payload.length >= SHARED_PAYLOAD_MIN;
  const slot = (shared ? sharedSlots : slots)[
    alias * 12 + (v5 ? 6 : 0) + qos * 2 + (retain ? 1 : 0)
  ];
  const f = slot.form;
  const exp = v5 ? expiry : -1;
  if (slot.msg === msg && f.expiry === exp) return f;
  const { total, rem, propLen } = publishSize(msg, v5, qos, exp, null, alias);
  const length = shared ? total - msg.payload.length : total;
  if (f.bytes.length < length) f.bytes = new Uint8Array(Math.max(length, f.bytes.length * 2));
  else if (f.bytes.length > SLOT_KEEP && length <= SLOT_KEEP) {
    f.bytes = new Uint8Array(Math.max(256, length));
  }
  f.pidOffset = writePublish(
    f.bytes,
    rem,
    propLen,
    msg,
    v5,
    qos,
    retain,
    false,
    0,
    exp,
    null,
    !shared,
    alias,
  );
  f.aliasOffset = lastAliasOffset;
  f.length = length;
  f.expiry = exp;
  slot.msg = msg;
  if (shared) {
    // Kept by the outboxes past this packet, so it must not be a view into a read buffer.
    f.payload = msg.own().payload;
    if (!sharedHeld) {
      sharedHeld = true;
      queueMicrotask(releaseShared);
    }
  }
  return f;
}

/** Forgets cached forms, so a later publishForm re-encodes (used by tests and after bulk changes). */
export function resetPublishForms(): void {
  for (const s of slots) s.msg = null;
  releaseShared();
}

/** PUBACK/PUBREC/PUBREL/PUBCOMP; the reason code is omitted when it is 0 (MQTT 5) or not supported (3.1.1). */
export function encodeAck(
  type: number,
  packetId: number,
  reasonCode: number,
  v5: boolean,
): Uint8Array {
  const flags = type === 6 ? 0x02 : 0;
  if (v5 && reasonCode !== 0) {
    return new Uint8Array([(type << 4) | flags, 3, packetId >> 8, packetId & 0xff, reasonCode]);
  }
  return new Uint8Array([(type << 4) | flags, 2, packetId >> 8, packetId & 0xff]);
}

/** PINGRESP never changes. */
export const PINGRESP: Uint8Array = new Uint8Array([0xd0, 0x00]);
