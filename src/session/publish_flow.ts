/**
 * PUBLISH in both directions for one connection: an incoming packet becomes
 * a Message handed to the core (and is acknowledged in order), an outgoing
 * delivery is encoded into the connection's outbox with the receiver's Topic
 * Alias, expiry and size limit. The hot path: nothing here allocates per
 * message beyond the Message itself.
 */
import type { Message } from "../protocol/message.ts";
import {
  AliasMode,
  decodePublish,
  encodePublish,
  publishForm,
  toMessage,
} from "../protocol/publish.ts";
import { ProtocolError, ReasonCode } from "../protocol/reason_codes.ts";
import { decodeAck, PacketType, type ProtocolLevel } from "../protocol/decode.ts";
import type { Connection } from "./connection.ts";
import { State } from "./connection_state.ts";
import type { Session } from "./session.ts";
import { InboundTopics } from "./inbound_topic.ts";
import { OutboundAliases } from "./outbound_aliases.ts";

/** The PUBLISH `buf[start, end)` with fixed-header `flags`, from the client of `c`. */
export function onPublish(
  c: Connection,
  flags: number,
  buf: Uint8Array,
  start: number,
  end: number,
): void {
  const host = c.host;
  const topics = c.topics ??= new InboundTopics(host.limits, c.v5);
  const p = decodePublish(buf, start, end, flags, c.v5, topics.last);
  host.metrics.receivedByQos[p.qos]++;
  topics.resolve(p, buf);
  const topic = topics.topic;
  const qos = p.qos;
  const pid = p.packetId;
  if (p.payloadFormat === -2) {
    if (qos > 0) c.ackInOrder(qos, pid, ReasonCode.PayloadFormatInvalid);
    return;
  }
  if (
    topic.charCodeAt(0) === 0x24 /* $ */ || !host.mayPublish(c.clientId, c.username, topic)
  ) {
    // Refused publishes are acknowledged with 0x87 in MQTT 5; 3.1.1 has no
    // way to refuse, so they get a normal acknowledgement and are dropped.
    if (qos > 0) c.ackInOrder(qos, pid, ReasonCode.NotAuthorized);
    return;
  }
  const session = c.session!;
  if (qos !== 0 && host.storeFull && !(qos === 2 && session.knowsQos2(pid))) {
    // The store is down and the journal at [storage] max_unwritten_ops: refused, never
    // acknowledged without being kept (a QoS 2 resend of an accepted message still is). MQTT 5
    // says Quota exceeded; 3.1.1 cannot refuse, so the connection closes and the client sends
    // the message again once it is back.
    host.metrics.publishesRefusedStoreFull++;
    const code = c.v5 ? ReasonCode.QuotaExceeded : ReasonCode.UnspecifiedError;
    // In order, behind the acknowledgements still waiting for the store [MQTT-4.6.0-2].
    c.acks.ack(qos, pid, code, null, code);
    return;
  }
  if (qos === 2) {
    if (!session.receiveQos2(pid)) {
      // A resend of a message already routed: acknowledge again, never route twice.
      c.acks.ack(2, pid, 0, null, 0);
      return;
    }
    if (session.incomingQos2Count > host.limits.receiveMaximum) {
      throw new ProtocolError(
        ReasonCode.ReceiveMaximumExceeded,
        "more unacknowledged QoS 2 messages than Receive Maximum",
      );
    }
  }
  const now = p.expiry >= 0 ? host.clock.now() : 0;
  const msg = toMessage(
    buf,
    p,
    topic,
    topics.topicBytes,
    c.clientId,
    now,
    c.framer.dedicated,
  );
  if (p.retain && c.v5 && !host.limits.retainAvailable) {
    // CONNACK said Retain Available 0: a client that sends one anyway is disconnected with 0x9A
    // (section 3.3.1.3).
    throw new ProtocolError(ReasonCode.RetainNotSupported, "retained messages are not kept");
  }
  if (
    p.retain && qos !== 0 && c.v5 && msg.payload.length !== 0 && !host.retainFits(msg)
  ) {
    // The retained store is full: an MQTT 5 publisher is told, and the message is not
    // accepted. QoS 0 and 3.1.1 cannot be told: those are delivered but not retained.
    host.metrics.retainedRefused++;
    c.ackInOrder(qos, pid, ReasonCode.QuotaExceeded);
    return;
  }
  const n = host.publish(
    msg,
    c.info ??= {
      clientId: c.clientId,
      username: c.username,
      receivedAt: 0,
      kind: "client",
    },
  );
  if (qos !== 0) {
    c.acks.ack(
      qos,
      pid,
      n === 0 ? ReasonCode.NoMatchingSubscribers : 0,
      host.publishWritten,
      ReasonCode.UnspecifiedError,
    );
  }
  // What it left for other nodes is past its bound and nothing else slows this client down (a
  // retained QoS 0 flood): its next packets stay in its socket until that is written, as for
  // a slow subscriber. A plain QoS 0 message costs nothing here (dropped past the bound).
  if (qos !== 0 || p.retain) {
    const held = host.bus.heldPublisher?.(msg);
    if (held != null) c.holdReading(held);
  }
}

/**
 * Encodes `msg` for the client of `c` and queues it; false when it was
 * dropped for this client (expired, or larger than its Maximum Packet Size).
 */
export function sendPublish(
  c: Connection,
  msg: Message,
  qos: 0 | 1 | 2,
  retain: boolean,
  dup: boolean,
  packetId: number,
  subIds: readonly number[] | null,
): boolean {
  const host = c.host;
  let expiry = -1;
  if (msg.expiresAt !== 0) {
    const left = msg.expiresAt - host.clock.now();
    if (left > 0) expiry = Math.ceil(left / 1000);
    else if (dup) {
      // A resend of a message whose delivery began: it goes, with the least lifetime left
      // (0 could read as "no expiry" to some receivers) [MQTT-4.3.3-7].
      expiry = 1;
    } else {
      host.metrics.droppedExpired++;
      return false;
    }
  }
  const v5 = c.v5;
  let mode: AliasMode = AliasMode.None;
  let alias = 0;
  // Resends go without an alias; topics of up to 3 bytes cost no more than one.
  if (c.aliasMax !== 0 && !dup && msg.topicBytes.length > 3) {
    const aliases = c.aliases ??= new OutboundAliases(c.aliasMax);
    alias = aliases.find(msg.topic);
    if (alias !== 0) mode = AliasMode.Use;
    else {
      alias = aliases.next();
      mode = AliasMode.Set;
    }
  }
  const f = (dup || (v5 && subIds !== null))
    ? encodePublish(
      msg,
      v5,
      qos,
      retain,
      dup,
      packetId,
      v5 ? expiry : -1,
      v5 ? subIds : null,
      mode,
    )
    : publishForm(msg, v5, qos, retain, expiry, mode);
  const shared = f.payload;
  if (
    c.clientMaxPacket > 0 &&
    (shared === null ? f.length : f.length + shared.length) > c.clientMaxPacket
  ) {
    // Never send more than the client accepts; the message is dropped for it [MQTT-3.1.2-25].
    host.metrics.droppedTooLarge++;
    return false;
  }
  // The client learns the alias from this packet: only now is it bound.
  if (mode === AliasMode.Set) c.aliases!.bind(msg.topic, alias);
  if (shared === null) {
    c.outbox.pushPublish(f.bytes, f.length, f.pidOffset, packetId, f.aliasOffset, alias);
  } else {
    c.outbox.pushShared(f.bytes, f.length, f.pidOffset, packetId, shared, f.aliasOffset, alias);
  }
  if (msg.sampledAt !== 0 && !dup) {
    host.metrics.latency.observe(performance.now() - msg.sampledAt);
  }
  return true;
}

/** PUBREC from the client of `c` for a QoS 2 message sent to it (PUBREL 0x92 for an unknown id). */
export function onPubrec(
  c: Connection,
  session: Session,
  buf: Uint8Array,
  start: number,
  end: number,
): void {
  const a = decodeAck(buf, start, end, c.level as ProtocolLevel);
  if (!session.onPubrec(a.packetId, a.reasonCode) && a.reasonCode < 0x80) {
    c.outbox.pushAck(PacketType.PUBREL, a.packetId, ReasonCode.PacketIdentifierNotFound, c.v5);
  }
}

/**
 * PUBREL from the client of `c`: PUBCOMP once the release is written (the store, when the
 * session keeps its QoS 2 ids there), 0x92 for an id it does not know.
 */
export function onPubrel(
  c: Connection,
  session: Session,
  buf: Uint8Array,
  start: number,
  end: number,
): void {
  const a = decodeAck(buf, start, end, c.level as ProtocolLevel);
  const known = session.releaseQos2(a.packetId);
  const code = known ? 0 : ReasonCode.PacketIdentifierNotFound;
  const written = known ? session.written : null;
  if (written === null) c.outbox.pushAck(PacketType.PUBCOMP, a.packetId, code, c.v5);
  else {
    const send = () => {
      if (c.state !== State.Closed) c.outbox.pushAck(PacketType.PUBCOMP, a.packetId, code, c.v5);
    };
    written.then(send, send);
  }
}
