/**
 * The transport-agnostic broker core: the session registry (client id -> session; which session a
 * connection gets and how one ends in binding.ts, wills in wills.ts, the cluster side in
 * cluster_sessions.ts), the keep-alive sweep, and the one way in for messages (`publish`) and for
 * subscription changes (`subscribe`/`unsubscribe`), which is where the topic log (Sink), the
 * cluster (Bus) and the durable state (Store) are fed. It imports no socket, TLS, Redis, SQLite or
 * BigQuery code: those arrive through the interfaces.
 */
import { getLogger } from "@logtape/logtape";
import { subscribeAccess } from "../auth/access.ts";
import type {
  Authenticator,
  AuthExchange,
  Authorizer,
  ConnectRequest,
  SubscribeAccess,
} from "../auth/types.ts";
import { type Bus, type BusHost, LOCAL_ONLY, type OrphanDelivery } from "../cluster/types.ts";
import type { Clock } from "../ops/clock.ts";
import type { Metrics } from "../ops/metrics.ts";
import type { Message } from "../protocol/message.ts";
import type { ByteWriter } from "../protocol/outbox.ts";
import { NO_VERSION, RetainClock } from "../router/retain_version.ts";
import { type Router, Subscribed, type SubscriptionUsage, Unsubscribed } from "../router/router.ts";
import type { Subscriber, Subscription } from "../router/types.ts";
import type { PublishInfo, Sink } from "../sinks/types.ts";
import type { Store } from "../store/types.ts";
import { Connection } from "./connection.ts";
import type {
  AttachingConnection,
  AttachRequest,
  AttachResult,
  ConnectionHost,
  PeerInfo,
  SubscribeResult,
  WillOutcome,
} from "./host.ts";
import { ClusterSessions } from "./cluster_sessions.ts";
import { Journal, JournalClosedError } from "./journal.ts";
import { TotalDropLog } from "./queue.ts";
import { type Admitted, type Pending, SocketAdmission } from "./admission.ts";
import type { CoreLimits } from "./limits.ts";
import { Session } from "./session.ts";
import type { SessionLimits } from "./session_types.ts";
import { SessionRestorer } from "./restore.ts";
import { restoreRetained } from "./retained_restore.ts";
import { Wills } from "./wills.ts";
import { SessionBinding } from "./binding.ts";
import { StoreRewrite } from "./store_rewrite.ts";

export type { CoreLimits } from "./limits.ts";

const log = getLogger(["mcloudtt", "core"]);

export interface CoreOptions {
  limits: CoreLimits;
  router: Router;
  metrics: Metrics;
  auth: Authenticator;
  authorizer?: Authorizer | null;
  bus: Bus;
  store: Store;
  sink: Sink;
  clock: Clock;
  /**
   * Acknowledge a QoS 1/2 publish only once the store has written it for
   * every persistent session it reached (default); false acknowledges at once.
   */
  ackAfterWrite?: boolean;
  /**
   * `[storage] max_unwritten_ops`: past this many store operations not
   * written yet (the store failing), QoS 1/2 publishes are refused.
   */
  maxUnwritten?: number;
}

/** Serve no shared group here (a remote message whose groups are served elsewhere). */
const NO_GROUPS: ReadonlySet<string> = new Set();

export class BrokerCore implements ConnectionHost, BusHost {
  readonly limits: CoreLimits;
  readonly router: Router;
  readonly metrics: Metrics;
  readonly clock: Clock;
  readonly bus: Bus;
  readonly store: Store;
  readonly sink: Sink;
  auth: Authenticator;
  authorizer: Authorizer | null;
  /** What the acknowledgement of the last `publish` waits for. */
  publishWritten: Promise<void> | null = null;
  /** Set when the store is durable: session and retained changes are journaled into it. */
  readonly journal: Journal | null;
  readonly sessions = new Map<string, Session>();
  private readonly connections = new Set<Connection>();
  /** Sessions without a connection that have a will or an expiry pending. */
  readonly detached = new Set<Session>();
  /** Client ids of sessions adopted from dead nodes and not yet resumed by their clients. */
  readonly adopted = new Set<string>();
  /** Who holds which session in a cluster, and how sessions move (cluster_sessions.ts). */
  private readonly cluster = new ClusterSessions(this);
  /** When and how wills are published (wills.ts). */
  readonly wills = new Wills(this);
  /** Which session a connection gets, and how sessions end (binding.ts). */
  readonly binding = new SessionBinding(this);
  private stopSweep: (() => void) | null = null;
  /** The stop() reason while stopped: transports may still hand over a late handshake. */
  private stoppedWith: number | null = null;
  private readonly ackAfterWrite: boolean;
  /** One object for every session (an object per session cost 48 B per idle client). */
  private readonly sessionLimits: SessionLimits;
  /** Sockets the listeners may hold at once (admission.ts). */
  private readonly admission: SocketAdmission;
  private readonly totalDrops = new TotalDropLog((m) => log.warn(m));
  /** Versions for the retained updates published here. */
  private readonly retainClock = new RetainClock();
  /** How stored sessions become live ones here (restore.ts). */
  readonly restorer: SessionRestorer = new SessionRestorer(this);
  /** What is written again when Redis lost its data (store_rewrite.ts). */
  private readonly rewrite: StoreRewrite = new StoreRewrite(this);

  constructor(opts: CoreOptions) {
    this.ackAfterWrite = opts.ackAfterWrite ?? true;
    this.limits = opts.limits;
    this.admission = new SocketAdmission(opts.metrics, opts.limits.maxConnections);
    this.sessionLimits = {
      maxQueued: opts.limits.maxQueued,
      maxQueuedBytes: opts.limits.maxQueuedBytes,
      maxQueuedBytesTotal: opts.limits.maxQueuedBytesTotal,
      dropPolicy: opts.limits.queueDropPolicy,
      // Completed ids matter only for copies from other nodes (a shared store); on one node each
      // stored message has an id (Journal.identify), and remembering them would only cost memory.
      dedupeWindow: opts.store.shared ? opts.limits.dedupeWindow : 0,
    };
    this.router = opts.router;
    this.metrics = opts.metrics;
    this.auth = opts.auth;
    this.authorizer = opts.authorizer ?? null;
    this.bus = opts.bus;
    this.store = opts.store;
    this.sink = opts.sink;
    this.clock = opts.clock;
    this.journal = opts.store.durable
      ? new Journal(opts.store, {
        acksWait: this.ackAfterWrite,
        maxUnwritten: opts.maxUnwritten,
        // A cluster store refuses writes of sessions another node took over meanwhile.
        onStale: (e, batch) => this.cluster.dropStale(e.clientIds, batch),
        // A cluster store that lost sessions (Redis restarted empty) gets them whole again.
        onMissing: (ids) => this.rewrite.sessions(ids),
      })
      : null;
    this.router.receiveCheck = this.mayReceive;
  }

  /** Loads what a durable, unshared store kept (sessions, retained), then starts the sweep. */
  async start(): Promise<void> {
    this.stoppedWith = null;
    const store = this.store;
    if (store.durable) {
      await restoreRetained(store, {
        retained: this.router.retained,
        metrics: this.metrics,
        journal: store.shared ? null : this.journal,
        now: this.clock.now(),
        page: this.limits.retainedPage,
      });
      if (!store.shared) {
        // Deadlines that passed while the broker was down are met by the first sweep (wills
        // sent, sessions ended); `bind` already refuses to resume an expired session before it.
        for (const state of await store.loadSessions()) this.restorer.restore(state);
      }
    }
    this.stopSweep ??= this.clock.every(
      this.limits.sweepIntervalMs,
      () => this.sweep(this.clock.now()),
    );
  }

  /** Stops the sweep and closes every connection with `reasonCode` (MQTT 5 DISCONNECT). */
  stop(reasonCode: number): void {
    this.stopSweep?.();
    this.stopSweep = null;
    this.stoppedWith = reasonCode;
    for (const c of [...this.connections]) c.disconnect(reasonCode, "server shutting down");
  }

  /** Resolves once every journaled change is written (graceful stop). */
  async flush(): Promise<void> {
    await this.journal?.drain();
  }

  /** Stops retrying store writes (the end of a stop); returns the operations left unwritten. */
  closeJournal(): number {
    return this.journal?.close() ?? 0;
  }

  /**
   * True while the store has not taken more than `[storage] max_unwritten_ops`
   * operations (it is failing): new QoS 1/2 publishes are refused rather than
   * acknowledged without being kept.
   */
  get storeFull(): boolean {
    return this.journal !== null && this.journal.full;
  }

  /**
   * A transport accepted a byte stream: returns the handler it feeds. `admitted`: its socket,
   * open since before (a TLS handshake, a WebSocket upgrade) and recorded by admit(); else the
   * connection itself is the socket to close to make room until its CONNECT is accepted.
   */
  accept(sink: ByteWriter, peer: PeerInfo, admitted?: Admitted): Connection {
    const openMs = admitted === undefined ? 0 : Math.max(0, Date.now() - admitted.at);
    const c = new Connection(this, sink, peer, openMs);
    c.admitted = admitted ?? c;
    if (admitted === undefined) this.admission.add(c);
    this.connections.add(c);
    this.metrics.connectionsAccepted++;
    this.metrics.connectionsCurrent++;
    this.metrics.connectionsByListener[peer.transport]++;
    // A TLS or WebSocket handshake that completes after stop() would otherwise stay open with
    // no sweep to time it out, and keep the listener's close() from ever finishing.
    if (this.stoppedWith !== null) c.disconnect(this.stoppedWith, "server shutting down");
    return c;
  }

  /**
   * A listener accepted a socket, before any handshake or upgrade: false when the broker already
   * holds its socket limit (admission.ts) and the transport must close this one at once. `held`: a TLS or
   * WebSocket socket, counted from here until `released()` (a plain TCP socket reaches accept()
   * at once and is counted there).
   */
  admit(held: boolean, admitted?: Admitted): boolean {
    return this.admission.admit(held, admitted);
  }

  /** A socket `admit(true)` let in closed. */
  released(admitted?: Admitted): void {
    this.metrics.socketsHeld--;
    if (admitted !== undefined) this.admission.settle(admitted);
  }

  /** A connection got past CONNECT, or closed: its socket is no longer closed to make room. */
  settlePending(p: Pending): void {
    this.admission.settle(p);
  }

  /** A transport's TLS handshake failed (the transport logged it). */
  handshakeFailed(): void {
    this.metrics.tlsHandshakeFailures++;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /** Live connections (for revocation after a reload, and for ops). */
  connectionList(): IterableIterator<Connection> {
    return this.connections.values();
  }

  /** Every session, online and offline. */
  sessionList(): IterableIterator<Session> {
    return this.sessions.values();
  }

  newClientId(): string {
    // Unguessable, so nobody can aim at another client's assigned id.
    return `mcloudtt-${crypto.randomUUID()}`;
  }

  authenticate(req: ConnectRequest) {
    return this.auth.authenticate(req);
  }

  exchange(method: string, req: ConnectRequest): AuthExchange | undefined {
    return this.auth.exchange?.(method, req);
  }

  mayPublish(clientId: string, username: string | undefined, topic: string): boolean {
    return this.authorizer === null || this.authorizer.canPublish({ clientId, username }, topic);
  }

  maySubscribe(clientId: string, username: string | undefined, filter: string): SubscribeAccess {
    return subscribeAccess(this.authorizer, { clientId, username }, filter);
  }

  /** Router and retained hand-over: the ACL's answer for one message on a checked subscription. */
  readonly mayReceive = (sub: Subscription, topic: string): boolean => {
    const a = this.authorizer;
    if (a === null || a.canReceive === undefined) return true;
    const who = sub.subscriber;
    return a.canReceive({ clientId: who.clientId, username: who.username }, topic);
  };

  // ---- the one way in for messages -------------------------------------------

  /**
   * Every message published on this node comes through here: client
   * publishes, wills and broker-made messages ($SYS). It is offered to the
   * topic log, forwarded to the cluster nodes that want it, stored when
   * retained, and delivered to local subscribers. Returns the number of local
   * deliveries, plus one when another node has a matching subscriber (so 0 means
   * "no matching subscribers" cluster-wide); `publishWritten` says what an
   * acknowledgement waits for.
   */
  publish(msg: Message, info: PublishInfo): number {
    this.sink.offer(msg, info);
    // $SYS figures describe this node: they stay here, neither forwarded nor stored.
    const local = info.kind === "sys";
    // Retained updates carry a version: every node and the store keep the newest (retain_version.ts).
    const version = msg.retain ? this.retainClock.next() : NO_VERSION;
    const fwd = local ? LOCAL_ONLY : this.bus.forward(msg, version);
    const journal = this.journal;
    const mark = journal === null ? 0 : journal.size;
    // Retained state is stored by the node where it was published, once. While the store is
    // failing past max_unwritten_ops, a clear of a topic with nothing retained here is not kept
    // for it: QoS 0 is never refused, and clears of ever new topics would pile up unbounded.
    if (
      msg.retain && journal !== null && !local &&
      (msg.payload.length === 0
        ? !journal.full || this.router.retained.has(msg.topic)
        : this.router.retained.fits(msg))
    ) {
      journal.push(
        msg.payload.length === 0
          ? {
            type: "retain-delete",
            topic: msg.topic,
            version,
            tombstone: this.router.retained.tombstoneFits?.(msg.topic) ?? false,
          }
          : { type: "retain", msg: msg.own(), version },
      );
    }
    // One client message in LATENCY_SAMPLE_EVERY is timed from here to each subscriber's outbox.
    if (info.kind === "client" && this.metrics.sample()) msg.sampledAt = performance.now();
    const n = this.router.publish(msg, fwd.localGroups, version);
    // A retained copy delivered to a later subscriber is not publish-to-delivery latency.
    if (msg.retain) msg.sampledAt = 0;
    let written = fwd.written;
    if (journal !== null && journal.acksWait && journal.size !== mark) {
      const p = journal.pending;
      written = written === null ? p : Promise.all([written, p]).then(() => {});
    }
    this.publishWritten = written;
    return fwd.routed ? n + 1 : n;
  }

  /** BusHost: a message published on another node; delivered here, never forwarded again. */
  duplicateArrived(): void {
    this.metrics.duplicatesDropped++;
  }

  deliverRemote(msg: Message, groups: readonly string[], retainVersion = NO_VERSION): void {
    this.router.publish(msg, groups.length === 0 ? NO_GROUPS : new Set(groups), retainVersion);
  }

  /** BusHost: a share group's message another node's member left; never handed on again. */
  redeliverShared(msg: Message, groups: readonly string[]): void {
    this.metrics.droppedSharedGone += this.router.redeliverSharedKeys(msg, groups);
  }

  deliveredWritten(): Promise<void> | null {
    const p = this.journal?.pending ?? null;
    // Stopped before the store took them: the inbox entries stay unacknowledged (never settles).
    return p === null ? null : p.catch((e) => {
      if (e instanceof JournalClosedError) return new Promise<void>(() => {});
      throw e;
    });
  }

  // ---- the one way in for subscription changes ---------------------------------

  subscribe(_session: Session, sub: Subscription): SubscribeResult {
    const r = this.router.subscribe(sub);
    return {
      existed: r === Subscribed.Replaced,
      ready: r === Subscribed.NewRoute ? this.bus.addRoute(sub.key) : null,
    };
  }

  subscriptionUsage(session: Session): SubscriptionUsage {
    return this.router.usageOf(session);
  }

  unsubscribe(session: Session, key: string): boolean {
    // Retained messages still to send for it are not wanted any more.
    session.stopRetained(key);
    const r = this.router.unsubscribe(session, key);
    if (r === Unsubscribed.RouteGone) this.bus.removeRoute(key);
    return r !== Unsubscribed.None;
  }

  unsubscribeAll(subscriber: Subscriber): void {
    for (const key of this.router.unsubscribeAll(subscriber)) this.bus.removeRoute(key);
  }

  sessionChanged(session: Session): void {
    // The connection calls this right before it links the session, in the same turn.
    this.cluster.linked(session);
    if (this.journal !== null) session.persist(this.subscriptionsOf(session));
  }

  subscriptionsChanged(session: Session, changed: readonly (Subscription | string)[]): void {
    this.cluster.linked(session);
    if (this.journal === null) return;
    // An adoption still holding routes keeps subscriptions the router does not: written whole.
    const a = this.cluster.adoptionOf(session.clientId);
    if (a !== undefined && a.session === session) session.persist(this.subscriptionsOf(session));
    else session.persistSubscriptions(changed, this.subscriptionsOf(session));
  }

  /** The session's subscriptions, including those of an adoption still holding its routes. */
  subscriptionsOf(session: Session): Iterable<Subscription> {
    const a = this.cluster.adoptionOf(session.clientId);
    if (a === undefined || a.session !== session) return this.router.subscriptionsOf(session);
    return [...a.subs, ...this.router.subscriptionsOf(session)];
  }

  retainFits(msg: Message): boolean {
    return this.router.retained.fits(msg);
  }

  retainedCursor(filter: string): Iterator<Message> {
    return this.router.retained.cursor(filter);
  }

  // ---- sessions -------------------------------------------------------------

  /**
   * Binds a connection that passed authentication to its session: refuses a
   * session that belongs to someone else, takes over a live connection with
   * the same client id, resumes or discards the old session.
   */
  attach(conn: AttachingConnection, req: AttachRequest): AttachResult | Promise<AttachResult> {
    if (!this.store.shared) return this.binding.bind(conn, req);
    return this.cluster.attachShared(conn, req);
  }

  newSession(id: string): Session {
    const s = new Session(id, this.sessionLimits, this.metrics, this.clock.now);
    s.journal = this.journal;
    s.storeWill = this.store.shared;
    return s;
  }

  /** A connection ended; `willAllowed` is false after a normal DISCONNECT. */
  connectionClosed(
    conn: AttachingConnection,
    session: Session | null,
    wasConnected: boolean,
    willAllowed: boolean,
  ): WillOutcome {
    if (!this.connections.delete(conn as Connection)) return "none";
    this.metrics.connectionsCurrent--;
    this.metrics.connectionsByListener[conn.peer.transport]--;
    if (!wasConnected) return "none";
    if (session === null || session.link !== conn) return "none";
    session.link = null;
    this.metrics.sessionsOnline--;
    // Kept for a resend at the next connection: buffers of their own from now on.
    session.settleInflight();
    const now = this.clock.now();
    if (!willAllowed) session.setWill(null);
    const outcome = this.wills.connectionLost(session, now);
    if (session.expiryInterval === 0) {
      this.binding.end(session);
      return outcome;
    }
    session.expiresAt = session.expiryFrom(now);
    this.detached.add(session);
    this.sessionChanged(session);
    return outcome;
  }

  // ---- BusHost: sessions moving between nodes (cluster_sessions.ts) ---------------

  /** BusHost: another node took over `clientId` with claim number `epoch`. */
  sessionTakenOver(clientId: string, epoch: number): Promise<void> {
    return this.cluster.sessionTakenOver(clientId, epoch);
  }

  /** BusHost: node `nodeId` died and this node was chosen to clean up after it. */
  nodeDown(nodeId: string): Promise<OrphanDelivery | void> {
    return this.cluster.nodeDown(nodeId);
  }

  /** BusHost: Redis lost its data: the sessions and retained messages held here go back. */
  storeLost(): void {
    this.rewrite.request();
  }

  /** BusHost: the cluster handled this node as dead while it was frozen; its sessions moved. */
  expelled(): void {
    this.cluster.expelled();
  }

  /** `droppedQueueTotal` at the last sweep. */
  private totalDropsSeen = 0;

  /** Keep-alive and connect timeouts, delayed wills, session expiry. */
  sweep(now: number): void {
    // forEach, not for-of: the sweep runs too rarely to be optimized, and an unoptimized for-of
    // makes an iterator result per connection, twice a second for every idle one.
    this.connections.forEach((c) => c.checkTimeouts(now));
    for (const s of this.detached) {
      this.wills.publishDue(s, now);
      if (now >= s.expiresAt) {
        this.metrics.sessionsExpired++;
        this.binding.end(s);
      } else if (s.will === null && s.expiresAt === Infinity) {
        this.detached.delete(s);
      }
    }
    const drops = this.metrics.droppedQueueTotal;
    if (drops !== this.totalDropsSeen) {
      // The queues together turned messages away since the last sweep: expired messages that
      // wait for clients that stay away make room (a walk of every session, only then).
      this.totalDropsSeen = drops;
      this.sessions.forEach((s) => s.dropExpired(now));
    }
    this.totalDrops.check(this.metrics);
  }
}
