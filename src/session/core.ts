/**
 * The transport-agnostic broker core: the session registry (client id ->
 * session, takeover, expiry), wills, the keep-alive sweep, and the glue
 * between connections, the router and authentication. It imports no socket,
 * TLS, Redis or BigQuery code; transports hand it byte streams via `accept`.
 */
import { getLogger } from "@logtape/logtape";
import type { Authenticator, Authorizer } from "../auth/types.ts";
import { Message } from "../protocol/message.ts";
import type { ByteSink } from "../protocol/outbox.ts";
import type { Metrics } from "../ops/metrics.ts";
import type { Router } from "../router/router.ts";
import { Connection, type PeerInfo } from "./connection.ts";
import { NEVER_EXPIRES, Session } from "./session.ts";

const log = getLogger(["mcloudtt", "core"]);

/** Every bound the core enforces; built from the [limits] config section. */
export interface CoreLimits {
  maxPacketSize: number;
  receiveMaximum: number;
  topicAliasMaximum: number;
  maxKeepAlive: number;
  /** Server Keep Alive imposed on every client, 0 for none ([general] timeout). */
  serverKeepAlive: number;
  maxInflight: number;
  maxQueued: number;
  queueDropPolicy: "newest" | "oldest";
  maxTopicLength: number;
  maxTopicLevels: number;
  connectTimeoutMs: number;
  maxConnections: number;
  maxSessionExpiry: number;
  maxOutgoingBytes: number;
}

export interface CoreOptions {
  limits: CoreLimits;
  router: Router;
  metrics: Metrics;
  auth: Authenticator;
  authorizer?: Authorizer | null;
}

const SWEEP_MS = 500;

export class BrokerCore {
  readonly limits: CoreLimits;
  readonly router: Router;
  readonly metrics: Metrics;
  auth: Authenticator;
  authorizer: Authorizer | null;
  private readonly sessions = new Map<string, Session>();
  private readonly connections = new Set<Connection>();
  /** Sessions without a connection that have a will or an expiry pending. */
  private readonly detached = new Set<Session>();
  private sweepTimer: ReturnType<typeof setInterval> | undefined;
  /** The stop() reason while stopped: transports may still hand over a late handshake. */
  private stoppedWith: number | null = null;
  private idCounter = 0;
  private readonly idPrefix = `mcloudtt-${crypto.randomUUID().slice(0, 8)}-`;

  constructor(opts: CoreOptions) {
    this.limits = opts.limits;
    this.router = opts.router;
    this.metrics = opts.metrics;
    this.auth = opts.auth;
    this.authorizer = opts.authorizer ?? null;
  }

  /** Starts the keep-alive/expiry sweep. */
  start(): void {
    this.stoppedWith = null;
    this.sweepTimer ??= setInterval(() => this.sweep(Date.now()), SWEEP_MS);
  }

  /** Stops the sweep and closes every connection with `reasonCode` (MQTT 5 DISCONNECT). */
  stop(reasonCode: number): void {
    if (this.sweepTimer !== undefined) clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    this.stoppedWith = reasonCode;
    for (const c of [...this.connections]) c.disconnect(reasonCode, "server shutting down");
  }

  /** A transport accepted a byte stream: returns the handler it feeds. */
  accept(sink: ByteSink, peer: PeerInfo): Connection {
    const c = new Connection(this, sink, peer);
    this.connections.add(c);
    this.metrics.connectionsAccepted++;
    this.metrics.connectionsCurrent++;
    // A TLS or WebSocket handshake that completes after stop() would otherwise stay open with
    // no sweep to time it out, and keep the listener's close() from ever finishing.
    if (this.stoppedWith !== null) c.disconnect(this.stoppedWith, "server shutting down");
    return c;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  newClientId(): string {
    return this.idPrefix + (++this.idCounter).toString(36);
  }

  publish(msg: Message): number {
    return this.router.publish(msg);
  }

  mayPublish(clientId: string, username: string | undefined, topic: string): boolean {
    return this.authorizer === null || this.authorizer.canPublish({ clientId, username }, topic);
  }

  maySubscribe(clientId: string, username: string | undefined, filter: string): boolean {
    return this.authorizer === null || this.authorizer.canSubscribe({ clientId, username }, filter);
  }

  /**
   * Binds a connection that passed CONNECT to its session: takes over a live
   * connection with the same client id, resumes or discards the old session.
   */
  attach(conn: Connection, cleanStart: boolean): { session: Session; present: boolean } {
    const id = conn.clientId;
    let session = this.sessions.get(id);
    if (session !== undefined && session.link !== null) {
      const old = session.link as Connection;
      // The old connection goes first so its will follows the usual rules.
      old.takenOver();
    }
    session = this.sessions.get(id);
    if (session !== undefined && cleanStart) {
      this.endSession(session);
      session = undefined;
    }
    let present = false;
    if (session === undefined) {
      session = new Session(id, {
        maxQueued: this.limits.maxQueued,
        dropPolicy: this.limits.queueDropPolicy,
      }, this.metrics);
      this.sessions.set(id, session);
    } else {
      present = true;
      // Reconnecting in time cancels a delayed will [MQTT-3.1.3-9].
      session.will = null;
      session.willAt = 0;
      this.detached.delete(session);
    }
    return { session, present };
  }

  /** A connection ended; `willAllowed` is false after a normal DISCONNECT. */
  connectionClosed(conn: Connection, wasConnected: boolean, willAllowed: boolean): void {
    if (!this.connections.delete(conn)) return;
    this.metrics.connectionsCurrent--;
    if (!wasConnected) return;
    const session = conn.session;
    if (session === null || session.link !== conn) return;
    session.link = null;
    const now = Date.now();
    if (!willAllowed) session.will = null;
    const will = session.will;
    if (will !== null) {
      if (will.delay === 0 || session.expiryInterval === 0) this.publishWill(session);
      else session.willAt = now + Math.min(will.delay, session.expiryInterval) * 1000;
    }
    if (session.expiryInterval === 0) {
      this.endSession(session);
      return;
    }
    session.expiresAt = session.expiryInterval === NEVER_EXPIRES
      ? Infinity
      : now + session.expiryInterval * 1000;
    this.detached.add(session);
  }

  private publishWill(session: Session): void {
    const will = session.will;
    session.will = null;
    session.willAt = 0;
    if (will === null) return;
    const m = will.msg;
    const msg = will.expiry >= 0
      ? new Message(
        m.topic,
        m.topicBytes,
        m.payload,
        m.qos,
        m.retain,
        m.props,
        Date.now() + will.expiry * 1000,
        m.origin,
      )
      : m;
    this.metrics.willsPublished++;
    log.debug("publishing will of {clientId} to {topic}", {
      clientId: session.clientId,
      topic: m.topic,
    });
    this.router.publish(msg);
  }

  private endSession(session: Session): void {
    // A will still waiting for its delay is sent when its session ends [MQTT-3.1.3-9].
    if (session.will !== null && session.link === null && session.willAt !== 0) {
      this.publishWill(session);
    }
    this.detached.delete(session);
    this.router.unsubscribeAll(session);
    session.clear();
    if (this.sessions.get(session.clientId) === session) this.sessions.delete(session.clientId);
  }

  /** Keep-alive and connect timeouts, delayed wills, session expiry. */
  sweep(now: number): void {
    for (const c of this.connections) c.checkTimeouts(now);
    for (const s of this.detached) {
      if (s.willAt !== 0 && now >= s.willAt) this.publishWill(s);
      if (now >= s.expiresAt) {
        this.metrics.sessionsExpired++;
        this.endSession(s);
      } else if (s.will === null && s.expiresAt === Infinity) {
        this.detached.delete(s);
      }
    }
  }
}
