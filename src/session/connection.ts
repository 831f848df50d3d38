/**
 * One client's network connection: frames packets out of the byte stream,
 * runs the MQTT state machine (CONNECT, PUBLISH flows, SUBSCRIBE, keep alive,
 * DISCONNECT) and writes replies through its outbox. Transports create one per
 * socket via the core's `accept` and feed it bytes; the connection never
 * touches sockets itself, and asks the broker for everything else through
 * `ConnectionHost`.
 */
import { getLogger } from "@logtape/logtape";
import { hex } from "../ops/log.ts";
import type { AuthDecision } from "../auth/types.ts";
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
import type { Message } from "../protocol/message.ts";
import { type ByteWriter, Outbox } from "../protocol/outbox.ts";
import {
  AliasMode,
  decodePublish,
  encodePublish,
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
import { parseFilter } from "../protocol/topic.ts";
import type { Subscription } from "../router/types.ts";
import type { PublishInfo } from "../sinks/types.ts";
import { AckQueue } from "./acks.ts";
import type {
  AttachingConnection,
  AttachResult,
  ConnectionHandler,
  ConnectionHost,
  PeerInfo,
  WillOutcome,
} from "./host.ts";
import { InboundTopics } from "./inbound_topic.ts";
import { OutboundAliases } from "./outbound_aliases.ts";
import { buildWill, connackProperties, negotiateConnect, type Negotiated } from "./negotiate.ts";
import type { Session } from "./session.ts";
import { decideSubscriptions, sendRetained, wantsRetained } from "./subscribe.ts";

export type { ConnectionHandler, PeerInfo } from "./host.ts";

const log = getLogger(["mcloudtt", "connection"]);

/** CONNECT with its reserved flag bits clear: the only valid first byte [MQTT-3.1.0-1, 2.1.3-1]. */
const FIRST_CONNECT_BYTE = 0x10;

/** Protocol level to the version operators know. */
const PROTOCOL_NAMES: Record<number, string> = { 3: "3.1", 4: "3.1.1", 5: "5" };

const State = {
  AwaitingConnect: 0,
  /** CONNECT accepted so far; authentication or session attach is running. */
  Authenticating: 1,
  Connected: 2,
  Closed: 3,
} as const;

export class Connection implements ConnectionHandler, AttachingConnection {
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
  /** Topic aliases this connection may use towards the client (0: none), and their table. */
  private aliasMax = 0;
  private aliases: OutboundAliases | null = null;
  private topics: InboundTopics | null = null;
  private readonly framer: Framer;
  readonly outbox: Outbox;
  private gate: { promise: Promise<void>; resolve: () => void } | null = null;
  private pending: Uint8Array[] | null = null;
  private pendingBytes = 0;
  private readonly acks = new AckQueue((qos, pid, code) => this.ack(qos, pid, code));
  private readonly onPacket = this.handlePacket.bind(this);
  /** PublishInfo of this client's messages, made once (the sink keeps a reference). */
  private info: PublishInfo | null = null;
  /** When CONNECT was accepted (clock ms), for the disconnect log line. */
  private connectedAt = 0;
  /** The DISCONNECT reason code sent or received, -1 when the connection was just lost. */
  private closeCode = -1;
  private closedBy: "client" | "server" | "network" = "network";

  constructor(
    private readonly host: ConnectionHost,
    sink: ByteWriter,
    readonly peer: PeerInfo,
  ) {
    this.framer = new Framer(host.limits.maxPacketSize);
    this.outbox = new Outbox(sink, this);
    this.lastRx = this.acceptedAt = host.clock.now();
  }

  /** Not yet closed (a method call keeps TypeScript from narrowing `state`). */
  private get open(): boolean {
    return this.state !== State.Closed;
  }

  /** True once CONNECT was accepted and until the connection closes. */
  get connected(): boolean {
    return this.state === State.Connected;
  }

  // ---- transport side -------------------------------------------------------

  get readGate(): Promise<void> | null {
    return this.gate === null ? null : this.gate.promise;
  }

  data(chunk: Uint8Array): void {
    if (this.state !== State.Connected) {
      if (this.state === State.Closed) return;
      if (this.state === State.AwaitingConnect && this.framer.idle && chunk.length > 0) {
        if (chunk[0] !== FIRST_CONNECT_BYTE) return this.notMqtt(chunk[0]);
      }
    }
    this.lastRx = this.host.clock.now();
    this.host.metrics.bytesReceived += chunk.length;
    try {
      this.framer.feed(chunk, this.onPacket);
    } catch (e) {
      this.fail(e);
      return;
    }
    if (this.outbox.pendingBytes > this.host.limits.maxOutgoingBytes) this.pauseReading();
  }

  closed(): void {
    if (this.state === State.Closed) return;
    const wasConnected = this.state === State.Connected;
    this.state = State.Closed;
    this.outbox.destroy();
    this.acks.clear();
    this.releaseGate();
    const will = this.host.connectionClosed(this, this.session, wasConnected, true);
    if (wasConnected) this.logClosed(will);
  }

  // ---- session side ---------------------------------------------------------

  get congested(): boolean {
    return this.outbox.pendingBytes >= this.host.limits.maxOutgoingBytes;
  }

  get busy(): boolean {
    return this.outbox.pendingBytes * 2 >= this.host.limits.maxOutgoingBytes;
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
      const left = msg.expiresAt - this.host.clock.now();
      if (left <= 0) {
        this.host.metrics.droppedExpired++;
        return false;
      }
      expiry = Math.ceil(left / 1000);
    }
    const v5 = this.v5;
    let mode: AliasMode = AliasMode.None;
    let alias = 0;
    // Resends go without an alias; topics of up to 3 bytes cost no more than one.
    if (this.aliasMax !== 0 && !dup && msg.topicBytes.length > 3) {
      const aliases = this.aliases ??= new OutboundAliases(this.aliasMax);
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
      this.clientMaxPacket !== 0 &&
      (shared === null ? f.length : f.length + shared.length) > this.clientMaxPacket
    ) {
      // Never send more than the client accepts; the message is dropped for it [MQTT-3.1.2-25].
      this.host.metrics.droppedTooLarge++;
      return false;
    }
    // The client learns the alias from this packet: only now is it bound.
    if (mode === AliasMode.Set) this.aliases!.bind(msg.topic, alias);
    if (shared === null) {
      this.outbox.pushPublish(f.bytes, f.length, f.pidOffset, packetId, f.aliasOffset, alias);
    } else {
      this.outbox.pushShared(
        f.bytes,
        f.length,
        f.pidOffset,
        packetId,
        shared,
        f.aliasOffset,
        alias,
      );
    }
    if (msg.sampledAt !== 0 && !dup) {
      this.host.metrics.latency.observe(performance.now() - msg.sampledAt);
    }
    return true;
  }

  sendPubrel(packetId: number): void {
    this.outbox.pushAck(PacketType.PUBREL, packetId, 0, this.v5);
  }

  /** The same client id connected elsewhere. */
  takenOver(): void {
    this.disconnect(ReasonCode.SessionTakenOver, "session taken over");
  }

  // ---- closing --------------------------------------------------------------

  /** Closes after sending DISCONNECT with `code` (MQTT 5 only); used by the server side. */
  disconnect(code: number, reason?: string): void {
    if (this.state === State.Closed) return;
    if (this.closeCode === -1) {
      this.closeCode = code;
      this.closedBy = "server";
    }
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
    this.acks.clear();
    this.releaseGate();
    const will = this.host.connectionClosed(this, this.session, wasConnected, willAllowed);
    if (wasConnected) this.logClosed(will);
  }

  /** The disconnect log line and counter of a client that had connected. */
  private logClosed(will: WillOutcome): void {
    const code = this.closeCode;
    const reason = code === -1 ? "connection_lost" : hex(code);
    this.host.metrics.disconnected(reason);
    const duration = Math.max(0, (this.host.clock.now() - this.connectedAt) / 1000);
    log.info(
      "client {client_id} disconnected: reason {reason_code}, closed by {closed_by} after " +
        "{duration_s} s, will {will}",
      {
        client_id: this.clientId,
        username: this.username ?? null,
        remote_address: this.peer.remoteAddress,
        listener: this.peer.transport,
        reason_code: reason,
        closed_by: this.closedBy,
        duration_s: Math.round(duration * 1000) / 1000,
        will,
      },
    );
  }

  private fail(e: unknown): void {
    if (this.state === State.Closed) return;
    let code: number = ReasonCode.UnspecifiedError;
    let message = "internal error";
    if (e instanceof MqttError) {
      this.host.metrics.protocolErrors++;
      code = e.code;
      message = e.message;
      log.info("closing {client_id} ({remote_address}): {message} ({reason_code})", {
        client_id: this.clientId,
        remote_address: this.peer.remoteAddress,
        message,
        reason_code: hex(code),
      });
    } else {
      // A bug or a throwing authenticator/authorizer: only this connection pays for it.
      this.host.metrics.internalErrors++;
      code = ReasonCode.ImplementationSpecificError;
      log.error("closing {client_id} ({remote_address}) after an internal error: {error}", {
        client_id: this.clientId,
        remote_address: this.peer.remoteAddress,
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

  /**
   * The first byte cannot start a CONNECT (an HTTP request, a TLS hello, a
   * port scan): no answer is owed, and waiting for the length it claims would
   * hold the connection for the whole connect timeout. Cut it at once.
   */
  private notMqtt(byte: number): void {
    this.host.metrics.protocolErrors++;
    log.info("closing {addr}: not MQTT (first byte {byte})", {
      addr: this.peer.remoteAddress,
      byte: `0x${byte.toString(16).padStart(2, "0")}`,
    });
    this.closed();
  }

  /** OutboxOwner: the transport failed. */
  writeFailed(_e: unknown): void {
    this.closed();
  }

  /** OutboxOwner: a write completed. */
  drained(): void {
    this.host.metrics.bytesSent += this.outbox.written;
    this.outbox.written = 0;
    if (
      this.gate !== null && this.state !== State.Authenticating &&
      this.outbox.pendingBytes <= this.host.limits.maxOutgoingBytes / 2
    ) {
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
          throw new ProtocolError(ReasonCode.ProtocolError, "first packet is not CONNECT");
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
        if (this.pendingBytes > this.host.limits.maxConnectBacklog) {
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
        const known = session.releaseQos2(a.packetId);
        const code = known ? 0 : ReasonCode.PacketIdentifierNotFound;
        const written = known ? session.written : null;
        if (written === null) this.outbox.pushAck(PacketType.PUBCOMP, a.packetId, code, this.v5);
        else {
          const send = () => {
            if (this.open) this.outbox.pushAck(PacketType.PUBCOMP, a.packetId, code, this.v5);
          };
          written.then(send, send);
        }
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
        throw new ProtocolError(ReasonCode.ProtocolError, "second CONNECT on one connection");
      case PacketType.AUTH:
        throw new ProtocolError(ReasonCode.ProtocolError, "AUTH without an authentication method");
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
      this.host.metrics.connectsRefused++;
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
    const host = this.host;
    const n = negotiateConnect(pkt, host.limits, () => host.newClientId());
    if ("code" in n) {
      if (pkt.clientId !== "") this.clientId = pkt.clientId;
      return this.refuse(n.code, n.reason);
    }
    this.clientId = n.clientId;
    this.keepAliveTimeout = n.keepAliveTimeoutMs;
    if (host.metrics.connectionsCurrent > host.limits.maxConnections) {
      return this.refuse(ReasonCode.QuotaExceeded, "connection limit reached");
    }
    this.clientMaxPacket = n.clientMaxPacket;
    this.sendWindow = n.sendWindow;
    this.aliasMax = n.clientTopicAliasMax;

    const decision = host.authenticate({
      clientId: n.clientId,
      username: pkt.username,
      password: pkt.password,
      certificateIdentity: this.peer.certificateIdentity,
      remoteAddress: this.peer.remoteAddress,
      protocolLevel: pkt.protocolLevel,
      acceptedAt: this.acceptedAt,
    });
    if (decision instanceof Promise) {
      this.waitFor(decision.then((d) => this.authenticated(d, pkt, n)));
    } else {
      this.authenticated(decision, pkt, n);
    }
  }

  /** Holds reading and packet handling until `step` (authentication, attach) is done. */
  private waitFor(step: Promise<void>): void {
    this.state = State.Authenticating;
    this.pauseReading();
    step.catch((e) => this.fail(e));
  }

  private refuse(code: number, reason: string): void {
    this.host.metrics.connectsRefused++;
    log.info("refused {client_id} from {remote_address} with {reason_code}: {reason}", {
      client_id: this.clientId,
      remote_address: this.peer.remoteAddress,
      listener: this.peer.transport,
      reason_code: hex(code),
      reason,
    });
    this.outbox.push(
      encodeConnack(this.level as ProtocolLevel, false, code, { reasonString: reason }),
    );
    this.end(false);
  }

  private authenticated(d: AuthDecision, pkt: ConnectPacket, n: Negotiated): void | Promise<void> {
    if (this.state === State.Closed) return;
    // Failures are counted by the authentication policy (src/auth/authenticator.ts).
    if (!d.ok) return this.refuse(d.reasonCode, d.reason);
    this.username = d.username;
    if (pkt.will && !this.host.mayPublish(this.clientId, d.username, pkt.will.topic)) {
      return this.refuse(ReasonCode.NotAuthorized, "will topic not authorized");
    }
    const attached = this.host.attach(this, {
      cleanStart: pkt.cleanStart,
      owner: d.username ?? null,
    });
    if (attached instanceof Promise) {
      const step = attached.then((a) => this.attached(a, pkt, n));
      if (this.state !== State.Authenticating) this.waitFor(step);
      return step;
    }
    this.attached(attached, pkt, n);
  }

  private attached(a: AttachResult, pkt: ConnectPacket, n: Negotiated): void {
    if (this.state === State.Closed) return;
    if (!a.ok) return this.refuse(a.code, a.reason);
    const { session, present } = a;
    this.session = session;
    session.setExpiry(n.grantedExpiry);
    session.setWill(buildWill(pkt, this.clientId));
    this.state = State.Connected;
    this.host.sessionChanged(session);

    const props = this.v5 ? connackProperties(n, this.host.limits) : {};
    this.outbox.push(
      encodeConnack(this.level as ProtocolLevel, present, 0, props, this.clientMaxPacket),
    );
    this.host.metrics.connects++;
    this.connectedAt = this.host.clock.now();
    log.info(
      "client {client_id} connected from {remote_address} over {listener}: MQTT " +
        "{protocol_version}, user {username}, keep alive {keep_alive} s, clean start " +
        "{clean_start}, session present {session_present}",
      {
        client_id: this.clientId,
        username: this.username ?? null,
        certificate_identity: this.peer.certificateIdentity ?? null,
        remote_address: this.peer.remoteAddress,
        listener: this.peer.transport,
        protocol_version: PROTOCOL_NAMES[this.level] ?? String(this.level),
        keep_alive: n.keepAliveTimeoutMs / 1500,
        clean_start: pkt.cleanStart,
        session_present: present,
      },
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

  // ---- PUBLISH --------------------------------------------------------------

  private onPublish(flags: number, buf: Uint8Array, start: number, end: number): void {
    const host = this.host;
    const topics = this.topics ??= new InboundTopics(host.limits, this.v5);
    const p = decodePublish(buf, start, end, flags, this.v5, topics.last);
    host.metrics.receivedByQos[p.qos]++;
    topics.resolve(p, buf);
    const topic = topics.topic;
    const qos = p.qos;
    const pid = p.packetId;
    if (p.payloadFormat === -2) {
      if (qos > 0) this.ack(qos, pid, ReasonCode.PayloadFormatInvalid);
      return;
    }
    if (
      topic.charCodeAt(0) === 0x24 /* $ */ || !host.mayPublish(this.clientId, this.username, topic)
    ) {
      // Refused publishes are acknowledged with 0x87 in MQTT 5; 3.1.1 has no
      // way to refuse, so they get a normal acknowledgement and are dropped.
      if (qos > 0) this.ack(qos, pid, ReasonCode.NotAuthorized);
      return;
    }
    const session = this.session!;
    if (qos === 2) {
      if (!session.receiveQos2(pid)) {
        // A resend of a message already routed: acknowledge again, never route twice.
        this.acks.ack(2, pid, 0, null, 0);
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
      this.clientId,
      now,
      this.framer.dedicated,
    );
    if (
      p.retain && qos !== 0 && this.v5 && msg.payload.length !== 0 && !host.retainFits(msg)
    ) {
      // The retained store is full: an MQTT 5 publisher is told, and the message is not
      // accepted. QoS 0 and 3.1.1 cannot be told: those are delivered but not retained.
      host.metrics.retainedRefused++;
      this.ack(qos, pid, ReasonCode.QuotaExceeded);
      return;
    }
    const n = host.publish(
      msg,
      this.info ??= {
        clientId: this.clientId,
        username: this.username,
        receivedAt: 0,
        kind: "client",
      },
    );
    if (qos !== 0) {
      this.acks.ack(
        qos,
        pid,
        n === 0 ? ReasonCode.NoMatchingSubscribers : 0,
        host.publishWritten,
        ReasonCode.UnspecifiedError,
      );
    }
  }

  private ack(qos: number, pid: number, code: number): void {
    // 3.1.1 cannot carry a failure: an unsaved message gets no acknowledgement, so the
    // client sends it again after reconnecting.
    if (!this.v5 && code === ReasonCode.UnspecifiedError) return this.disconnect(code);
    this.outbox.pushAck(qos === 1 ? PacketType.PUBACK : PacketType.PUBREC, pid, code, this.v5);
  }

  // ---- SUBSCRIBE / UNSUBSCRIBE ----------------------------------------------

  private onSubscribe(buf: Uint8Array, start: number, end: number): void {
    const host = this.host;
    const level = this.level as ProtocolLevel;
    const pkt = decodeSubscribe(buf, start, end, level);
    const session = this.session!;
    const decisions = decideSubscriptions(
      pkt,
      session,
      host.limits,
      (filter) => host.maySubscribe(this.clientId, this.username, filter),
      host.subscriptionUsage(session),
    );
    const codes: number[] = [];
    const withRetained: Subscription[] = [];
    let waits: Promise<void>[] | null = null;
    for (const d of decisions) {
      if (d.sub === undefined) {
        if (d.code === ReasonCode.QuotaExceeded) host.metrics.subscriptionsRefused++;
        codes.push(d.code);
        continue;
      }
      const r = host.subscribe(session, d.sub);
      if (r.ready !== null) (waits ??= []).push(r.ready);
      codes.push(d.sub.qos);
      if (wantsRetained(d.sub, r.existed)) withRetained.push(d.sub);
    }
    host.sessionChanged(session);
    // A subscription the client was told about must survive a crash.
    const written = session.written;
    if (written !== null) (waits ??= []).push(written);
    const finish = () => {
      if (this.state === State.Closed) return;
      this.outbox.push(encodeSuback(level, pkt.packetId, codes));
      if (withRetained.length !== 0) sendRetained(this.host, session, withRetained);
    };
    if (waits === null) finish();
    // A route that could not be written is retried by the cluster; the local subscription holds.
    else Promise.all(waits).catch(() => {}).then(finish);
  }

  private onUnsubscribe(buf: Uint8Array, start: number, end: number): void {
    const pkt = decodeUnsubscribe(buf, start, end, this.level as ProtocolLevel);
    const codes: number[] = [];
    const session = this.session!;
    for (const f of pkt.filters) {
      const tf = parseFilter(f, this.host.limits);
      if (typeof tf === "string") codes.push(ReasonCode.TopicFilterInvalid);
      else {
        codes.push(
          this.host.unsubscribe(session, tf.key)
            ? ReasonCode.Success
            : ReasonCode.NoSubscriptionExisted,
        );
      }
    }
    this.host.sessionChanged(session);
    const unsuback = encodeUnsuback(this.level as ProtocolLevel, pkt.packetId, codes);
    const written = session.written;
    if (written === null) this.outbox.push(unsuback);
    else {
      // The same chain as a waiting SUBACK's, so replies keep the order of their requests.
      Promise.all([written]).catch(() => {}).then(() => {
        if (this.open) this.outbox.push(unsuback);
      });
    }
  }

  // ---- DISCONNECT -----------------------------------------------------------

  private onDisconnect(buf: Uint8Array, start: number, end: number): void {
    const d = decodeDisconnect(buf, start, end, this.level as ProtocolLevel);
    const session = this.session!;
    if (d.sessionExpiryInterval !== undefined) {
      if (session.expiryInterval === 0 && d.sessionExpiryInterval !== 0) {
        throw new ProtocolError(
          ReasonCode.ProtocolError,
          "Session Expiry Interval changed from 0 at DISCONNECT",
        );
      }
      session.setExpiry(Math.min(d.sessionExpiryInterval, this.host.limits.maxSessionExpiry));
    }
    this.closeCode = d.reasonCode;
    this.closedBy = "client";
    // Only a normal disconnection (0x00) deletes the will [MQTT-3.14.4-3]; 0x04 and the
    // error codes leave it to be published [MQTT-3.1.2-8].
    this.end(d.reasonCode !== ReasonCode.Success);
  }

  /** Called by the keep-alive sweep. */
  checkTimeouts(now: number): void {
    if (this.state === State.AwaitingConnect) {
      if (now - this.acceptedAt > this.host.limits.connectTimeoutMs) {
        log.info("no CONNECT from {remote_address} in time", {
          remote_address: this.peer.remoteAddress,
        });
        this.end(false);
      }
    } else if (this.state === State.Connected) {
      if (this.keepAliveTimeout !== 0 && now - this.lastRx > this.keepAliveTimeout) {
        log.info("keep alive timeout for {client_id}", { client_id: this.clientId });
        this.disconnect(ReasonCode.KeepAliveTimeout, "keep alive timeout");
      } else if (now - this.lastRx > this.host.limits.idleTrimMs) {
        this.outbox.trim();
      }
    }
  }
}
