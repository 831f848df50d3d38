/**
 * A broker assembled from a validated config: core, router, auth and the
 * listeners. This is where transports meet the core; the core itself never
 * imports socket or TLS code.
 */
import { getLogger } from "@logtape/logtape";
import { Acl } from "./auth/acl.ts";
import { AclAuthorizer, countedAuthenticator, PolicyAuthenticator } from "./auth/authenticator.ts";
import { PasswordFile } from "./auth/passwords.ts";
import { PasswordVerifier } from "./auth/verifier.ts";
import type { Authenticator, Authorizer } from "./auth/types.ts";
import {
  allowAnonymous,
  anyListenerTls,
  type Config,
  ConfigError,
  listenerBind,
  listenerClientCert,
  listenerEnabled,
  type ListenerName,
  listenerPort,
  listenerTls,
} from "./config/mod.ts";
import { type Bus, localBus } from "./cluster/types.ts";
import { type Clock, systemClock } from "./ops/clock.ts";
import { Metrics } from "./ops/metrics.ts";
import { ReasonCode } from "./protocol/reason_codes.ts";
import { MemoryRetainedStore } from "./router/retained.ts";
import { Router } from "./router/router.ts";
import { disconnectRevokedPasswords, reapplySubscriptionAccess } from "./session/revoke.ts";
import { BrokerCore, type CoreLimits } from "./session/core.ts";
import { createSink, sinkStats } from "./sinks/mod.ts";
import type { Sink } from "./sinks/types.ts";
import { createStore } from "./store/mod.ts";
import type { Store } from "./store/types.ts";
import { listenTcp, type TcpIo } from "./transport/tcp.ts";
import type { TlsMaterial } from "./transport/tls_material.ts";
import type { Listener } from "./transport/types.ts";

const log = getLogger(["mcloudtt", "broker"]);

/** The [limits] and [general] keys the core enforces, in the core's terms. */
export function coreLimits(config: Config): CoreLimits {
  const l = config.limits;
  return {
    maxPacketSize: l.max_packet_size,
    maxConnectPacketSize: Math.min(l.max_connect_packet_size, l.max_packet_size),
    receiveMaximum: l.receive_maximum,
    topicAliasMaximum: l.topic_alias_maximum,
    maxOutgoingTopicAliases: l.max_outgoing_topic_aliases,
    maxKeepAlive: l.max_keepalive,
    serverKeepAlive: config.general.timeout,
    maxInflight: l.max_inflight_messages,
    maxQueued: l.max_queued_messages,
    maxQueuedBytes: l.max_queued_bytes,
    maxQueuedBytesTotal: l.max_queued_bytes_total,
    queueDropPolicy: l.queue_drop_policy,
    maxTopicLength: l.max_topic_length,
    maxTopicLevels: l.max_topic_levels,
    connectTimeoutMs: l.connect_timeout * 1000,
    maxConnections: l.max_connections,
    maxSessions: l.max_sessions,
    maxSessionExpiry: l.max_session_expiry_interval,
    maxOutgoingBytes: l.max_outgoing_bytes,
    maxConnectBacklog: l.max_connect_backlog,
    rate: {
      publishesPerSecond: l.max_publish_rate,
      bytesPerSecond: l.max_read_rate,
      maxThrottledMs: l.max_throttled_seconds * 1000,
    },
    sweepIntervalMs: l.sweep_interval_ms,
    idleTrimMs: l.idle_trim_after * 1000,
    maxSubscriptions: l.max_subscriptions,
    maxSubscriptionLevels: l.max_subscription_levels,
    maxSubscriptionBytes: l.max_subscription_bytes,
    retainAvailable: l.max_retained_messages > 0,
    maxRetainedPerSubscription: l.max_retained_per_subscription,
    retainedPage: {
      messages: config.storage.retained_page_messages,
      bytes: config.storage.retained_page_bytes,
    },
    dedupeWindow: config.cluster.dedupe_window,
  };
}

/**
 * What a broker is built from besides its config. Each has an in-memory
 * default; the backends (Redis bus and store, SQLite store, BigQuery sink)
 * are chosen from the config by the CLI, or passed in by an embedder.
 */
export interface BrokerDeps {
  /** Replaces the configured authentication policy (password file, anonymous switch, certificates). */
  authenticator?: Authenticator;
  /** Replaces the configured ACL; null for none. */
  authorizer?: Authorizer | null;
  /** How publishes and subscriptions reach other cluster nodes (default: a single node). */
  bus?: Bus;
  /** Where sessions and retained messages are kept (default: in memory). */
  store?: Store;
  /** The topic log (default: none). */
  sink?: Sink;
  /** Time and timers (default: the system clock). */
  clock?: Clock;
  /**
   * How plain TCP is read and written, over `[general] tcp_io` ("native": the runtime's native
   * handles where it has them, else Deno.listen; "deno": Deno.listen always). See
   * transport/tcp_native.ts.
   */
  tcpIo?: TcpIo;
}

/**
 * `deps` completed with the Redis bus and store when `[redis] enabled` asks for them and the
 * caller did not bring its own. The Redis modules are imported here, on demand: a single node
 * never loads ioredis (see cluster/redis_backend.ts).
 */
async function withClusterBackend(config: Config, deps: BrokerDeps): Promise<BrokerDeps> {
  if (!config.redis.enabled || (deps.bus !== undefined && deps.store !== undefined)) return deps;
  const redis = await import("./cluster/redis_backend.ts");
  const bus = deps.bus ?? redis.createRedisBus(config);
  const store = deps.store ?? redis.createClusterStore(config, bus, deps.clock ?? systemClock);
  return { ...deps, bus, store };
}

/** `[redis] enabled` without a bus and a store: the broker must be built by `Broker.create`. */
export class ClusterBackendNotLoaded extends Error {
  constructor() {
    super(
      "[redis] enabled: build the broker with Broker.create() or createBroker(), which load " +
        "the Redis bus and store (or pass deps.bus and deps.store)",
    );
    this.name = "ClusterBackendNotLoaded";
  }
}

/**
 * start() on a broker that was stopped: a broker runs once (its journal, sink and bus end with
 * stop()); create a new one, which reopens the same store.
 */
export class BrokerStopped extends Error {
  constructor() {
    super("this broker was stopped and cannot start again: create a new one with createBroker()");
    this.name = "BrokerStopped";
  }
}

/** Address of a running listener. */
export interface ListenerAddress {
  kind: "tcp" | "tls" | "ws" | "wss";
  hostname: string;
  port: number;
}

export class Broker {
  readonly core: BrokerCore;
  readonly metrics = new Metrics();
  readonly router: Router;
  private listeners: Listener[] = [];
  /**
   * The start under way or done, which concurrent and repeated start() calls share (two starts
   * used to open every listener twice); null before the first and after a failed one.
   */
  private starting: Promise<void> | null = null;
  /**
   * The stop under way or done, which concurrent stop() calls share (a second call used to
   * resolve before the store was closed). A stopped broker does not start again: stop() closes
   * the journal, so a restarted durable broker never acknowledged a QoS 1/2 packet again.
   */
  private stopping: Promise<void> | null = null;
  private tls: TlsMaterial | null = null;
  /** While start() waits for the store and the bus to open (Redis may not answer yet). */
  private opening = false;
  private startAborted = false;
  private readonly policy: PolicyAuthenticator;
  private readonly customAuth: boolean;
  private readonly tcpIo: TcpIo;

  /**
   * Builds a broker from a validated config, loading the backends it asks for (the Redis bus
   * and store when `[redis] enabled`); `deps` replace the defaults.
   */
  static async create(config: Config, deps: BrokerDeps = {}): Promise<Broker> {
    return new Broker(config, await withClusterBackend(config, deps));
  }

  /**
   * Builds a broker from a validated config; `deps` replace the in-memory defaults. With
   * `[redis] enabled`, `deps` must bring the bus and the store (`Broker.create` loads them).
   */
  constructor(readonly config: Config, deps: BrokerDeps = {}) {
    if (config.redis.enabled && (deps.bus === undefined || deps.store === undefined)) {
      throw new ClusterBackendNotLoaded();
    }
    const l = config.limits;
    this.router = new Router(
      new MemoryRetainedStore({
        maxMessages: l.max_retained_messages,
        maxBytes: l.max_retained_bytes,
      }),
      { matchCacheBytes: l.match_cache_bytes },
    );
    const auth = deps;
    this.tcpIo = deps.tcpIo ?? config.general.tcp_io;
    const clock = deps.clock ?? systemClock;
    const bus = deps.bus ?? localBus;
    this.policy = new PolicyAuthenticator(
      {
        passwords: null,
        scram: config.auth.scram,
        allowAnonymous: allowAnonymous(config),
        requireClientIdMatch: config.tls.require_client_id_match,
        connectTimeoutMs: config.limits.connect_timeout * 1000,
        now: () => clock.now(),
      },
      new PasswordVerifier({
        maxConcurrent: config.auth.max_concurrent_auth,
        maxQueue: config.auth.max_auth_queue,
        cacheSeconds: config.auth.auth_cache_seconds,
      }),
      this.metrics,
    );
    this.customAuth = auth.authenticator !== undefined;
    this.core = new BrokerCore({
      limits: coreLimits(config),
      router: this.router,
      metrics: this.metrics,
      auth: auth.authenticator !== undefined
        ? countedAuthenticator(auth.authenticator, this.metrics)
        : this.policy,
      authorizer: auth.authorizer ?? null,
      bus,
      store: deps.store ?? createStore(config),
      // Redis durability governs a cluster's acknowledgements, [storage] sync a single node's.
      ackAfterWrite: config.redis.enabled
        ? config.redis.durability === "sync"
        : config.storage.sync === "ack-after-write",
      maxUnwritten: config.storage.max_unwritten_ops,
      sink: deps.sink ?? createSink(config),
      clock,
    });
    // No member here may read the message (ACL): one of its group on another node may. Handed
    // on once, as a message whose member left (a receiving node does not hand it on again).
    this.router.heldBack = (msg, group) => {
      if (bus.forwardShared(msg, group.key)) this.metrics.sharedRedelivered++;
    };
  }

  /**
   * Loads certificates, password file and ACL, then opens the configured listeners. Calls while
   * it runs share it; after stop() it rejects with BrokerStopped. When it fails, what it opened
   * is closed again.
   */
  start(): Promise<void> {
    if (this.stopping !== null) return Promise.reject(new BrokerStopped());
    if (this.starting === null) {
      const starting = this.open();
      this.starting = starting;
      // A failed start may be tried again (a port that was busy); the caller gets the rejection.
      starting.catch(() => {
        if (this.starting === starting) this.starting = null;
      });
    }
    return this.starting;
  }

  private async open(): Promise<void> {
    const c = this.config;
    const core = this.core;
    await this.loadAuthFiles();
    this.opening = true;
    try {
      await core.store.open();
    } catch (e) {
      this.opening = false;
      await core.store.close().catch(() => {});
      throw this.startAborted ? new BrokerStopped() : e;
    }
    try {
      // The bus first: subscriptions restored from the store become routes the cluster learns.
      await core.bus.start(core);
      await core.bus.settled?.();
      // Stopped while the bus settled: its connections are closed already.
      if (this.startAborted) throw new BrokerStopped();
      if (!this.customAuth && c.auth.scram && c.auth.password_file !== "") {
        // What SCRAM answers for an unknown user must last as a real user's salt does: across
        // restarts (a durable store) and from every node of a cluster (Redis). Asked once the bus
        // has settled: a node that started while Redis refused writes (full) waited there.
        this.policy.options.decoyKey = await core.store.secret("scram-decoy");
      }
      this.opening = false;
      await core.start();
      this.metrics.topicLog = () => sinkStats(core.sink);
      await core.sink.start();
      if (anyListenerTls(c)) {
        const { TlsMaterial } = await import("./transport/tls_material.ts");
        this.tls = await TlsMaterial.load(c.tls, this.metrics);
        this.tls.watch(c.general.cert_reload_interval);
      }
      for (const name of ["tcp", "ws"] as ListenerName[]) {
        if (!listenerEnabled(c, name)) continue;
        try {
          this.listeners.push(await this.listen(name));
        } catch (e) {
          throw addressInUse(e) ? portTaken(c, name, e) : e;
        }
      }
    } catch (e) {
      this.opening = false;
      await Promise.all(this.listeners.map((l) => l.close()));
      this.listeners = [];
      this.tls?.close();
      this.tls = null;
      core.stop(ReasonCode.ServerShuttingDown);
      await core.bus.stop().catch(() => {});
      await core.sink.stop(0).catch(() => {});
      await core.store.close().catch(() => {});
      throw this.startAborted ? new BrokerStopped() : e;
    }
    for (const l of this.listeners) {
      log.info(`listening for MQTT over ${l.kind} on ${l.hostname}:${l.port}`);
    }
    if (!c.general.secure) {
      log.warn(
        "SECURITY WARNING: general.secure = false - listeners without TLS accept clients " +
          "without certificates; use this only on trusted networks",
      );
    }
  }

  /**
   * Opens one listener. TLS and WebSocket transports are imported when a listener needs them:
   * node:tls, node:http and ws are memory a plain TCP node does not carry (as the Redis
   * backend, see `withClusterBackend`).
   */
  private async listen(name: ListenerName): Promise<Listener> {
    const c = this.config;
    const hostname = listenerBind(c, name);
    const port = listenerPort(c, name);
    const tls = listenerTls(c, name);
    const clientCert = listenerClientCert(c, name);
    if (name === "tcp") {
      if (!tls) {
        return listenTcp(this.core, hostname, port, c.limits.close_linger_ms, this.tcpIo);
      }
      const { listenTls } = await import("./transport/tls.ts");
      return listenTls(this.core, {
        hostname,
        port,
        material: this.tls!,
        clientCert,
        identity: c.tls.identity,
        handshakeTimeoutMs: c.limits.connect_timeout * 1000,
        lingerMs: c.limits.close_linger_ms,
      });
    }
    const ws = {
      path: c.listeners.ws.path,
      // A WebSocket message may hold several packets [MQTT-6.0.0-2]: room for more than one.
      maxPayload: 2 * c.limits.max_packet_size,
      // CONNECT, what may wait behind it, and frame headers (14 bytes each at most).
      maxFirstBytes: Math.min(c.limits.max_connect_packet_size, c.limits.max_packet_size) +
        c.limits.max_connect_backlog + 4096,
      upgradeTimeoutMs: c.limits.connect_timeout * 1000,
      lingerMs: c.limits.close_linger_ms,
      allowedOrigins: c.listeners.ws.allowed_origins,
    };
    if (!tls) {
      const { listenWebSocket } = await import("./transport/websocket.ts");
      return listenWebSocket(this.core, { hostname, port, ...ws });
    }
    const { listenSecureWebSocket } = await import("./transport/secure_websocket.ts");
    return listenSecureWebSocket(this.core, {
      hostname,
      port,
      ...ws,
      material: this.tls!,
      clientCert,
      identity: c.tls.identity,
      handshakeTimeoutMs: c.limits.connect_timeout * 1000,
    });
  }

  /** Loads the password file and the ACL; both or neither take effect. */
  private async loadAuthFiles(): Promise<void> {
    const a = this.config.auth;
    const passwords = !this.customAuth && a.password_file
      ? await PasswordFile.load(a.password_file)
      : null;
    const acl = a.acl_file ? await Acl.load(a.acl_file) : null;
    if (!this.customAuth) this.policy.options.passwords = passwords;
    if (acl !== null && this.core.authorizer === null) {
      this.core.authorizer = new AclAuthorizer(acl);
    } else if (acl !== null && this.core.authorizer instanceof AclAuthorizer) {
      this.core.authorizer.acl = acl;
    }
  }

  /**
   * Re-reads certificates, the password file and the ACL (SIGHUP). A file that
   * fails to load leaves the previous version in force. What the new files
   * forbid is revoked at once: subscriptions the ACL no longer allows are
   * removed (from offline sessions too), and clients whose password entry was
   * removed or changed are disconnected (MQTT 5: DISCONNECT 0x87).
   */
  async reload(): Promise<void> {
    await this.tls?.reload();
    const before = this.policy.options.passwords;
    try {
      await this.loadAuthFiles();
    } catch (e) {
      log.error(
        `reload failed, keeping the previous auth files: ${e instanceof Error ? e.message : e}`,
      );
      return;
    }
    const removed = this.config.auth.acl_file ? reapplySubscriptionAccess(this.core) : 0;
    const revoked = this.customAuth
      ? 0
      : disconnectRevokedPasswords(this.core, before, this.policy.options.passwords);
    log.info(
      "password file and ACL reloaded ({removed} subscriptions removed, {revoked} clients " +
        "disconnected)",
      { removed, revoked },
    );
  }

  /** True while start() waits for the store and the bus (Redis) to open. */
  get waitingForBackends(): boolean {
    return this.opening;
  }

  /**
   * Ends a start that is still waiting for its backends (Redis: `[redis] start_timeout_ms`):
   * their connections are closed and start() rejects with BrokerStopped. False when the start is
   * not waiting (then it finishes as usual, and stop() stops the broker afterwards).
   */
  abortStart(): boolean {
    if (!this.opening) return false;
    this.startAborted = true;
    this.opening = false;
    // Closing the connections ends the wait (redis_start.ts); open() then closes the rest.
    this.core.bus.stop().catch(() => {});
    this.core.store.close().catch(() => {});
    return true;
  }

  /** Where the listeners are bound (ports resolved when configured as 0). */
  get addresses(): ListenerAddress[] {
    return this.listeners.map((l) => ({ kind: l.kind, hostname: l.hostname, port: l.port }));
  }

  /**
   * Stops listening and disconnects every client with "server shutting down". A stop() while
   * start() runs waits for it, then stops (it used to return at once and leave the broker
   * running); concurrent calls share one stop.
   */
  stop(): Promise<void> {
    if (this.starting === null && this.stopping === null) return Promise.resolve(); // not started
    this.stopping ??= this.close();
    return this.stopping;
  }

  private async close(): Promise<void> {
    try {
      await this.starting;
    } catch {
      return; // the failed start closed what it had opened
    }
    // Refuse new clients first; node servers only report closed once their sockets are gone.
    const closing = this.listeners.map((l) => l.close());
    this.listeners = [];
    const core = this.core;
    core.stop(ReasonCode.ServerShuttingDown);
    // Password checks still waiting belong to connections that are now closed.
    this.policy.verifier.limiter.clear();
    this.tls?.close();
    this.tls = null;
    await Promise.all(closing);
    // Let the DISCONNECT packets leave before the process may exit.
    await new Promise((r) => setTimeout(r, 10));
    // Each step is bounded by shutdown_timeout: with Redis or a disk gone, a stop must still
    // end (what could not be written is logged), so the orchestrator's kill is never needed.
    const deadline = Date.now() + this.config.general.shutdown_timeout * 1000;
    await within(deadline, "flushing the store", core.flush());
    await within(deadline, "leaving the cluster", core.bus.stop());
    // Messages the inbox reader delivered until it stopped are written too.
    await within(deadline, "flushing the store", core.flush());
    // No more retries: what the store never took is logged (and its inbox entries stay unread).
    core.closeJournal();
    await core.sink.stop(Math.max(0, deadline - Date.now()));
    await within(deadline, "closing the store", core.store.close());
  }
}

/** Waits for `step` until `deadline` (ms since epoch); logs and gives up after it. */
async function within(deadline: number, what: string, step: Promise<unknown>): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"late">((r) => {
    timer = setTimeout(() => r("late"), Math.max(0, deadline - Date.now()));
  });
  try {
    const r = await Promise.race([step.then(() => "done" as const), late]);
    if (r === "late") log.error(`stop: gave up ${what} after general.shutdown_timeout`);
  } catch (e) {
    log.error(`stop: ${what} failed: ${e instanceof Error ? e.message : String(e)}`);
  } finally {
    clearTimeout(timer);
  }
}

/** Whether `e` says an address is bound already (Deno.listen or node:net). */
function addressInUse(e: unknown): boolean {
  return e instanceof Deno.errors.AddrInUse ||
    (e as { code?: unknown } | null)?.code === "EADDRINUSE";
}

/** A listener's port is taken: one line naming the listener, its address and its key. */
function portTaken(c: Config, name: ListenerName, cause: unknown): ConfigError {
  const address = `${listenerBind(c, name)}:${listenerPort(c, name)}`;
  return new ConfigError(
    `ports.${name}: ${address} is in use by another process; stop it, or set another port ` +
      `(--ports.${name}, MCLOUDTT_PORTS_${name.toUpperCase()})`,
    { key: `ports.${name}` },
    { cause },
  );
}
