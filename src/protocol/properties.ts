/**
 * MQTT 5 properties: identifiers, the generic validating reader used for
 * control packets, and the writer for properties that are passed through.
 */
import { type Reader, utf8, Writer } from "./bytes.ts";
import { MalformedPacketError, ProtocolError, ReasonCode } from "./reason_codes.ts";

export const Prop = {
  PayloadFormatIndicator: 0x01,
  MessageExpiryInterval: 0x02,
  ContentType: 0x03,
  ResponseTopic: 0x08,
  CorrelationData: 0x09,
  SubscriptionIdentifier: 0x0b,
  SessionExpiryInterval: 0x11,
  AssignedClientIdentifier: 0x12,
  ServerKeepAlive: 0x13,
  AuthenticationMethod: 0x15,
  AuthenticationData: 0x16,
  RequestProblemInformation: 0x17,
  WillDelayInterval: 0x18,
  RequestResponseInformation: 0x19,
  ResponseInformation: 0x1a,
  ServerReference: 0x1c,
  ReasonString: 0x1f,
  ReceiveMaximum: 0x21,
  TopicAliasMaximum: 0x22,
  TopicAlias: 0x23,
  MaximumQoS: 0x24,
  RetainAvailable: 0x25,
  UserProperty: 0x26,
  MaximumPacketSize: 0x27,
  WildcardSubscriptionAvailable: 0x28,
  SubscriptionIdentifierAvailable: 0x29,
  SharedSubscriptionAvailable: 0x2a,
} as const;

/** Properties a client may send, decoded. Absent fields were not present. */
export interface Properties {
  payloadFormatIndicator?: number;
  messageExpiryInterval?: number;
  contentType?: string;
  responseTopic?: string;
  correlationData?: Uint8Array;
  subscriptionIdentifier?: number;
  sessionExpiryInterval?: number;
  authenticationMethod?: string;
  authenticationData?: Uint8Array;
  requestProblemInformation?: number;
  willDelayInterval?: number;
  requestResponseInformation?: number;
  reasonString?: string;
  receiveMaximum?: number;
  topicAliasMaximum?: number;
  topicAlias?: number;
  maximumPacketSize?: number;
  serverReference?: string;
  userProperties?: [string, string][];
}

type Kind = "byte" | "u16" | "u32" | "varint" | "string" | "binary" | "pair";

const KIND: Record<number, [keyof Properties, Kind]> = {
  [Prop.PayloadFormatIndicator]: ["payloadFormatIndicator", "byte"],
  [Prop.MessageExpiryInterval]: ["messageExpiryInterval", "u32"],
  [Prop.ContentType]: ["contentType", "string"],
  [Prop.ResponseTopic]: ["responseTopic", "string"],
  [Prop.CorrelationData]: ["correlationData", "binary"],
  [Prop.SubscriptionIdentifier]: ["subscriptionIdentifier", "varint"],
  [Prop.SessionExpiryInterval]: ["sessionExpiryInterval", "u32"],
  [Prop.AuthenticationMethod]: ["authenticationMethod", "string"],
  [Prop.AuthenticationData]: ["authenticationData", "binary"],
  [Prop.RequestProblemInformation]: ["requestProblemInformation", "byte"],
  [Prop.WillDelayInterval]: ["willDelayInterval", "u32"],
  [Prop.RequestResponseInformation]: ["requestResponseInformation", "byte"],
  [Prop.ReasonString]: ["reasonString", "string"],
  [Prop.ReceiveMaximum]: ["receiveMaximum", "u16"],
  [Prop.TopicAliasMaximum]: ["topicAliasMaximum", "u16"],
  [Prop.TopicAlias]: ["topicAlias", "u16"],
  [Prop.MaximumPacketSize]: ["maximumPacketSize", "u32"],
  [Prop.ServerReference]: ["serverReference", "string"],
  [Prop.UserProperty]: ["userProperties", "pair"],
};

/** Which properties each client-to-server packet may carry [MQTT-2.2.2.2]. */
export const ALLOWED = {
  connect: new Set<number>([
    Prop.SessionExpiryInterval,
    Prop.AuthenticationMethod,
    Prop.AuthenticationData,
    Prop.RequestProblemInformation,
    Prop.RequestResponseInformation,
    Prop.ReceiveMaximum,
    Prop.TopicAliasMaximum,
    Prop.UserProperty,
    Prop.MaximumPacketSize,
  ]),
  will: new Set<number>([
    Prop.PayloadFormatIndicator,
    Prop.MessageExpiryInterval,
    Prop.ContentType,
    Prop.ResponseTopic,
    Prop.CorrelationData,
    Prop.WillDelayInterval,
    Prop.UserProperty,
  ]),
  ack: new Set<number>([Prop.ReasonString, Prop.UserProperty]),
  subscribe: new Set<number>([Prop.SubscriptionIdentifier, Prop.UserProperty]),
  unsubscribe: new Set<number>([Prop.UserProperty]),
  disconnect: new Set<number>([
    Prop.SessionExpiryInterval,
    Prop.ReasonString,
    Prop.UserProperty,
    Prop.ServerReference,
  ]),
  auth: new Set<number>([
    Prop.AuthenticationMethod,
    Prop.AuthenticationData,
    Prop.ReasonString,
    Prop.UserProperty,
  ]),
} as const;

/**
 * Reads a property block: length, then properties. Unknown or misplaced
 * identifiers are malformed; a repeated single-valued property is a protocol
 * error; out-of-range values are protocol errors.
 */
export function readProperties(r: Reader, allowed: ReadonlySet<number>, where: string): Properties {
  const len = r.varint();
  const end = r.pos + len;
  if (end > r.end) throw new MalformedPacketError(`${where}: properties overrun the packet`);
  const saved = r.end;
  r.end = end;
  const props: Properties = {};
  const rec = props as Record<string, unknown>;
  while (r.pos < end) {
    const id = r.varint();
    const spec = KIND[id];
    if (!spec || !allowed.has(id)) {
      throw new MalformedPacketError(`${where}: property 0x${id.toString(16)} is not allowed here`);
    }
    const [name, kind] = spec;
    if (kind === "pair") {
      const k = r.string();
      const v = r.string();
      (props.userProperties ??= []).push([k, v]);
      continue;
    }
    if (rec[name] !== undefined) {
      throw new ProtocolError(
        ReasonCode.ProtocolError,
        `${where}: property ${name} appears more than once`,
      );
    }
    switch (kind) {
      case "byte":
        rec[name] = r.u8();
        break;
      case "u16":
        rec[name] = r.u16();
        break;
      case "u32":
        rec[name] = r.u32();
        break;
      case "varint":
        rec[name] = r.varint();
        break;
      case "string":
        rec[name] = r.string();
        break;
      case "binary":
        rec[name] = r.binary();
        break;
    }
  }
  r.end = saved;
  checkValues(props, where);
  return props;
}

/** A property that is a boolean on the wire; a top-level function, not a closure per packet. */
function bool01(v: number | undefined, name: string, where: string): void {
  if (v !== undefined && v > 1) {
    throw new ProtocolError(ReasonCode.ProtocolError, `${where}: ${name} must be 0 or 1`);
  }
}

function checkValues(p: Properties, where: string): void {
  bool01(p.payloadFormatIndicator, "Payload Format Indicator", where);
  bool01(p.requestProblemInformation, "Request Problem Information", where);
  bool01(p.requestResponseInformation, "Request Response Information", where);
  if (p.receiveMaximum === 0) {
    throw new ProtocolError(ReasonCode.ProtocolError, `${where}: Receive Maximum of 0`);
  }
  if (p.maximumPacketSize === 0) {
    throw new ProtocolError(ReasonCode.ProtocolError, `${where}: Maximum Packet Size of 0`);
  }
  if (p.subscriptionIdentifier === 0) {
    throw new ProtocolError(ReasonCode.ProtocolError, `${where}: Subscription Identifier of 0`);
  }
}

/**
 * Encodes the properties that travel unchanged from publisher to subscriber
 * (payload format, content type, response topic, correlation data, user
 * properties) as raw property bytes, or null when there are none.
 */
export function encodePassthrough(p: Properties): Uint8Array | null {
  const w = new Writer();
  if (p.payloadFormatIndicator !== undefined) {
    w.u8(Prop.PayloadFormatIndicator).u8(p.payloadFormatIndicator);
  }
  if (p.contentType !== undefined) w.u8(Prop.ContentType).string(p.contentType);
  if (p.responseTopic !== undefined) w.u8(Prop.ResponseTopic).string(p.responseTopic);
  if (p.correlationData !== undefined) w.u8(Prop.CorrelationData).binary(p.correlationData);
  for (const [k, v] of p.userProperties ?? []) {
    w.u8(Prop.UserProperty).binary(utf8(k)).binary(utf8(v));
  }
  return w.len === 0 ? null : w.result().slice();
}
