/**
 * Server-to-client control packets. CONNACK is written by hand because every
 * connection needs one (connect storms are a benchmark of their own); so are the rarer
 * SUBACK, UNSUBACK and DISCONNECT: mqtt-packet, which used to write them, fills a cache of
 * 65,536 two-byte Buffers on first use: 6.8 MB and 28 % of a running broker's heap objects,
 * which every mark-compact had to trace (issue 14). Tests check all of them against mqtt-packet.
 */
import { utf8, varintSize, Writer, writeVarint } from "./bytes.ts";
import type { ProtocolLevel } from "./decode.ts";
import { Prop } from "./properties.ts";
import { connackReturnCodeV3 } from "./reason_codes.ts";

/** CONNACK properties the broker sends (MQTT 5 only). */
export interface ConnackProperties {
  sessionExpiryInterval?: number;
  receiveMaximum?: number;
  retainAvailable?: boolean;
  maximumPacketSize?: number;
  assignedClientIdentifier?: string;
  topicAliasMaximum?: number;
  reasonString?: string;
  wildcardSubscriptionAvailable?: boolean;
  subscriptionIdentifiersAvailable?: boolean;
  sharedSubscriptionAvailable?: boolean;
  serverKeepAlive?: number;
  /** Enhanced authentication: the method of the CONNECT, and the server's last data. */
  authenticationMethod?: string;
  authenticationData?: Uint8Array;
}

/**
 * CONNACK. For MQTT 3.1.1 the v5 reason is mapped to a return code. When the
 * client limits packet size, the reason string is dropped first [MQTT-3.1.2-25].
 */
export function encodeConnack(
  level: ProtocolLevel,
  sessionPresent: boolean,
  reasonCode: number,
  properties: ConnackProperties = {},
  clientMaxPacket = 0,
): Uint8Array {
  if (level !== 5) {
    // The accepted forms are shared: the outbox copies what it is given.
    if (reasonCode === 0) return sessionPresent ? CONNACK_V3_PRESENT : CONNACK_V3_NEW;
    return Uint8Array.of(0x20, 2, sessionPresent ? 1 : 0, connackReturnCodeV3(reasonCode));
  }
  const out = connackV5(sessionPresent, reasonCode, properties, true);
  if (clientMaxPacket > 0 && out.length > clientMaxPacket && properties.reasonString) {
    return connackV5(sessionPresent, reasonCode, properties, false);
  }
  return out;
}

const CONNACK_V3_NEW = Uint8Array.of(0x20, 2, 0, 0);
const CONNACK_V3_PRESENT = Uint8Array.of(0x20, 2, 1, 0);

/**
 * Encodes a v5 CONNACK into one array sized up front (one per CONNECT: the connect rate is
 * bounded by what each connection costs, see issue 14).
 */
function connackV5(
  sessionPresent: boolean,
  reasonCode: number,
  p: ConnackProperties,
  withReason: boolean,
): Uint8Array {
  const assigned = p.assignedClientIdentifier === undefined
    ? null
    : utf8(p.assignedClientIdentifier);
  const reason = !withReason || p.reasonString === undefined ? null : utf8(p.reasonString);
  const method = p.authenticationMethod === undefined ? null : utf8(p.authenticationMethod);
  const data = p.authenticationData ?? null;
  let props = 0;
  if (p.sessionExpiryInterval !== undefined) props += 5;
  if (p.receiveMaximum !== undefined) props += 3;
  if (p.retainAvailable !== undefined) props += 2;
  if (p.maximumPacketSize !== undefined) props += 5;
  if (assigned !== null) props += 3 + assigned.length;
  if (p.topicAliasMaximum !== undefined) props += 3;
  if (reason !== null) props += 3 + reason.length;
  if (p.wildcardSubscriptionAvailable !== undefined) props += 2;
  if (p.subscriptionIdentifiersAvailable !== undefined) props += 2;
  if (p.sharedSubscriptionAvailable !== undefined) props += 2;
  if (p.serverKeepAlive !== undefined) props += 3;
  if (method !== null) props += 3 + method.length;
  if (data !== null) props += 3 + data.length;
  const body = 2 + varintSize(props) + props;
  const out = new Uint8Array(1 + varintSize(body) + body);
  let o = 0;
  out[o++] = 0x20;
  o = writeVarint(out, o, body);
  out[o++] = sessionPresent ? 1 : 0;
  out[o++] = reasonCode;
  o = writeVarint(out, o, props);
  const u16 = (id: number, v: number) => {
    out[o++] = id;
    out[o++] = v >> 8;
    out[o++] = v & 0xff;
  };
  const u32 = (id: number, v: number) => {
    out[o++] = id;
    out[o++] = v >>> 24;
    out[o++] = (v >>> 16) & 0xff;
    out[o++] = (v >>> 8) & 0xff;
    out[o++] = v & 0xff;
  };
  const flag = (id: number, v: boolean | undefined) => {
    if (v === undefined) return;
    out[o++] = id;
    out[o++] = v ? 1 : 0;
  };
  const str = (id: number, b: Uint8Array) => {
    u16(id, b.length);
    out.set(b, o);
    o += b.length;
  };
  if (p.sessionExpiryInterval !== undefined) {
    u32(Prop.SessionExpiryInterval, p.sessionExpiryInterval);
  }
  if (p.receiveMaximum !== undefined) u16(Prop.ReceiveMaximum, p.receiveMaximum);
  flag(Prop.RetainAvailable, p.retainAvailable);
  if (p.maximumPacketSize !== undefined) u32(Prop.MaximumPacketSize, p.maximumPacketSize);
  if (assigned !== null) str(Prop.AssignedClientIdentifier, assigned);
  if (p.topicAliasMaximum !== undefined) u16(Prop.TopicAliasMaximum, p.topicAliasMaximum);
  if (reason !== null) str(Prop.ReasonString, reason);
  flag(Prop.WildcardSubscriptionAvailable, p.wildcardSubscriptionAvailable);
  flag(Prop.SubscriptionIdentifierAvailable, p.subscriptionIdentifiersAvailable);
  flag(Prop.SharedSubscriptionAvailable, p.sharedSubscriptionAvailable);
  if (p.serverKeepAlive !== undefined) u16(Prop.ServerKeepAlive, p.serverKeepAlive);
  if (method !== null) str(Prop.AuthenticationMethod, method);
  if (data !== null) str(Prop.AuthenticationData, data);
  return out;
}

/**
 * AUTH from the server (enhanced authentication, MQTT 5): Continue authentication (0x18) or
 * Success (0x00, after a re-authentication), with the method and the server's data.
 */
export function encodeAuth(reasonCode: number, method: string, data?: Uint8Array): Uint8Array {
  const props = new Writer().u8(Prop.AuthenticationMethod).string(method);
  if (data !== undefined) props.u8(Prop.AuthenticationData).binary(data);
  const body = new Writer().u8(reasonCode).varint(props.len).bytes(props.result());
  return new Writer().u8(0xf0).varint(body.len).bytes(body.result()).result().slice();
}

/**
 * An acknowledgement with a packet identifier and one reason code per filter: SUBACK, and the
 * MQTT 5 UNSUBACK. MQTT 5 adds an empty property length before the codes.
 */
function ackWithCodes(type: number, level: ProtocolLevel, packetId: number, codes: number[]) {
  const v5 = level === 5 ? 1 : 0;
  const body = 2 + v5 + codes.length;
  const out = new Uint8Array(1 + varintSize(body) + body);
  out[0] = type;
  let o = writeVarint(out, 1, body);
  out[o++] = packetId >> 8;
  out[o++] = packetId & 0xff;
  if (v5) out[o++] = 0;
  for (const code of codes) out[o++] = code;
  return out;
}

/** SUBACK with one code per filter (3.1.1 failures become 0x80). */
export function encodeSuback(level: ProtocolLevel, packetId: number, codes: number[]): Uint8Array {
  const granted = level === 5 ? codes : codes.map((c) => (c >= 0x80 ? 0x80 : c));
  return ackWithCodes(0x90, level, packetId, granted);
}

/** UNSUBACK; 3.1.1 carries no reason codes. */
export function encodeUnsuback(
  level: ProtocolLevel,
  packetId: number,
  codes: number[],
): Uint8Array {
  return ackWithCodes(0xb0, level, packetId, level === 5 ? codes : []);
}

/**
 * DISCONNECT from the server (MQTT 5 only; 3.1.1 servers just close). The reason string is
 * dropped when it would not fit the client's Maximum Packet Size [MQTT-3.14.2-3].
 */
export function encodeDisconnect(
  reasonCode: number,
  reasonString?: string,
  clientMaxPacket = 0,
): Uint8Array {
  const props = new Writer();
  if (reasonString) props.u8(Prop.ReasonString).string(reasonString);
  const body = new Writer().u8(reasonCode).varint(props.len).bytes(props.result());
  const out = new Writer().u8(0xe0).varint(body.len).bytes(body.result()).result();
  if (reasonString && clientMaxPacket > 0 && out.length > clientMaxPacket) {
    return encodeDisconnect(reasonCode);
  }
  return out.slice();
}
