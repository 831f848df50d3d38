/**
 * A broker assembled from a validated config: core, router, auth and the
 * listeners. This is where transports meet the core; the core itself never
 * imports socket or TLS code.
 */
import { getLogger } from "@logtape/logtape";
import { allowAll, type Authenticator, type Authorizer } from "./auth/types.ts";
import {
  type Config,
  listenerBind,
  listenerEnabled,
  listenerPort,
  listenerTls,
} from "./config/mod.ts";
import { Metrics } from "./ops/metrics.ts";
import { ReasonCode } from "./protocol/reason_codes.ts";
import { Router } from "./router/router.ts";
import { BrokerCore, type CoreLimits } from "./session/core.ts";
import { listenTcp } from "./transport/tcp.ts";
import type { Listener } from "./transport/types.ts";

const log = getLogger(["mcloudtt", "broker"]);

/** The [limits] and [general] keys the core enforces, in the core's terms. */
export function coreLimits(config: Config): CoreLimits {
  const l = config.limits;
  return {
    maxPacketSize: l.max_packet_size,
    receiveMaximum: l.receive_maximum,
    topicAliasMaximum: l.topic_alias_maximum,
    maxKeepAlive: l.max_keepalive,
    serverKeepAlive: config.general.timeout,
    maxInflight: l.max_inflight_messages,
    maxQueued: l.max_queued_messages,
    queueDropPolicy: l.queue_drop_policy,
    maxTopicLength: l.max_topic_length,
    maxTopicLevels: l.max_topic_levels,
    connectTimeoutMs: l.connect_timeout * 1000,
    maxConnections: l.max_connections,
    maxSessionExpiry: l.max_session_expiry_interval,
    maxOutgoingBytes: l.max_outgoing_bytes,
  };
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
  readonly router = new Router();
  private listeners: Listener[] = [];
  private running = false;

  constructor(
    readonly config: Config,
    auth: { authenticator?: Authenticator; authorizer?: Authorizer | null } = {},
  ) {
    this.core = new BrokerCore({
      limits: coreLimits(config),
      router: this.router,
      metrics: this.metrics,
      auth: auth.authenticator ?? allowAll,
      authorizer: auth.authorizer ?? null,
    });
  }

  /** Opens the configured listeners. */
  start(): Promise<void> {
    if (this.running) return Promise.resolve();
    const c = this.config;
    try {
      if (listenerEnabled(c, "tcp")) {
        if (listenerTls(c, "tcp")) {
          throw new Error("TLS listeners are not available in this build yet");
        }
        this.listeners.push(listenTcp(this.core, listenerBind(c, "tcp"), listenerPort(c, "tcp")));
      }
    } catch (e) {
      for (const l of this.listeners) l.close();
      this.listeners = [];
      return Promise.reject(e);
    }
    this.core.start();
    this.running = true;
    for (const l of this.listeners) {
      log.info("listening for MQTT over {kind} on {host}:{port}", {
        kind: l.kind,
        host: l.hostname,
        port: l.port,
      });
    }
    return Promise.resolve();
  }

  /** Where the listeners are bound (ports resolved when configured as 0). */
  get addresses(): ListenerAddress[] {
    return this.listeners.map((l) => ({ kind: l.kind, hostname: l.hostname, port: l.port }));
  }

  /** Stops listening and disconnects every client with "server shutting down". */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    await Promise.all(this.listeners.map((l) => l.close()));
    this.listeners = [];
    this.core.stop(ReasonCode.ServerShuttingDown);
    // Let the DISCONNECT packets leave before the process may exit.
    await new Promise((r) => setTimeout(r, 10));
  }
}
