/**
 * One client's network connection: frames packets out of the byte stream,
 * runs the MQTT state machine (CONNECT, PUBLISH flows, SUBSCRIBE, keep alive,
 * DISCONNECT) and writes replies through its outbox. Transports create one per
 * socket via `Broker.accept` and feed it bytes; the connection never touches
 * sockets itself.
 */
import { getLogger } from "@logtape/logtape";
import { isWellFormedUtf8, utf8 } from "../protocol/bytes.ts";
import {
  encodeConnack,
  encodeDisconnect,
  encodeSuback,
  encodeUnsuback,
} from "../protocol/control.ts";
import {
  checkFixedHeader,
  type ConnectPacket,
  connectPreamble,
  decodeAck,
  decodeConnect,
  decodeDisconnect,
  decodeSubscribe,
  decodeUnsubscribe,
  PacketType,
  type ProtocolLevel,
} from "../protocol/decode.ts";
import { Framer } from "../protocol/framer.ts";
import { Message } from "../protocol/message.ts";
import { type ByteSink, Outbox } from "../protocol/outbox.ts";
import { encodePassthrough } from "../protocol/properties.ts";
import {
  decodePublish,
  encodePublish,
  type IncomingPublish,
  type KnownTopic,
  PINGRESP,
  publishForm,
  toMessage,
} from "../protocol/publish.ts";
import {
  MalformedPacketError,
  MqttError,
  ProtocolError,
  ReasonCode,
} from "../protocol/reason_codes.ts";
import { parseFilter, topicNameProblem } from "../protocol/topic.ts";
import type { Subscription } from "../router/types.ts";
import type { BrokerCore } from "./core.ts";
import { NEVER_EXPIRES, type Session, type SessionLink, type Will } from "./session.ts";

const log = getLogger(["mcloudtt", "connection"]);

/** What a transport knows about the peer. */
export interface PeerInfo {
  remoteAddress: string;
  transport: "tcp" | "tls" | "ws" | "wss";
  /** Identity from a verified client certificate (already mapped per [tls] identity). */
  certificateIdentity?: string;
}

/** The part of a connection a transport drives. */
export interface ConnectionHandler {
  /** Bytes arrived; `chunk` is only valid during the call. */
  data(chunk: Uint8Array): void;
  /** The transport saw the socket end (EOF or error). */
  closed(): void;
  /** Non-null while the transport should stop reading (backpressure). */
  readonly readGate: Promise<void> | null;
}

const State = {
  AwaitingConnect: 0,
  Authenticating: 1,
  Connected: 2,
  Closed: 3,
} as const;

interface Alias {
  topic: string;
  bytes: Uint8Array;
}

/** Packets that arrive while an asynchronous authentication runs, replayed after. */
const MAX_PENDING_BYTES = 256 * 1024;

export class Connection implements ConnectionHandler, SessionLink {
  private state: number = State.AwaitingConnect;
  level: ProtocolLevel | 0 = 0;
  v5 = false;
  session: Session | null = null;
  clientId = "";
  username: string | undefined;
  /** Last time bytes arrived (ms since epoch). */
  lastRx: number;
  readonly acceptedAt: number;
  /** Keep alive timeout in ms (1.5 x keep alive), 0 for none. */
  keepAliveTimeout = 0;
  sendWindow = 65535;
  private clientMaxPacket = 0;
  private aliases: Map<number, Alias> | null = null;
  /** The topic of the previous PUBLISH (see decodePublish). */
  private lastTopic: KnownTopic | null = null;
  private readonly framer: Framer;
  readonly outbox: Outbox;
  private gate: { promise: Promise<void>; resolve: () => void } | null = null;
  private pending: Uint8Array[] | null = null;
  private pendingBytes = 0;
  private readonly onPacket = this.handlePacket.bind(this);

  constructor(
    private readonly core: BrokerCore,
    sink: ByteSink,
    readonly peer: PeerInfo,
  ) {
    this.framer = new Framer(core.limits.maxPacketSize);
    this.outbox = new Outbox(sink, this);
    this.lastRx = this.acceptedAt = Date.now();
  }

  /** Not yet closed (a method call keeps TypeScript from narrowing `state`). */
  private get open(): boolean {
    return this.state !== State.Closed;
  }

  // ---- transport side -------------------------------------------------------

  get readGate(): Promise<void> | null {
    return this.gate === null ? null : this.gate.promise;
  }

  data(chunk: Uint8Array): void {
    if (this.state === State.Closed) return;
    this.lastRx = Date.now();
    this.core.metrics.bytesReceived += chunk.length;
    try {
      this.framer.feed(chunk, this.onPacket);
    } catch (e) {
      this.fail(e);
      return;
    }
    if (this.outbox.pendingBytes > this.core.limits.maxOutgoingBytes) this.pauseReading();
  }

  closed(): void {
    if (this.state === State.Closed) return;
    const wasConnected = this.state === State.Connected;
    this.state = State.Closed;
    this.outbox.destroy();
    this.releaseGate();
    this.core.connectionClosed(this, wasConnected, true);
  }

  // ---- session side ---------------------------------------------------------

  get congested(): boolean {
    return this.outbox.pendingBytes >= this.core.limits.maxOutgoingBytes;
  }

  sendPublish(
    msg: Message,
    qos: 0 | 1 | 2,
    retain: boolean,
    dup: boolean,
    packetId: number,
    subIds: readonly number[] | null,
  ): boolean {
    let expiry = -1;
    if (msg.expiresAt !== 0) {
      const left = msg.expiresAt - Date.now();
      if (left <= 0) {
        this.core.metrics.droppedExpired++;
        return false;
      }
      expiry = Math.ceil(left / 1000);
    }
    const v5 = this.v5;
    const f = (dup || (v5 && subIds !== null))
      ? encodePublish(msg, v5, qos, retain, dup, packetId, v5 ? expiry : -1, v5 ? subIds : null)
      : publishForm(msg, v5, qos, retain, expiry);
    if (this.clientMaxPacket !== 0 && f.length > this.clientMaxPacket) {
      // Never send more than the client accepts; the message is dropped for it [MQTT-3.1.2-25].
      this.core.metrics.droppedTooLarge++;
      return false;
    }
    this.outbox.pushPublish(f.bytes, f.length, f.pidOffset, packetId);
    return true;
  }

  sendPubrel(packetId: number): void {
    this.outbox.pushAck(PacketType.PUBREL, packetId, 0, this.v5);
  }

  // ---- closing --------------------------------------------------------------

  /** Closes after sending DISCONNECT with `code` (MQTT 5 only); used by the server side. */
  disconnect(code: number, reason?: string): void {
    if (this.state === State.Closed) return;
    if (this.v5 && this.state === State.Connected) {
      this.outbox.push(encodeDisconnect(code, reason, this.clientMaxPacket));
    }
    this.end(code !== ReasonCode.Success || this.state !== State.Connected);
  }

  /** Ends the connection after flushing; `willAllowed` false means a normal DISCONNECT. */
  private end(willAllowed: boolean): void {
    if (this.state === State.Closed) return;
    const wasConnected = this.state === State.Connected;
    this.state = State.Closed;
    this.outbox.end();
    this.releaseGate();
    this.core.connectionClosed(this, wasConnected, willAllowed);
  }

  private fail(e: unknown): void {
    if (this.state === State.Closed) return;
    this.core.metrics.protocolErrors++;
    let code: number = ReasonCode.UnspecifiedError;
    let message = "internal error";
    if (e instanceof MqttError) {
      code = e.code;
      message = e.message;
      log.info("closing {clientId} ({addr}): {message} (0x{code})", {
        clientId: this.clientId,
        addr: this.peer.remoteAddress,
        message,
        code: code.toString(16),
      });
    } else {
      code = ReasonCode.ImplementationSpecificError;
      log.error("closing {clientId} after an internal error: {error}", {
        clientId: this.clientId,
        error: e instanceof Error ? (e.stack ?? e.message) : String(e),
      });
    }
    if (this.state === State.AwaitingConnect || this.state === State.Authenticating) {
      // Errors in CONNECT are answered with CONNACK (MQTT 5 only) [MQTT-3.1.4-1].
      if (this.level === 5) {
        this.outbox.push(encodeConnack(5, false, code, { reasonString: message }));
      }
      this.end(false);
      return;
    }
    this.disconnect(code, message);
  }

  /** OutboxOwner: the transport failed. */
  writeFailed(_e: unknown): void {
    this.closed();
  }

  /** OutboxOwner: a write completed. */
  drained(): void {
    if (this.gate !== null && this.outbox.pendingBytes <= this.core.limits.maxOutgoingBytes / 2) {
      this.releaseGate();
    }
    this.session?.pump();
  }

  private pauseReading(): void {
    if (this.gate !== null) return;
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    this.gate = { promise, resolve };
  }

  private releaseGate(): void {
    const g = this.gate;
    if (g === null) return;
    this.gate = null;
    g.resolve();
  }

  // ---- packets --------------------------------------------------------------

  private handlePacket(header: number, buf: Uint8Array, start: number, end: number): boolean {
    const type = header >> 4;
    const flags = header & 0x0f;
    switch (this.state) {
      case State.Connected:
        break;
      case State.AwaitingConnect:
        if (type !== PacketType.CONNECT) {
          throw new ProtocolError("first packet is not CONNECT");
        }
        checkFixedHeader(type, flags, 0);
        this.onConnect(buf, start, end);
        return this.open;
      case State.Authenticating: {
        // Keep what the client pipelined behind CONNECT until the answer is known.
        const copy = new Uint8Array(1 + end - start);
        copy[0] = header;
        copy.set(buf.subarray(start, end), 1);
        this.pendingBytes += copy.length;
        if (this.pendingBytes > MAX_PENDING_BYTES) {
          throw new MqttError(ReasonCode.QuotaExceeded, "too much data before CONNACK");
        }
        (this.pending ??= []).push(copy);
        return true;
      }
      case State.Closed:
        return false;
    }
    if (type === PacketType.PUBLISH) {
      this.onPublish(flags, buf, start, end);
      return this.open;
    }
    checkFixedHeader(type, flags, this.level);
    const session = this.session!;
    switch (type) {
      case PacketType.PUBACK:
        session.onPuback(decodeAck(buf, start, end, this.level as ProtocolLevel).packetId);
        break;
      case PacketType.PUBREC: {
        const a = decodeAck(buf, start, end, this.level as ProtocolLevel);
        if (!session.onPubrec(a.packetId, a.reasonCode) && a.reasonCode < 0x80) {
          this.outbox.pushAck(
            PacketType.PUBREL,
            a.packetId,
            ReasonCode.PacketIdentifierNotFound,
            this.v5,
          );
        }
        break;
      }
      case PacketType.PUBREL: {
        const a = decodeAck(buf, start, end, this.level as ProtocolLevel);
        const known = session.incomingQos2?.delete(a.packetId) ?? false;
        this.outbox.pushAck(
          PacketType.PUBCOMP,
          a.packetId,
          known ? 0 : ReasonCode.PacketIdentifierNotFound,
          this.v5,
        );
        break;
      }
      case PacketType.PUBCOMP:
        session.onPubcomp(decodeAck(buf, start, end, this.level as ProtocolLevel).packetId);
        break;
      case PacketType.PINGREQ:
        if (end !== start) throw new MalformedPacketError("PINGREQ with a body");
        this.outbox.push(PINGRESP);
        break;
      case PacketType.SUBSCRIBE:
        this.onSubscribe(buf, start, end);
        break;
      case PacketType.UNSUBSCRIBE:
        this.onUnsubscribe(buf, start, end);
        break;
      case PacketType.DISCONNECT:
        this.onDisconnect(buf, start, end);
        return false;
      case PacketType.CONNECT:
        throw new ProtocolError("second CONNECT on one connection");
      case PacketType.AUTH:
        throw new ProtocolError("AUTH without an authentication method");
    }
    return true;
  }

  // ---- CONNECT --------------------------------------------------------------

  private onConnect(buf: Uint8Array, start: number, end: number): void {
    const pre = connectPreamble(buf, start, end);
    if (pre.kind === "bad-name") {
      // Not MQTT at all: no answer is owed [MQTT-3.1.2-1].
      this.end(false);
      return;
    }
    if (pre.kind === "bad-level") {
      this.core.metrics.connectsRefused++;
      // Answer in the format the client can read: v5 clients get reason 0x84.
      this.outbox.push(
        pre.level >= 5
          ? encodeConnack(5, false, ReasonCode.UnsupportedProtocolVersion)
          : encodeConnack(4, false, ReasonCode.UnsupportedProtocolVersion),
      );
      this.end(false);
      return;
    }
    this.level = pre.level;
    this.v5 = pre.level === 5;
    const pkt = decodeConnect(buf, start, end);
    const limits = this.core.limits;
    const props = pkt.properties;

    if (props.authenticationMethod !== undefined) {
      return this.refuse(
        ReasonCode.BadAuthenticationMethod,
        "no authentication methods are supported",
      );
    }
    let clientId = pkt.clientId;
    let assigned: string | undefined;
    if (clientId.length === 0) {
      if (!this.v5 && !pkt.cleanStart) {
        return this.refuse(
          ReasonCode.ClientIdentifierNotValid,
          "empty client id needs clean session",
        );
      }
      clientId = assigned = this.core.newClientId();
    }
    this.clientId = clientId;

    // Keep alive: MQTT 5 clients can be told a Server Keep Alive; 3.1.1 clients cannot.
    let keepAlive = pkt.keepAlive;
    let serverKeepAlive: number | undefined;
    if (this.v5) {
      if (limits.serverKeepAlive > 0) keepAlive = limits.serverKeepAlive;
      else if (keepAlive === 0 ? limits.maxKeepAlive < 65535 : keepAlive > limits.maxKeepAlive) {
        keepAlive = limits.maxKeepAlive;
      }
      if (keepAlive !== pkt.keepAlive) serverKeepAlive = keepAlive;
    } else {
      const cap = limits.serverKeepAlive > 0 ? limits.serverKeepAlive : limits.maxKeepAlive;
      if (cap < 65535 && (keepAlive === 0 || keepAlive > cap)) {
        return this.refuse(
          ReasonCode.ClientIdentifierNotValid,
          `keep alive must be between 1 and ${cap} seconds`,
        );
      }
    }
    this.keepAliveTimeout = keepAlive * 1500;

    if (this.core.metrics.connectionsCurrent > limits.maxConnections) {
      return this.refuse(ReasonCode.QuotaExceeded, "connection limit reached");
    }
    if (pkt.will) {
      const problem = topicNameProblem(pkt.will.topic, limits);
      if (problem !== null || pkt.will.topic.startsWith("$")) {
        return this.refuse(ReasonCode.TopicNameInvalid, "invalid will topic");
      }
      if (
        pkt.will.properties.payloadFormatIndicator === 1 &&
        !isWellFormedUtf8(pkt.will.payload)
      ) {
        return this.refuse(ReasonCode.PayloadFormatInvalid, "will payload is not UTF-8");
      }
    }
    this.clientMaxPacket = props.maximumPacketSize ?? 0;
    this.sendWindow = Math.min(props.receiveMaximum ?? 65535, limits.maxInflight);

    const decision = this.core.auth.authenticate({
      clientId,
      username: pkt.username,
      password: pkt.password,
      certificateIdentity: this.peer.certificateIdentity,
      remoteAddress: this.peer.remoteAddress,
      protocolLevel: pkt.protocolLevel,
      acceptedAt: this.acceptedAt,
    });
    if (decision instanceof Promise) {
      this.state = State.Authenticating;
      this.pauseReading();
      decision.then(
        (d) => this.authenticated(d, pkt, assigned, serverKeepAlive),
        (e) => this.fail(e),
      );
    } else {
      this.authenticated(decision, pkt, assigned, serverKeepAlive);
    }
  }

  private refuse(code: number, reason: string): void {
    this.core.metrics.connectsRefused++;
    log.info("refused {clientId} ({addr}): {reason}", {
      clientId: this.clientId,
      addr: this.peer.remoteAddress,
      reason,
    });
    this.outbox.push(
      encodeConnack(this.level as ProtocolLevel, false, code, { reasonString: reason }),
    );
    this.end(false);
  }

  private authenticated(
    d: import("../auth/types.ts").AuthDecision,
    pkt: ConnectPacket,
    assigned: string | undefined,
    serverKeepAlive: number | undefined,
  ): void {
    if (this.state === State.Closed) return;
    if (!d.ok) return this.refuse(d.reasonCode, d.reason);
    this.username = d.username;
    if (pkt.will && !this.core.mayPublish(this.clientId, d.username, pkt.will.topic)) {
      return this.refuse(ReasonCode.NotAuthorized, "will topic not authorized");
    }
    const limits = this.core.limits;
    let expiry: number;
    if (this.v5) expiry = pkt.properties.sessionExpiryInterval ?? 0;
    else expiry = pkt.cleanStart ? 0 : NEVER_EXPIRES;
    const grantedExpiry = Math.min(expiry, limits.maxSessionExpiry);

    const { session, present } = this.core.attach(this, pkt.cleanStart);
    this.session = session;
    session.username = d.username;
    session.expiryInterval = grantedExpiry;
    session.will = pkt.will ? this.buildWill(pkt) : null;
    this.state = State.Connected;

    const connackProps = this.v5
      ? {
        receiveMaximum: limits.receiveMaximum,
        maximumPacketSize: limits.maxPacketSize,
        topicAliasMaximum: limits.topicAliasMaximum,
        retainAvailable: true,
        wildcardSubscriptionAvailable: true,
        subscriptionIdentifiersAvailable: true,
        sharedSubscriptionAvailable: true,
        ...(assigned !== undefined ? { assignedClientIdentifier: assigned } : {}),
        ...(serverKeepAlive !== undefined ? { serverKeepAlive } : {}),
        ...(grantedExpiry !== expiry ? { sessionExpiryInterval: grantedExpiry } : {}),
      }
      : {};
    this.outbox.push(
      encodeConnack(this.level as ProtocolLevel, present, 0, connackProps, this.clientMaxPacket),
    );
    session.attach(this);
    this.releaseGate();
    const pending = this.pending;
    this.pending = null;
    if (pending !== null) {
      try {
        for (const p of pending) {
          if (!this.handlePacket(p[0], p, 1, p.length)) break;
        }
      } catch (e) {
        this.fail(e);
      }
    }
  }

  private buildWill(pkt: ConnectPacket): Will {
    const w = pkt.will!;
    const p = w.properties;
    const msg = new Message(
      w.topic,
      utf8(w.topic),
      w.payload,
      w.qos,
      w.retain,
      encodePassthrough(p),
      0,
      this.clientId,
    );
    // The expiry clock of a will starts when it is published, so it stays relative here.
    return { msg, delay: p.willDelayInterval ?? 0, expiry: p.messageExpiryInterval ?? -1 };
  }

  // ---- PUBLISH --------------------------------------------------------------

  private onPublish(flags: number, buf: Uint8Array, start: number, end: number): void {
    const core = this.core;
    const p: IncomingPublish = decodePublish(buf, start, end, flags, this.v5, this.lastTopic);
    core.metrics.publishReceived++;
    let topic = p.topic;
    let topicBytes: Uint8Array | null = p.known ? this.lastTopic!.bytes : null;
    let validated = p.known;
    if (p.topicAlias !== 0) {
      if (p.topicAlias > core.limits.topicAliasMaximum) {
        throw new ProtocolError("Topic Alias above the maximum", ReasonCode.TopicAliasInvalid);
      }
      const aliases = this.aliases ??= new Map();
      if (topic.length === 0) {
        const a = aliases.get(p.topicAlias);
        if (a === undefined) throw new ProtocolError("Topic Alias not yet defined");
        topic = a.topic;
        topicBytes = a.bytes;
        validated = true;
      } else {
        topicBytes ??= buf.slice(p.topicStart, p.topicEnd);
        aliases.set(p.topicAlias, { topic, bytes: topicBytes });
      }
    } else if (topic.length === 0) {
      if (this.v5) throw new ProtocolError("PUBLISH without topic or Topic Alias");
      throw new MalformedPacketError("PUBLISH with an empty topic");
    }
    if (!validated) {
      const problem = topicNameProblem(topic, core.limits);
      if (problem !== null) {
        throw new ProtocolError(
          problem === "invalid" ? "invalid topic name" : "topic name exceeds limits",
          ReasonCode.TopicNameInvalid,
        );
      }
      topicBytes ??= buf.slice(p.topicStart, p.topicEnd);
      this.lastTopic = { topic, bytes: topicBytes };
    }
    const qos = p.qos;
    const pid = p.packetId;
    if (p.payloadFormat === -2) {
      if (qos > 0) this.ack(qos, pid, ReasonCode.PayloadFormatInvalid);
      return;
    }
    if (
      topic.charCodeAt(0) === 0x24 /* $ */ || !core.mayPublish(this.clientId, this.username, topic)
    ) {
      // Refused publishes are acknowledged with 0x87 in MQTT 5; 3.1.1 has no
      // way to refuse, so they get a normal acknowledgement and are dropped.
      if (qos > 0) this.ack(qos, pid, ReasonCode.NotAuthorized);
      return;
    }
    const session = this.session!;
    if (qos === 2) {
      const inQ = session.incomingQos2 ??= new Set();
      if (inQ.has(pid)) {
        // A resend of a message already routed: acknowledge again, never route twice.
        this.outbox.pushAck(PacketType.PUBREC, pid, 0, this.v5);
        return;
      }
      if (inQ.size >= core.limits.receiveMaximum) {
        throw new ProtocolError(
          "more unacknowledged QoS 2 messages than Receive Maximum",
          ReasonCode.ReceiveMaximumExceeded,
        );
      }
      inQ.add(pid);
    }
    const msg = toMessage(
      buf,
      p,
      topic,
      topicBytes!, // set above: the known topic, the alias, or the fresh copy
      this.clientId,
      p.expiry >= 0 ? Date.now() : 0,
    );
    const n = core.publish(msg);
    if (qos > 0) this.ack(qos, pid, n === 0 ? ReasonCode.NoMatchingSubscribers : 0);
  }

  private ack(qos: number, pid: number, code: number): void {
    this.outbox.pushAck(qos === 1 ? PacketType.PUBACK : PacketType.PUBREC, pid, code, this.v5);
  }

  // ---- SUBSCRIBE / UNSUBSCRIBE ----------------------------------------------

  private onSubscribe(buf: Uint8Array, start: number, end: number): void {
    const core = this.core;
    const pkt = decodeSubscribe(buf, start, end, this.level as ProtocolLevel);
    const session = this.session!;
    const codes: number[] = [];
    const withRetained: Subscription[] = [];
    const subId = pkt.subscriptionId ?? 0;
    for (const req of pkt.requests) {
      const tf = parseFilter(req.filter, core.limits);
      if (typeof tf === "string") {
        codes.push(ReasonCode.TopicFilterInvalid);
        continue;
      }
      if (tf.group !== null && req.noLocal) {
        throw new ProtocolError("No Local on a shared subscription");
      }
      if (!core.maySubscribe(this.clientId, this.username, tf.filter)) {
        codes.push(ReasonCode.NotAuthorized);
        continue;
      }
      const sub: Subscription = {
        subscriber: session,
        key: tf.key,
        filter: tf.filter,
        group: tf.group,
        qos: req.qos,
        noLocal: req.noLocal,
        retainAsPublished: req.retainAsPublished,
        retainHandling: req.retainHandling,
        subscriptionId: subId,
        idList: subId !== 0 ? [subId] : null,
      };
      const existed = core.router.subscribe(sub);
      codes.push(req.qos);
      // Retained messages go to new non-shared subscriptions per Retain Handling [MQTT-3.3.1-9..11].
      if (
        tf.group === null && (req.retainHandling === 0 || (req.retainHandling === 1 && !existed))
      ) {
        withRetained.push(sub);
      }
    }
    this.outbox.push(encodeSuback(this.level as ProtocolLevel, pkt.packetId, codes));
    if (withRetained.length === 0) return;
    const now = Date.now();
    for (const sub of withRetained) {
      for (const msg of core.router.retainedFor(sub.filter)) {
        if (msg.expired(now)) continue;
        session.deliver(msg, msg.qos < sub.qos ? msg.qos : sub.qos, true, sub.idList);
      }
    }
  }

  private onUnsubscribe(buf: Uint8Array, start: number, end: number): void {
    const pkt = decodeUnsubscribe(buf, start, end, this.level as ProtocolLevel);
    const codes: number[] = [];
    for (const f of pkt.filters) {
      const tf = parseFilter(f, this.core.limits);
      if (typeof tf === "string") codes.push(ReasonCode.TopicFilterInvalid);
      else {
        codes.push(
          this.core.router.unsubscribe(this.session!, tf.key)
            ? ReasonCode.Success
            : ReasonCode.NoSubscriptionExisted,
        );
      }
    }
    this.outbox.push(encodeUnsuback(this.level as ProtocolLevel, pkt.packetId, codes));
  }

  // ---- DISCONNECT -----------------------------------------------------------

  private onDisconnect(buf: Uint8Array, start: number, end: number): void {
    const d = decodeDisconnect(buf, start, end, this.level as ProtocolLevel);
    const session = this.session!;
    if (d.sessionExpiryInterval !== undefined) {
      if (session.expiryInterval === 0 && d.sessionExpiryInterval !== 0) {
        throw new ProtocolError("Session Expiry Interval changed from 0 at DISCONNECT");
      }
      session.expiryInterval = Math.min(d.sessionExpiryInterval, this.core.limits.maxSessionExpiry);
    }
    // Only a normal disconnection (0x00) deletes the will [MQTT-3.14.4-3]; 0x04 and the
    // error codes leave it to be published [MQTT-3.1.2-8].
    this.end(d.reasonCode !== ReasonCode.Success);
  }

  /** Called by the keep-alive sweep. */
  checkTimeouts(now: number): void {
    if (this.state === State.AwaitingConnect) {
      if (now - this.acceptedAt > this.core.limits.connectTimeoutMs) {
        log.info("no CONNECT from {addr} in time", { addr: this.peer.remoteAddress });
        this.end(false);
      }
    } else if (this.state === State.Connected) {
      if (this.keepAliveTimeout !== 0 && now - this.lastRx > this.keepAliveTimeout) {
        log.info("keep alive timeout for {clientId}", { clientId: this.clientId });
        this.disconnect(ReasonCode.KeepAliveTimeout, "keep alive timeout");
      } else if (now - this.lastRx > 5000) {
        this.outbox.trim();
      }
    }
  }

  /** The same client id connected elsewhere. */
  takenOver(): void {
    this.disconnect(ReasonCode.SessionTakenOver, "session taken over");
  }
}
