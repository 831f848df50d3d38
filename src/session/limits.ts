import type { RetainedPageSize } from "../store/types.ts";
import type { RateLimits } from "./rate_limit.ts";

/** The bounds the core enforces, in the core's terms (built from [limits] and [general]). */
export interface CoreLimits {
  maxPacketSize: number;
  /**
   * The largest first packet (CONNECT, with its will) a connection may send, at most
   * maxPacketSize: before it, anyone may open sockets, each holding what it announced.
   */
  maxConnectPacketSize: number;
  receiveMaximum: number;
  topicAliasMaximum: number;
  /** Topic aliases the server uses towards one client at most (capped by the client's maximum). */
  maxOutgoingTopicAliases: number;
  maxKeepAlive: number;
  /** Server Keep Alive imposed on every client, 0 for none ([general] timeout). */
  serverKeepAlive: number;
  maxInflight: number;
  maxQueued: number;
  /** Payload bytes one session's queue may hold. */
  maxQueuedBytes: number;
  /**
   * Bytes every session queue together may hold, each message counted once however many queues
   * it waits in, plus each queue entry: without it the bound was max_sessions x max_queued_bytes.
   */
  maxQueuedBytesTotal: number;
  queueDropPolicy: "newest" | "oldest";
  maxTopicLength: number;
  maxTopicLevels: number;
  connectTimeoutMs: number;
  maxConnections: number;
  /**
   * Sessions held at once, with or without a connection: a new client id over it is refused,
   * so offline sessions (each with its queue, will and subscriptions) cannot pile up.
   */
  maxSessions: number;
  maxSessionExpiry: number;
  maxOutgoingBytes: number;
  /** Bytes a client may pipeline behind CONNECT while it is authenticated. */
  maxConnectBacklog: number;
  /** How fast one connection may send (limits.max_publish_rate, max_read_rate; 0: no bound). */
  rate: RateLimits;
  /** Period of the keep-alive / expiry sweep. */
  sweepIntervalMs: number;
  /** Idle time after which a connection's spare buffers are released. */
  idleTrimMs: number;
  /** Subscriptions one client may hold. */
  maxSubscriptions: number;
  /** Topic levels summed over one client's subscription filters. */
  maxSubscriptionLevels: number;
  /**
   * Characters summed over one client's subscription keys (the filter with its `$share/group/`):
   * the strings the index keeps, which the count and level limits alone let reach 600 MiB.
   */
  maxSubscriptionBytes: number;
  /**
   * False when the broker keeps no retained messages (limits.max_retained_messages = 0): MQTT 5
   * clients are told in CONNACK (Retain Available 0) and a retained PUBLISH or will is refused
   * with 0x9A (Retain not supported) [MQTT-3.2.2-13; section 3.3.1.3].
   */
  retainAvailable: boolean;
  /** Retained messages one new subscription receives at most. */
  maxRetainedPerSubscription: number;
  /**
   * How much of a durable store's retained messages a start reads at once
   * ([storage] retained_page_messages, retained_page_bytes; see retained_restore.ts).
   */
  retainedPage: RetainedPageSize;
  /** Completed message ids a session remembers ([cluster] dedupe_window; see Session). */
  dedupeWindow: number;
}
