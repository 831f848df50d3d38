/**
 * Decoders for the control packets a client sends. PUBLISH has its own hot-path
 * decoder in publish.ts. Each decoder gets the body of exactly one packet
 * (the framer already split the stream) and validates everything the spec
 * asks a server to validate about the packet's form.
 */
import { Reader } from "./bytes.ts";
import { ALLOWED, type Properties, readProperties } from "./properties.ts";
import { MalformedPacketError, ProtocolError, ReasonCode } from "./reason_codes.ts";

/** MQTT control packet types. */
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
  UNSUBSCRIBE: 10,
  UNSUBACK: 11,
  PINGREQ: 12,
  PINGRESP: 13,
  DISCONNECT: 14,
  AUTH: 15,
} as const;

/** Protocol levels on the wire: 3 = MQTT 3.1, 4 = 3.1.1, 5 = 5.0. */
export type ProtocolLevel = 3 | 4 | 5;

export interface WillData {
  topic: string;
  payload: Uint8Array;
  qos: 0 | 1 | 2;
  retain: boolean;
  properties: Properties;
}

export interface ConnectPacket {
  protocolLevel: ProtocolLevel;
  cleanStart: boolean;
  keepAlive: number;
  clientId: string;
  username?: string;
  password?: Uint8Array;
  will?: WillData;
  properties: Properties;
}

/**
 * What the broker can tell from the first bytes of a CONNECT before decoding
 * the rest: needed to answer an unsupported protocol in the client's format.
 */
export type ConnectPreamble =
  | { kind: "ok"; level: ProtocolLevel }
  | { kind: "bad-name" }
  | { kind: "bad-level"; level: number };

/** Reads protocol name and level only. */
export function connectPreamble(buf: Uint8Array, start: number, end: number): ConnectPreamble {
  const r = new Reader(buf, start, end);
  const nameLen = r.u16();
  if (r.remaining < nameLen + 1) throw new MalformedPacketError("CONNECT too short");
  // Compared byte by byte: no string is made for every CONNECT.
  const mqtt = nameIs(buf, r.pos, nameLen, MQTT_NAME);
  const mqisdp = !mqtt && nameIs(buf, r.pos, nameLen, MQISDP_NAME);
  r.pos += nameLen;
  const level = r.u8();
  if (mqtt && (level === 4 || level === 5)) return level === 4 ? OK_4 : OK_5;
  if (mqisdp && level === 3) return OK_3;
  if (!mqtt && !mqisdp) return { kind: "bad-name" };
  return { kind: "bad-level", level };
}

const MQTT_NAME = [0x4d, 0x51, 0x54, 0x54]; // "MQTT"
const MQISDP_NAME = [0x4d, 0x51, 0x49, 0x73, 0x64, 0x70]; // "MQIsdp"
const OK_3: ConnectPreamble = { kind: "ok", level: 3 };
const OK_4: ConnectPreamble = { kind: "ok", level: 4 };
const OK_5: ConnectPreamble = { kind: "ok", level: 5 };

function nameIs(buf: Uint8Array, at: number, len: number, name: readonly number[]): boolean {
  if (len !== name.length) return false;
  for (let i = 0; i < len; i++) if (buf[at + i] !== name[i]) return false;
  return true;
}

/** Decodes a CONNECT body whose preamble was accepted. */
export function decodeConnect(buf: Uint8Array, start: number, end: number): ConnectPacket {
  const r = new Reader(buf, start, end);
  const nameLen = r.u16();
  r.pos += nameLen; // the preamble already checked the name
  const protocolLevel = r.u8() as ProtocolLevel;
  const flags = r.u8();
  if (flags & 0x01) throw new MalformedPacketError("CONNECT reserved flag is set");
  const cleanStart = (flags & 0x02) !== 0;
  const willFlag = (flags & 0x04) !== 0;
  const willQos = (flags >> 3) & 0x03;
  const willRetain = (flags & 0x20) !== 0;
  const passwordFlag = (flags & 0x40) !== 0;
  const usernameFlag = (flags & 0x80) !== 0;
  if (willQos === 3) throw new MalformedPacketError("CONNECT Will QoS is 3");
  if (!willFlag && (willQos !== 0 || willRetain)) {
    throw new MalformedPacketError("CONNECT Will QoS/Retain set without Will Flag");
  }
  if (protocolLevel < 5 && passwordFlag && !usernameFlag) {
    throw new MalformedPacketError("CONNECT password without user name");
  }
  const keepAlive = r.u16();
  const v5 = protocolLevel === 5;
  const properties = v5 ? readProperties(r, ALLOWED.connect, "CONNECT") : {};
  if (properties.authenticationData && properties.authenticationMethod === undefined) {
    throw new ProtocolError(
      ReasonCode.ProtocolError,
      "CONNECT Authentication Data without Authentication Method",
    );
  }
  const clientId = r.string();
  let will: WillData | undefined;
  if (willFlag) {
    const willProps = v5 ? readProperties(r, ALLOWED.will, "CONNECT will") : {};
    // The will is forwarded as a PUBLISH: its Response Topic is held to the same rule as a
    // PUBLISH's (a Topic Name, no wildcards) [MQTT-3.3.2-13, MQTT-3.3.2-14], or every
    // subscriber of the will topic would be sent a packet it must treat as a protocol error.
    const rt = willProps.responseTopic;
    if (rt !== undefined && (rt.length === 0 || rt.includes("+") || rt.includes("#"))) {
      throw new ProtocolError(
        ReasonCode.ProtocolError,
        "CONNECT Will Response Topic is not a valid topic name",
      );
    }
    const topic = r.string();
    const payload = r.binary();
    will = { topic, payload, qos: willQos as 0 | 1 | 2, retain: willRetain, properties: willProps };
  }
  const username = usernameFlag ? r.string() : undefined;
  const password = passwordFlag ? r.binary() : undefined;
  if (r.remaining !== 0) throw new MalformedPacketError("CONNECT has trailing bytes");
  return { protocolLevel, cleanStart, keepAlive, clientId, username, password, will, properties };
}

export interface SubscriptionRequest {
  filter: string;
  qos: 0 | 1 | 2;
  noLocal: boolean;
  retainAsPublished: boolean;
  retainHandling: 0 | 1 | 2;
}

export interface SubscribePacket {
  packetId: number;
  subscriptionId?: number;
  requests: SubscriptionRequest[];
}

function packetId(r: Reader, what: string): number {
  const id = r.u16();
  if (id === 0) throw new MalformedPacketError(`${what} with Packet Identifier 0`);
  return id;
}

/** Decodes a SUBSCRIBE body. */
export function decodeSubscribe(
  buf: Uint8Array,
  start: number,
  end: number,
  level: ProtocolLevel,
): SubscribePacket {
  const r = new Reader(buf, start, end);
  const id = packetId(r, "SUBSCRIBE");
  const props = level === 5 ? readProperties(r, ALLOWED.subscribe, "SUBSCRIBE") : {};
  const requests: SubscriptionRequest[] = [];
  while (r.remaining > 0) {
    const filter = r.string();
    const opts = r.u8();
    const qos = opts & 0x03;
    if (qos === 3) {
      // MQTT 5 calls this a Protocol Error (3.8.3.1); 3.1.1 a malformed packet.
      if (level === 5) throw new ProtocolError(ReasonCode.ProtocolError, "SUBSCRIBE QoS 3");
      throw new MalformedPacketError("SUBSCRIBE QoS 3");
    }
    if (level === 5) {
      if (opts & 0xc0) throw new MalformedPacketError("SUBSCRIBE reserved option bits set");
      const retainHandling = (opts >> 4) & 0x03;
      if (retainHandling === 3) {
        throw new ProtocolError(ReasonCode.ProtocolError, "SUBSCRIBE Retain Handling 3");
      }
      requests.push({
        filter,
        qos: qos as 0 | 1 | 2,
        noLocal: (opts & 0x04) !== 0,
        retainAsPublished: (opts & 0x08) !== 0,
        retainHandling: retainHandling as 0 | 1 | 2,
      });
    } else {
      if (opts & 0xfc) throw new MalformedPacketError("SUBSCRIBE reserved option bits set");
      requests.push({
        filter,
        qos: qos as 0 | 1 | 2,
        noLocal: false,
        retainAsPublished: false,
        retainHandling: 0,
      });
    }
  }
  if (requests.length === 0) {
    throw new ProtocolError(ReasonCode.ProtocolError, "SUBSCRIBE without topic filters");
  }
  return { packetId: id, subscriptionId: props.subscriptionIdentifier, requests };
}

export interface UnsubscribePacket {
  packetId: number;
  filters: string[];
}

/** Decodes an UNSUBSCRIBE body. */
export function decodeUnsubscribe(
  buf: Uint8Array,
  start: number,
  end: number,
  level: ProtocolLevel,
): UnsubscribePacket {
  const r = new Reader(buf, start, end);
  const id = packetId(r, "UNSUBSCRIBE");
  if (level === 5) readProperties(r, ALLOWED.unsubscribe, "UNSUBSCRIBE");
  const filters: string[] = [];
  while (r.remaining > 0) filters.push(r.string());
  if (filters.length === 0) {
    throw new ProtocolError(ReasonCode.ProtocolError, "UNSUBSCRIBE without topic filters");
  }
  return { packetId: id, filters };
}

export interface AckPacket {
  packetId: number;
  reasonCode: number;
}

/** Decodes PUBACK/PUBREC/PUBREL/PUBCOMP (properties are validated and dropped). */
export function decodeAck(
  buf: Uint8Array,
  start: number,
  end: number,
  level: ProtocolLevel,
): AckPacket {
  const len = end - start;
  if (len < 2) throw new MalformedPacketError("acknowledgement too short");
  const id = (buf[start] << 8) | buf[start + 1];
  if (id === 0) throw new MalformedPacketError("acknowledgement with Packet Identifier 0");
  if (len === 2) return { packetId: id, reasonCode: 0 };
  if (level !== 5) throw new MalformedPacketError("acknowledgement longer than 2 bytes");
  const r = new Reader(buf, start + 2, end);
  const reasonCode = r.u8();
  if (r.remaining > 0) readProperties(r, ALLOWED.ack, "acknowledgement");
  if (r.remaining !== 0) throw new MalformedPacketError("acknowledgement has trailing bytes");
  return { packetId: id, reasonCode };
}

export interface DisconnectPacket {
  reasonCode: number;
  sessionExpiryInterval?: number;
}

const DISCONNECT_CODES_FROM_CLIENT = new Set([
  0x00,
  0x04,
  0x80,
  0x81,
  0x82,
  0x83,
  0x87,
  0x90,
  0x93,
  0x94,
  0x95,
  0x96,
  0x97,
  0x98,
  0x99,
]);

/** Decodes a DISCONNECT body. */
export function decodeDisconnect(
  buf: Uint8Array,
  start: number,
  end: number,
  level: ProtocolLevel,
): DisconnectPacket {
  if (level !== 5) {
    if (end !== start) throw new MalformedPacketError("DISCONNECT with a body");
    return { reasonCode: 0 };
  }
  if (end === start) return { reasonCode: 0 };
  const r = new Reader(buf, start, end);
  const reasonCode = r.u8();
  if (!DISCONNECT_CODES_FROM_CLIENT.has(reasonCode)) {
    throw new MalformedPacketError(`DISCONNECT reason code 0x${reasonCode.toString(16)}`);
  }
  const props = r.remaining > 0 ? readProperties(r, ALLOWED.disconnect, "DISCONNECT") : {};
  if (props.serverReference !== undefined) {
    throw new ProtocolError(
      ReasonCode.ProtocolError,
      "DISCONNECT from a client with Server Reference",
    );
  }
  if (r.remaining !== 0) throw new MalformedPacketError("DISCONNECT has trailing bytes");
  return { reasonCode, sessionExpiryInterval: props.sessionExpiryInterval };
}

/** An AUTH packet from a client (MQTT 5). */
export interface AuthPacket {
  reasonCode: number;
  method: string | undefined;
  data: Uint8Array | undefined;
}

/** Reason codes an AUTH may carry: Success, Continue authentication, Re-authenticate. */
const AUTH_CODES = new Set([0x00, 0x18, 0x19]);

/**
 * Decodes an AUTH body. No body means Success without properties (3.15.2.1), which a client
 * never has a reason to send; the caller decides what each code means where it arrives.
 */
export function decodeAuth(buf: Uint8Array, start: number, end: number): AuthPacket {
  if (end === start) return { reasonCode: 0, method: undefined, data: undefined };
  const r = new Reader(buf, start, end);
  const reasonCode = r.u8();
  if (!AUTH_CODES.has(reasonCode)) {
    throw new MalformedPacketError(`AUTH reason code 0x${reasonCode.toString(16)}`);
  }
  const props = r.remaining > 0 ? readProperties(r, ALLOWED.auth, "AUTH") : {};
  if (r.remaining !== 0) throw new MalformedPacketError("AUTH has trailing bytes");
  return {
    reasonCode,
    method: props.authenticationMethod,
    data: props.authenticationData,
  };
}

/** Validates the fixed-header flags of a client-to-server packet [MQTT-2.1.3-1]. */
export function checkFixedHeader(type: number, flags: number, level: ProtocolLevel | 0): void {
  switch (type) {
    case PacketType.PUBLISH:
      if ((flags & 0x06) === 0x06) throw new MalformedPacketError("PUBLISH with QoS 3");
      return;
    case PacketType.PUBREL:
    case PacketType.SUBSCRIBE:
    case PacketType.UNSUBSCRIBE:
      if (flags !== 0x02) throw new MalformedPacketError("reserved fixed-header flags are wrong");
      return;
    case PacketType.CONNECT:
    case PacketType.PUBACK:
    case PacketType.PUBREC:
    case PacketType.PUBCOMP:
    case PacketType.PINGREQ:
    case PacketType.DISCONNECT:
      if (flags !== 0) throw new MalformedPacketError("reserved fixed-header flags are wrong");
      return;
    case PacketType.AUTH:
      if (level !== 5 && level !== 0) throw new MalformedPacketError("AUTH before MQTT 5");
      if (flags !== 0) throw new MalformedPacketError("reserved fixed-header flags are wrong");
      return;
    default:
      throw new ProtocolError(
        type === 0 ? ReasonCode.MalformedPacket : ReasonCode.ProtocolError,
        `packet type ${type} is not sent by clients`,
      );
  }
}
