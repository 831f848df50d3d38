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
import { encodeDisconnect } from "../protocol/control.ts";
import {
  checkFixedHeader,
  decodeAck,
  decodeDisconnect,
  PacketType,
  type ProtocolLevel,
} from "../protocol/decode.ts";
import { Framer } from "../protocol/framer.ts";
import type { Message } from "../protocol/message.ts";
import { type ByteWriter, flushDeliveries, Outbox } from "../protocol/outbox.ts";
import { PINGRESP } from "../protocol/publish.ts";
import {
  MalformedPacketError,
  MqttError,
  ProtocolError,
  ReasonCode,
} from "../protocol/reason_codes.ts";
import type { PublishInfo } from "../sinks/types.ts";
import { AckQueue } from "./acks.ts";
import { type AuthState, duringExchange, onAuth, reauthOverdue } from "./auth_flow.ts";
import { onConnect } from "./connect_flow.ts";
import { failConnection, notMqtt } from "./failure.ts";
import { State } from "./connection_state.ts";
import {
  type AttachingConnection,
  certificateExpired,
  type ConnectionHandler,
  type ConnectionHost,
  type PeerInfo,
  type WillOutcome,
} from "./host.ts";
import type { Pending } from "./admission.ts";
import { type RateLimit, Swept } from "./rate_limit.ts";
import type { InboundTopics } from "./inbound_topic.ts";
import type { OutboundAliases } from "./outbound_aliases.ts";
import { onPublish, onPubrec, onPubrel, sendPublish } from "./publish_flow.ts";
import type { Session } from "./session.ts";
import { onSubscribe, onUnsubscribe } from "./subscribe_flow.ts";

export type { ConnectionHandler, PeerInfo } from "./host.ts";

const log = getLogger(["mcloudtt", "connection"]);

/** CONNECT with its reserved flag bits clear: the only valid first byte [MQTT-3.1.0-1, 2.1.3-1]. */
const FIRST_CONNECT_BYTE = 0x10;

/**
 * The flows of a connection live in their own modules (connect_flow.ts,
 * publish_flow.ts, subscribe_flow.ts) as functions of the connection: fields
 * they share are not private, but nothing outside src/session touches them.
 * Functions rather than helper objects keep an idle connection at one object.
 */
export class Connection implements ConnectionHandler, AttachingConnection {
  state: number = State.AwaitingConnect;
  level: ProtocolLevel | 0 = 0;
  v5 = false;
  session: Session | null = null;
  clientId = "";
  username: string | undefined;
  /** Last time bytes arrived (ms since epoch). */
  lastRx: number;
  /**
   * When the socket was accepted (clock ms), and from CONNACK on when CONNECT was accepted:
   * the connect timeout counts from the first, the disconnect log line's duration from the
   * second. One field for both, as a timestamp costs a 16-byte number besides its slot.
   */
  since: number;
  /** Keep alive timeout in ms (1.5 x keep alive), 0 for none. */
  keepAliveTimeout = 0;
  sendWindow = 65535;
  /**
   * The client's Maximum Packet Size, 0 for none; -1 until its CONNECT is decoded, when a
   * refusal may not carry a Reason String: the client may allow less [MQTT-3.2.2-19].
   */
  clientMaxPacket = -1;
  /**
   * CONNECT asked for a Session Expiry Interval of 0: then a DISCONNECT may not set another
   * (section 3.14.2.2.2, a Protocol Error; not [MQTT-3.14.2-2], which forbids the server to
   * send the property). What CONNECT asked, not what CONNACK granted: a server maximum of 0
   * grants 0 to every client, and those that asked for more may still name a value.
   */
  connectExpiryZero = false;

  /** Whether a packet of `size` bytes may be sent: the client's Maximum Packet Size [MQTT-3.1.2-24]. */
  fits(size: number): boolean {
    return this.clientMaxPacket <= 0 || size <= this.clientMaxPacket;
  }
  /** Topic aliases this connection may use towards the client (0: none), and their table. */
  aliasMax = 0;
  aliases: OutboundAliases | null = null;
  topics: InboundTopics | null = null;
  readonly framer: Framer;
  readonly outbox: Outbox;
  private gate: { promise: Promise<void>; resolve: () => void } | null = null;
  private pending: Uint8Array[] | null = null;
  private pendingBytes = 0;
  /** Made on the first QoS 1/2 PUBLISH: a subscriber-only or idle client never needs it. */
  private ackQueue: AckQueue | null = null;
  /** Reading paused because more than Receive Maximum acknowledgements wait. */
  private acksFull = false;
  /** Not read until its messages' copies for other nodes are written (see `holdReading`). */
  private forwardsHeld = false;
  /** Its publish and read rates (rate_limit.ts), from CONNACK on when limits.rate bounds any. */
  rate: RateLimit | null = null;
  /** Enhanced authentication (auth_flow.ts), when its CONNECT named a method. */
  auth: AuthState | null = null;
  /** PublishInfo of this client's messages, made once (the sink keeps a reference). */
  info: PublishInfo | null = null;
  /**
   * Its socket as the broker may close it to make room for a new one (admission.ts), until its
   * CONNECT is accepted: the socket of a TLS or WebSocket connection, else this connection.
   */
  admitted: Pending | null = null;
  /** The DISCONNECT reason code sent or received, -1 when the connection was just lost. */
  private closeCode = -1;
  private closedBy: "client" | "server" | "network" = "network";

  /**
   * `openMs`: how long the socket has been open already (its TLS handshake, its WebSocket
   * upgrade). The connect timeout counts from the socket's accept: counted from here, each of
   * those steps had a connect timeout of its own, and a secure WebSocket peer stayed
   * unauthenticated for three of them (29.6 s of a 10 s limits.connect_timeout).
   */
  constructor(
    readonly host: ConnectionHost,
    sink: ByteWriter,
    readonly peer: PeerInfo,
    openMs = 0,
  ) {
    // Until CONNECT arrives the peer is unknown: a socket announcing max_packet_size and
    // trickling it would hold that much each, up to the socket limit.
    this.framer = new Framer(host.limits.maxConnectPacketSize);
    this.outbox = new Outbox(sink, this);
    this.lastRx = host.clock.now();
    this.since = this.lastRx - openMs;
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

  get awaitingConnect(): boolean {
    return this.state === State.AwaitingConnect;
  }

  get readGate(): Promise<void> | null {
    return this.gate === null ? null : this.gate.promise;
  }

  data(chunk: Uint8Array, length: number): void {
    if (this.state !== State.Connected) {
      if (this.state === State.Closed) return;
      if (this.state === State.AwaitingConnect && this.framer.idle && length > 0) {
        if (chunk[0] !== FIRST_CONNECT_BYTE) return notMqtt(this, chunk[0]);
      }
    }
    const now = this.lastRx = this.host.clock.now();
    this.host.metrics.bytesReceived += length;
    const rate = this.rate;
    if (rate !== null) {
      rate.read(length, now);
      // Read while PUBLISH packets are in debt (the transport's last reads as it stops, or after
      // publishes pipelined behind CONNECT): behind those waiting.
      if (rate.waiting || !rate.mayGoOn) {
        rate.defer(chunk, 0, length);
        return this.throttle(rate);
      }
    }
    this.feed(chunk, length);
  }

  /** Stops reading if `rate` just ran out (the sweep releases it: checkTimeouts). */
  private throttle(rate: RateLimit): void {
    if (rate.exhausted(this.clientId, this.peer.remoteAddress, this.lastRx)) this.pauseReading();
  }

  /** Frames and handles `chunk[0, length)`, then decides whether to go on reading. */
  private feed(chunk: Uint8Array, length: number): void {
    try {
      const stopped = this.framer.feed(chunk, this, length);
      if (stopped < length && this.rate !== null && this.open) {
        this.rate.defer(chunk, stopped, length);
      }
    } catch (e) {
      this.fail(e);
      return;
    }
    flushDeliveries();
    if (this.outbox.pendingBytes > this.host.limits.maxOutgoingBytes) this.pauseReading();
    else if (
      this.ackQueue !== null && this.ackQueue.waiting > this.host.limits.receiveMaximum
    ) {
      // More publishes wait for their acknowledgement than Receive Maximum allows (a client that
      // ignores it, or MQTT 3.1.1, which has none, while a store or a cluster node is behind):
      // what it sends next stays in its socket, not in the store, Redis or this process.
      this.acksFull = true;
      this.pauseReading();
    }
    if (this.rate !== null) this.throttle(this.rate);
  }

  closed(): void {
    if (this.state === State.Closed) return;
    const wasConnected = this.state === State.Connected;
    this.state = State.Closed;
    this.leavePending();
    this.rate?.closed();
    this.outbox.destroy();
    this.ackQueue?.clear();
    this.releaseGate();
    const will = this.host.connectionClosed(this, this.session, wasConnected, true);
    if (wasConnected) this.logClosed(will);
  }

  /** Closes the socket at once: the broker makes room for a new one (admission.ts). */
  cut(): void {
    this.closed();
  }

  /** Its CONNECT was accepted, or it closed: its socket no longer makes room for others. */
  leavePending(): void {
    const p = this.admitted;
    if (p === null) return;
    this.admitted = null;
    this.host.settlePending(p);
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
    return sendPublish(this, msg, qos, retain, dup, packetId, subIds);
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
  end(willAllowed: boolean): void {
    if (this.state === State.Closed) return;
    const wasConnected = this.state === State.Connected;
    this.state = State.Closed;
    this.leavePending();
    this.rate?.closed();
    this.outbox.end();
    this.ackQueue?.clear();
    this.releaseGate();
    const will = this.host.connectionClosed(this, this.session, wasConnected, willAllowed);
    if (wasConnected) this.logClosed(will);
  }

  /** The disconnect log line and counter of a client that had connected. */
  private logClosed(will: WillOutcome): void {
    const code = this.closeCode;
    const reason = code === -1 ? "connection_lost" : hex(code);
    this.host.metrics.disconnected(reason);
    if (!log.isEnabledFor("info")) return;
    const duration = Math.max(0, (this.host.clock.now() - this.since) / 1000);
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

  /** Ends the connection after an error, with its reason code when it is an MQTT one. */
  fail(e: unknown): void {
    failConnection(this, e);
  }

  /** OutboxOwner: the transport failed. */
  writeFailed(_e: unknown): void {
    this.closed();
  }

  /** OutboxOwner: a write completed. */
  drained(): void {
    this.host.metrics.bytesSent += this.outbox.written;
    this.outbox.written = 0;
    if (this.gate !== null) this.resumeReading();
    this.session?.pump();
  }

  /**
   * Reads again unless something still holds reading back: authentication under way,
   * acknowledgements over Receive Maximum, forwards held for other nodes, a rate limit's debt,
   * or an outbox over half of limits.max_outgoing_bytes. The one place that decides it, for each
   * of those that ends.
   */
  private resumeReading(): void {
    if (
      this.state !== State.Authenticating && !this.acksFull && !this.forwardsHeld &&
      !this.rate?.held &&
      this.outbox.pendingBytes <= this.host.limits.maxOutgoingBytes / 2
    ) {
      this.releaseGate();
    }
  }

  /** Its rate's debt is paid: what waited is handled, and reading goes on unless it ran out again. */
  private released(rate: RateLimit): void {
    const d = rate.takeDeferred();
    if (d !== null) this.feed(d, d.length);
    this.resumeReading();
  }

  pauseReading(): void {
    if (this.gate !== null) return;
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    this.gate = { promise, resolve };
  }

  releaseGate(): void {
    const g = this.gate;
    if (g === null) return;
    this.gate = null;
    g.resolve();
  }

  // ---- packets --------------------------------------------------------------

  handlePacket(header: number, buf: Uint8Array, start: number, end: number): boolean {
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
        // What the client pipelines behind CONNECT may be as large as any packet.
        this.framer.maxPacketSize = this.host.limits.maxPacketSize;
        onConnect(this, buf, start, end);
        return this.open;
      case State.Authenticating: {
        if (this.auth !== null && this.auth.connect !== null && this.auth.exchange !== null) {
          return duringExchange(this, header, buf, start, end);
        }
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
      onPublish(this, flags, buf, start, end);
      const rate = this.rate;
      if (rate === null) return this.open;
      // Counted here, so a read stops at the PUBLISH that used the last token (rate_limit.ts).
      rate.published();
      return this.open && rate.mayGoOn;
    }
    checkFixedHeader(type, flags, this.level);
    const session = this.session!;
    switch (type) {
      case PacketType.PUBACK:
        session.onPuback(decodeAck(buf, start, end, this.level as ProtocolLevel).packetId);
        break;
      case PacketType.PUBREC:
        onPubrec(this, session, buf, start, end);
        break;
      case PacketType.PUBREL:
        onPubrel(this, session, buf, start, end);
        break;
      case PacketType.PUBCOMP:
        session.onPubcomp(decodeAck(buf, start, end, this.level as ProtocolLevel).packetId);
        break;
      case PacketType.PINGREQ:
        if (end !== start) throw new MalformedPacketError("PINGREQ with a body");
        this.outbox.push(PINGRESP);
        break;
      case PacketType.SUBSCRIBE:
        onSubscribe(this, buf, start, end);
        break;
      case PacketType.UNSUBSCRIBE:
        onUnsubscribe(this, buf, start, end);
        break;
      case PacketType.DISCONNECT:
        this.onDisconnect(buf, start, end);
        return false;
      case PacketType.CONNECT:
        throw new ProtocolError(ReasonCode.ProtocolError, "second CONNECT on one connection");
      case PacketType.AUTH:
        onAuth(this, buf, start, end);
        break;
    }
    return true;
  }

  /** Handles what the client pipelined behind CONNECT, once CONNACK went out. */
  replayPending(): void {
    const pending = this.pending;
    this.pending = null;
    if (pending === null) return;
    try {
      for (const p of pending) {
        // Pipelined behind CONNECT (max_connect_backlog): handled whatever a rate's debt.
        if (!this.handlePacket(p[0], p, 1, p.length) && !this.open) break;
      }
    } catch (e) {
      this.fail(e);
    }
  }

  // ---- PUBLISH ----

  /** PUBACK/PUBREC in PUBLISH order (see acks.ts). */
  get acks(): AckQueue {
    return this.ackQueue ??= new AckQueue(
      (qos, pid, code) => this.ack(qos, pid, code),
      () => this.acksSent(),
    );
  }

  /** Waiting acknowledgements went out: read again once they are back within Receive Maximum. */
  private acksSent(): void {
    if (!this.acksFull || this.ackQueue!.waiting > this.host.limits.receiveMaximum / 2) return;
    this.acksFull = false;
    this.resumeReading();
  }

  /**
   * Stops reading until `until` resolves: this client's messages were written for other nodes
   * past their bound with nothing else to slow it down (Bus.heldPublisher).
   */
  holdReading(until: Promise<void>): void {
    if (this.forwardsHeld) return;
    this.forwardsHeld = true;
    this.host.metrics.publishersHeld++;
    this.pauseReading();
    until.then(() => {
      this.forwardsHeld = false;
      this.resumeReading();
    });
  }

  /**
   * Acknowledges a PUBLISH that needs no write (a refusal) at once, or behind the
   * acknowledgements still waiting for theirs [MQTT-4.6.0-2]; no queue is made for it.
   */
  ackInOrder(qos: number, pid: number, code: number): void {
    const q = this.ackQueue;
    if (q !== null && q.busy) q.ack(qos as 1 | 2, pid, code, null, code);
    else this.ack(qos, pid, code);
  }

  /** Acknowledges an incoming QoS 1/2 PUBLISH (called in order by `acks`). */
  ack(qos: number, pid: number, code: number): void {
    // A refused QoS 2 PUBLISH was not accepted: its packet id is free again [MQTT-4.3.3],
    // and the same id sent again is a new message, not a resend to acknowledge unrouted.
    if (qos === 2 && code >= 0x80) this.session?.releaseQos2(pid);
    // 3.1.1 cannot carry a failure: an unsaved message gets no acknowledgement, so the
    // client sends it again after reconnecting.
    if (!this.v5 && code === ReasonCode.UnspecifiedError) return this.disconnect(code);
    this.outbox.pushAck(qos === 1 ? PacketType.PUBACK : PacketType.PUBREC, pid, code, this.v5);
  }

  // ---- DISCONNECT -----------------------------------------------------------

  private onDisconnect(buf: Uint8Array, start: number, end: number): void {
    const d = decodeDisconnect(buf, start, end, this.level as ProtocolLevel);
    const session = this.session!;
    if (d.sessionExpiryInterval !== undefined) {
      if (this.connectExpiryZero && d.sessionExpiryInterval !== 0) {
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
    if (
      this.state === State.AwaitingConnect ||
      (this.state === State.Authenticating && this.auth?.exchange != null)
    ) {
      if (now - this.since > this.host.limits.connectTimeoutMs) {
        log.info("no CONNECT from {remote_address} in time", {
          remote_address: this.peer.remoteAddress,
        });
        this.end(false);
      }
    } else if (this.state === State.Connected) {
      // What went out since the last sweep and is still unacknowledged stops holding arena
      // chunks (see Message.ownBriefly).
      this.session?.settleInflight();
      // Not reading because its acknowledgements wait is this side's doing: the client's
      // packets wait in the socket, its keep alive with them.
      const held = this.acksFull || this.forwardsHeld || this.rate?.held === true;
      if (held) this.lastRx = now;
      const rate = this.rate;
      if (rate !== null) {
        const swept = rate.sweep(now);
        if (swept === Swept.Released) this.released(rate);
        else if (swept === Swept.TooLong) {
          const s = this.host.limits.rate.maxThrottledMs / 1000;
          return this.disconnect(ReasonCode.MessageRateTooHigh, `over its rate for ${s} s`);
        }
      }
      if (reauthOverdue(this, now, held)) return;
      if (certificateExpired(this.peer, now)) {
        // The identity it logged in with is no longer vouched for: as with a revoked password,
        // access ends now, not at the next reconnect (which the handshake would refuse).
        this.host.metrics.certificatesExpired++;
        log.info("disconnecting {client_id}: its client certificate expired", {
          client_id: this.clientId,
          remote_address: this.peer.remoteAddress,
        });
        this.disconnect(ReasonCode.NotAuthorized, "client certificate expired");
      } else if (this.keepAliveTimeout !== 0 && now - this.lastRx > this.keepAliveTimeout) {
        log.info("keep alive timeout for {client_id}", { client_id: this.clientId });
        this.disconnect(ReasonCode.KeepAliveTimeout, "keep alive timeout");
      } else if (now - this.lastRx > this.host.limits.idleTrimMs) {
        this.outbox.trim();
      }
    }
  }
}
