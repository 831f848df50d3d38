/**
 * CONNECT negotiation, without sockets: from a decoded CONNECT and the
 * broker's limits to what the connection runs with (client id, keep alive,
 * flow control, session expiry), or the CONNACK refusal. Authentication
 * comes after, in the connection.
 */
import { isWellFormedUtf8, utf8 } from "../protocol/bytes.ts";
import { type ConnackProperties, encodeConnack } from "../protocol/control.ts";
import type { ConnectPacket, ProtocolLevel } from "../protocol/decode.ts";
import { Message } from "../protocol/message.ts";
import { encodePassthrough } from "../protocol/properties.ts";
import { ReasonCode } from "../protocol/reason_codes.ts";
import { topicNameProblem } from "../protocol/topic.ts";
import type { CoreLimits } from "./limits.ts";
import { NEVER_EXPIRES, type Will } from "./session_types.ts";

/** What the connection runs with once CONNECT is accepted. */
export interface Negotiated {
  clientId: string;
  /** The id the server assigned (the client sent none), to report in CONNACK. */
  assigned: string | undefined;
  /** Keep alive timeout in ms (1.5 x keep alive), 0 for none. */
  keepAliveTimeoutMs: number;
  /** Server Keep Alive to report in CONNACK when it differs from the client's. */
  serverKeepAlive: number | undefined;
  /** How many QoS 1/2 messages may be unacknowledged towards the client. */
  sendWindow: number;
  /** Topic aliases the server may use towards the client (its Topic Alias Maximum, capped). */
  clientTopicAliasMax: number;
  /** Session Expiry the client asked for, and what it gets. */
  requestedExpiry: number;
  grantedExpiry: number;
  /** Enhanced authentication's method and the server's last data, for CONNACK (auth_flow.ts). */
  auth?: { method: string; data: Uint8Array | undefined };
}

/** A refusal: the CONNACK reason and a reason string. */
export interface Refusal {
  code: number;
  reason: string;
}

/** Accepts or refuses a CONNECT (before authentication). */
export function negotiateConnect(
  pkt: ConnectPacket,
  limits: CoreLimits,
  ids: { newClientId(): string },
): Negotiated | Refusal {
  const v5 = pkt.protocolLevel === 5;
  const props = pkt.properties;
  let clientId = pkt.clientId;
  let assigned: string | undefined;
  if (clientId.length === 0) {
    if (!v5 && !pkt.cleanStart) {
      return {
        code: ReasonCode.ClientIdentifierNotValid,
        reason: "empty client id needs clean session",
      };
    }
    clientId = assigned = ids.newClientId();
  }

  // Keep alive: MQTT 5 clients can be told a Server Keep Alive; 3.1.1 clients cannot.
  let keepAlive = pkt.keepAlive;
  let serverKeepAlive: number | undefined;
  if (v5) {
    if (limits.serverKeepAlive > 0) keepAlive = limits.serverKeepAlive;
    else if (keepAlive === 0 ? limits.maxKeepAlive < 65535 : keepAlive > limits.maxKeepAlive) {
      keepAlive = limits.maxKeepAlive;
    }
    if (keepAlive !== pkt.keepAlive) serverKeepAlive = keepAlive;
  } else {
    const cap = limits.serverKeepAlive > 0 ? limits.serverKeepAlive : limits.maxKeepAlive;
    if (cap < 65535 && (keepAlive === 0 || keepAlive > cap)) {
      return {
        code: ReasonCode.ClientIdentifierNotValid,
        reason: `keep alive must be between 1 and ${cap} seconds`,
      };
    }
  }

  if (pkt.will) {
    const problem = topicNameProblem(pkt.will.topic, limits);
    if (problem !== null || pkt.will.topic.startsWith("$")) {
      return { code: ReasonCode.TopicNameInvalid, reason: "invalid will topic" };
    }
    if (
      pkt.will.properties.payloadFormatIndicator === 1 && !isWellFormedUtf8(pkt.will.payload)
    ) {
      return { code: ReasonCode.PayloadFormatInvalid, reason: "will payload is not UTF-8" };
    }
    // A retained will could not be kept [MQTT-3.2.2-13]. 3.1.1 has no such code: its retained
    // publishes are delivered without being kept, and so is its will.
    if (pkt.will.retain && v5 && !limits.retainAvailable) {
      return { code: ReasonCode.RetainNotSupported, reason: "retained messages are not kept" };
    }
  }
  const requestedExpiry = v5
    ? props.sessionExpiryInterval ?? 0
    : (pkt.cleanStart ? 0 : NEVER_EXPIRES);
  const n: Negotiated = {
    clientId,
    assigned,
    keepAliveTimeoutMs: keepAlive * 1500,
    serverKeepAlive,
    sendWindow: Math.min(props.receiveMaximum ?? 65535, limits.maxInflight),
    clientTopicAliasMax: Math.min(props.topicAliasMaximum ?? 0, limits.maxOutgoingTopicAliases),
    requestedExpiry,
    grantedExpiry: Math.min(requestedExpiry, limits.maxSessionExpiry),
  };
  // A client may allow packets smaller than the CONNACK that would accept it (16 bytes and
  // more): the server must not send it [MQTT-3.1.2-24], and leaving out Receive Maximum or
  // Maximum Packet Size would promise it defaults it would then be disconnected for using.
  const max = props.maximumPacketSize;
  if (max !== undefined && max < SMALL_CONNACK_BOUND) {
    const size = encodeConnack(5, true, 0, connackProperties(n, limits)).length;
    if (size > max) {
      return {
        code: ReasonCode.PacketTooLarge,
        reason: `CONNACK needs ${size} bytes`,
      };
    }
  }
  return n;
}

/**
 * Below this Maximum Packet Size a client's accepted CONNACK may not fit (its properties, an
 * assigned client id and a Server Keep Alive stay well under it): measured only then.
 */
const SMALL_CONNACK_BOUND = 128;

/** The will of an accepted CONNECT, kept until the connection ends. */
export function buildWill(pkt: ConnectPacket, clientId: string): Will | null {
  const w = pkt.will;
  if (!w) return null;
  const p = w.properties;
  const msg = new Message(
    w.topic,
    utf8(w.topic),
    w.payload,
    w.qos,
    w.retain,
    encodePassthrough(p),
    0,
    clientId,
  );
  // The expiry clock of a will starts when it is published, so it stays relative here.
  return { msg, delay: p.willDelayInterval ?? 0, expiry: p.messageExpiryInterval ?? -1 };
}

/**
 * The CONNACK of an accepted connection. When it reports nothing about this client (no assigned
 * id, Server Keep Alive or capped expiry: almost every CONNECT), its bytes depend only on the
 * limits and Session Present, so they are encoded once per limits object and shared (the outbox
 * copies what it is given). A connect storm is a benchmark of its own (issue 14).
 */
export function acceptedConnack(
  level: ProtocolLevel,
  present: boolean,
  n: Negotiated,
  limits: CoreLimits,
  clientMaxPacket: number,
): Uint8Array {
  if (level !== 5) return encodeConnack(level, present, 0);
  if (
    n.assigned !== undefined || n.serverKeepAlive !== undefined ||
    n.grantedExpiry !== n.requestedExpiry || n.auth !== undefined
  ) {
    return encodeConnack(5, present, 0, connackProperties(n, limits), clientMaxPacket);
  }
  let forms = sharedConnacks.get(limits);
  if (forms === undefined) {
    const props = connackProperties(n, limits);
    forms = [encodeConnack(5, false, 0, props), encodeConnack(5, true, 0, props)];
    sharedConnacks.set(limits, forms);
  }
  return forms[present ? 1 : 0];
}

/** The two shared v5 CONNACKs (Session Present 0 and 1) of each limits object. */
const sharedConnacks = new WeakMap<CoreLimits, readonly [Uint8Array, Uint8Array]>();

/** The CONNACK properties of an accepted MQTT 5 connection. */
export function connackProperties(n: Negotiated, limits: CoreLimits): ConnackProperties {
  return {
    receiveMaximum: limits.receiveMaximum,
    maximumPacketSize: limits.maxPacketSize,
    topicAliasMaximum: limits.topicAliasMaximum,
    // Wildcard, subscription identifiers and shared subscriptions are available, and so is
    // retain unless the broker keeps no retained messages: their absence says so, and leaving
    // them out keeps CONNACK small for clients with a small Maximum Packet Size [MQTT-3.1.2-24].
    ...(limits.retainAvailable ? {} : { retainAvailable: false }),
    ...(n.assigned !== undefined ? { assignedClientIdentifier: n.assigned } : {}),
    ...(n.serverKeepAlive !== undefined ? { serverKeepAlive: n.serverKeepAlive } : {}),
    ...(n.grantedExpiry !== n.requestedExpiry ? { sessionExpiryInterval: n.grantedExpiry } : {}),
    ...(n.auth === undefined
      ? {}
      : { authenticationMethod: n.auth.method, authenticationData: n.auth.data }),
  };
}
