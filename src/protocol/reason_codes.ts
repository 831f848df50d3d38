/**
 * MQTT 5 reason codes the broker sends, and the error type that carries one.
 *
 * Every failure inside the core is thrown as an {@link MqttError}, so the code
 * that closes a connection knows which CONNACK/DISCONNECT reason to send.
 */

export const ReasonCode = {
  Success: 0x00,
  GrantedQos1: 0x01,
  GrantedQos2: 0x02,
  DisconnectWithWill: 0x04,
  NoMatchingSubscribers: 0x10,
  NoSubscriptionExisted: 0x11,
  ContinueAuthentication: 0x18,
  ReAuthenticate: 0x19,
  UnspecifiedError: 0x80,
  MalformedPacket: 0x81,
  ProtocolError: 0x82,
  ImplementationSpecificError: 0x83,
  UnsupportedProtocolVersion: 0x84,
  ClientIdentifierNotValid: 0x85,
  BadUserNameOrPassword: 0x86,
  NotAuthorized: 0x87,
  ServerUnavailable: 0x88,
  ServerBusy: 0x89,
  BadAuthenticationMethod: 0x8c,
  KeepAliveTimeout: 0x8d,
  SessionTakenOver: 0x8e,
  TopicFilterInvalid: 0x8f,
  TopicNameInvalid: 0x90,
  PacketIdentifierInUse: 0x91,
  PacketIdentifierNotFound: 0x92,
  ReceiveMaximumExceeded: 0x93,
  TopicAliasInvalid: 0x94,
  PacketTooLarge: 0x95,
  MessageRateTooHigh: 0x96,
  QuotaExceeded: 0x97,
  PayloadFormatInvalid: 0x99,
  RetainNotSupported: 0x9a,
  QosNotSupported: 0x9b,
  ServerShuttingDown: 0x8b,
  SharedSubscriptionsNotSupported: 0x9e,
  SubscriptionIdentifiersNotSupported: 0xa1,
  WildcardSubscriptionsNotSupported: 0xa2,
} as const;

/** One of the {@link ReasonCode} values. */
export type ReasonCodeValue = typeof ReasonCode[keyof typeof ReasonCode];

/** A failure that ends (or refuses) an MQTT exchange with a reason code. */
export class MqttError extends Error {
  constructor(readonly code: ReasonCodeValue, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "MqttError";
  }
}

/** A packet that cannot be decoded: the spec's Malformed Packet (0x81). */
export class MalformedPacketError extends MqttError {
  constructor(message: string) {
    super(ReasonCode.MalformedPacket, message);
    this.name = "MalformedPacketError";
  }
}

/**
 * A well-formed packet that breaks a protocol rule: Protocol Error (0x82), or
 * the more specific code the spec names for the rule (0x93, 0x94, 0x90...).
 */
export class ProtocolError extends MqttError {
  constructor(code: ReasonCodeValue, message: string) {
    super(code, message);
    this.name = "ProtocolError";
  }
}

/**
 * MQTT 3.1.1 has no reason codes; CONNACK carries a small return code instead.
 * Maps a v5 CONNACK reason onto the closest 3.1.1 return code.
 */
export function connackReturnCodeV3(reason: number): number {
  switch (reason) {
    case ReasonCode.Success:
      return 0;
    case ReasonCode.UnsupportedProtocolVersion:
      return 1;
    case ReasonCode.ClientIdentifierNotValid:
      return 2;
    case ReasonCode.ServerUnavailable:
    case ReasonCode.ServerBusy:
    case ReasonCode.QuotaExceeded:
      return 3;
    case ReasonCode.BadUserNameOrPassword:
      return 4;
    default:
      return 5;
  }
}
