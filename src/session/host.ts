/**
 * The narrow interfaces around a connection: what a transport gives it and
 * drives, and what it asks of the broker core (`ConnectionHost`). The core
 * implements the host; the connection never sees the core's internals.
 */
import type { AuthDecision, AuthExchange, ConnectRequest, SubscribeAccess } from "../auth/types.ts";
import type { Bus } from "../cluster/types.ts";
import type { Metrics } from "../ops/metrics.ts";
import type { Clock } from "../ops/clock.ts";
import type { Message } from "../protocol/message.ts";
import type { SubscriptionUsage } from "../router/router.ts";
import type { Subscription } from "../router/types.ts";
import type { PublishInfo } from "../sinks/types.ts";
import type { Pending } from "./admission.ts";
import type { CoreLimits } from "./limits.ts";
import type { Session } from "./session.ts";
import type { SessionLink } from "./session_types.ts";

/** What a transport knows about the peer. */
export interface PeerInfo {
  remoteAddress: string;
  transport: "tcp" | "tls" | "ws" | "wss";
  /** Identity from a verified client certificate (already mapped per [tls] identity). */
  certificateIdentity?: string;
  /**
   * The peer presented a certificate that verified, whether or not it carries the identity
   * [tls] identity names (then `certificateIdentity` is undefined and the client is refused).
   */
  certificateVerified?: boolean;
  /**
   * Why the verified certificate may not authenticate a TLS client (its keyUsage or
   * extendedKeyUsage forbids it); `certificateIdentity` is then undefined.
   */
  certificateRefusal?: string;
  /**
   * When the verified certificate stops being valid (its notAfter, ms since the epoch): a
   * client still connected then is disconnected (connection.ts, checkTimeouts).
   */
  certificateExpiresAt?: number;
}

/** Whether the peer's certificate stopped vouching for it by `now` (ms since the epoch). */
export function certificateExpired(peer: PeerInfo, now: number): boolean {
  const at = peer.certificateExpiresAt;
  return at !== undefined && now >= at;
}

/** The part of a connection a transport drives. */
export interface ConnectionHandler {
  /**
   * `length` bytes arrived, `chunk[0, length)` (the transport's read buffer, passed whole so
   * that no view of it is made per read or kept by an idle connection); only valid during the
   * call.
   */
  data(chunk: Uint8Array, length: number): void;
  /** The transport saw the socket end (EOF or error). */
  closed(): void;
  /** Non-null while the transport should stop reading (backpressure). */
  readonly readGate: Promise<void> | null;
  /**
   * True until the first packet (CONNECT) has been read: a transport that buffers whole
   * messages (WebSocket) holds a peer to limits.max_connect_packet_size meanwhile.
   */
  readonly awaitingConnect?: boolean;
}

/** A connection as the core's registry sees it. */
export interface AttachingConnection extends SessionLink {
  readonly clientId: string;
  readonly peer: PeerInfo;
}

/** What a connection that passed authentication asks to be bound to. */
export interface AttachRequest {
  cleanStart: boolean;
  /** Username or certificate identity (null when anonymous): who will own the session. */
  owner: string | null;
}

/** The session a connection was bound to, or why it was refused. */
export type AttachResult =
  | { ok: true; session: Session; present: boolean }
  | { ok: false; code: number; reason: string };

/** A subscription was added: whether it replaced one, and what SUBACK must wait for. */
export interface SubscribeResult {
  existed: boolean;
  /** Resolves once the cluster routes matching messages here; null when nothing to wait for. */
  ready: Promise<void> | null;
}

/** What became of a closed connection's will: published now, waiting for its delay, or none. */
export type WillOutcome = "sent" | "delayed" | "none";

/** What a connection needs from the broker core. */
export interface ConnectionHost {
  readonly limits: CoreLimits;
  readonly metrics: Metrics;
  readonly clock: Clock;
  authenticate(req: ConnectRequest): AuthDecision | Promise<AuthDecision>;
  /** An enhanced-authentication exchange for `method`, undefined when it is not offered. */
  exchange(method: string, req: ConnectRequest): AuthExchange | undefined;
  mayPublish(clientId: string, username: string | undefined, topic: string): boolean;
  /** 0 refused, 1 granted, 2 granted with each message checked at delivery (`mayReceive`). */
  maySubscribe(clientId: string, username: string | undefined, filter: string): SubscribeAccess;
  /** Whether a message on `topic` may be delivered on `sub` (for subscriptions with needsCheck). */
  mayReceive(sub: Subscription, topic: string): boolean;
  /** A fresh, unguessable client id for a client that sent none. */
  newClientId(): string;
  /** Binds `conn` to its session (taking over another connection with the same client id). */
  attach(conn: AttachingConnection, req: AttachRequest): AttachResult | Promise<AttachResult>;
  /**
   * The one way in for a message published on this node. Returns the number
   * of local deliveries; `publishWritten` then holds what the acknowledgement
   * must wait for (store and cluster writes), or null.
   */
  publish(msg: Message, info: PublishInfo): number;
  readonly publishWritten: Promise<void> | null;
  /** Asked after `publish`: whether the publisher must stop being read for a while. */
  readonly bus: Pick<Bus, "heldPublisher">;
  subscribe(session: Session, sub: Subscription): SubscribeResult;
  /** What `session` holds now, for the per-client subscription limits. */
  subscriptionUsage(session: Session): SubscriptionUsage;
  /** True when the subscription existed. */
  unsubscribe(session: Session, key: string): boolean;
  /** The session's expiry or will changed, or it connected: persist it whole. */
  sessionChanged(session: Session): void;
  /**
   * SUBSCRIBE or UNSUBSCRIBE changed the session's subscriptions: `changed` holds each
   * subscription added or replaced and the key of each one removed, in order.
   */
  subscriptionsChanged(session: Session, changed: readonly (Subscription | string)[]): void;
  /** The retained messages matching `filter`, found lazily (see RetainedStore.cursor). */
  retainedCursor(filter: string): Iterator<Message>;
  /** Whether the retained store has room for `msg` (limits.max_retained_*). */
  retainFits(msg: Message): boolean;
  /** True while the store is too far behind to keep more: QoS 1/2 publishes are refused. */
  readonly storeFull: boolean;
  /**
   * A connection's CONNECT was accepted, or it closed first: `p` (its socket) is no longer
   * closed to make room for a new socket (admission.ts).
   */
  settlePending(p: Pending): void;
  /** A connection ended; `willAllowed` is false after a normal DISCONNECT. */
  connectionClosed(
    conn: AttachingConnection,
    session: Session | null,
    wasConnected: boolean,
    willAllowed: boolean,
  ): WillOutcome;
}
