/**
 * Counters the core increments. Plain fields, no locking, no label maps on the hot path: they are
 * bumped where things happen and read at scrape time by the Prometheus exposition
 * (src/ops/exposition.ts) and by $SYS (src/ops/sys.ts).
 */

import type { SinkStats } from "../sinks/stats.ts";

/** Transports, as `mcloudtt_connections{listener}` labels them. */
export type ListenerKind = "tcp" | "tls" | "ws" | "wss";

/** Upper bounds (seconds) of the publish-to-delivery latency buckets. */
export const LATENCY_BUCKETS: readonly number[] = [
  0.0001,
  0.00025,
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
];

/**
 * A fixed-bucket histogram of publish-to-delivery latency. Only sampled messages are observed
 * (see `Metrics.sample`), so it costs nothing per message.
 */
export class LatencyHistogram {
  /** Count per bucket (not cumulative); the last slot is +Inf. */
  readonly counts: number[] = new Array(LATENCY_BUCKETS.length + 1).fill(0);
  sum = 0;
  count = 0;

  /** Records one latency in milliseconds. */
  observe(ms: number): void {
    const s = ms / 1000;
    let i = 0;
    while (i < LATENCY_BUCKETS.length && s > LATENCY_BUCKETS[i]) i++;
    this.counts[i]++;
    this.sum += s;
    this.count++;
  }
}

/** One in this many received PUBLISH packets is stamped for the latency histogram. */
export const LATENCY_SAMPLE_EVERY = 16;

export class Metrics {
  /**
   * The topic log's counters, one per destination (set by the broker when its sink starts; the
   * sink keeps them, read at scrape time). None without a topic log.
   */
  topicLog: () => readonly SinkStats[] = () => [];
  connectionsAccepted = 0;
  connectionsCurrent = 0;
  /** Open network connections per transport (before and after CONNECT). */
  readonly connectionsByListener: Record<ListenerKind, number> = { tcp: 0, tls: 0, ws: 0, wss: 0 };
  /** Sockets of the TLS and WebSocket listeners, from accept (before their handshake) to close. */
  socketsHeld = 0;
  /** Sockets closed at accept because the broker held as many as it may (SocketAdmission.limit). */
  connectionsRejected = 0;
  /**
   * Sockets not past CONNECT yet (TLS handshake, WebSocket upgrade or CONNECT under way) closed
   * to make room for a new one at SocketAdmission.limit, oldest first.
   */
  connectionsEvicted = 0;
  /** CONNECTs answered with a successful CONNACK. */
  connects = 0;
  connectsRefused = 0;
  /** TLS (and secure WebSocket) handshakes that failed. */
  tlsHandshakeFailures = 0;
  /**
   * Times a publisher's connection stopped being read until its messages' copies for other nodes
   * were written (cluster.max_forward_bytes, max_inbox_backlog; Bus.heldPublisher).
   */
  publishersHeld = 0;
  /** Clients not read now because they sent faster than limits.max_publish_rate or max_read_rate. */
  clientsThrottled = 0;
  /** Clients that were slowed to those rates at least once (each connection counts once). */
  clientsThrottledTotal = 0;
  /** Clients disconnected (0x87) because their client certificate expired while connected. */
  certificatesExpired = 0;
  protocolErrors = 0;
  /** Exceptions that were not MQTT errors (bugs, a throwing authorizer): the connection got 0x83. */
  internalErrors = 0;
  /** Ends of connected clients by reason label ("0x00", "0x8E", "connection_lost", ...). */
  readonly disconnects = new Map<string, number>();
  /** PUBLISH packets received, per QoS (one packet counts once). */
  readonly receivedByQos: [number, number, number] = [0, 0, 0];
  /** Deliveries per QoS (each subscriber counts once; resends do not count). */
  readonly sentByQos: [number, number, number] = [0, 0, 0];
  bytesReceived = 0;
  bytesSent = 0;
  /** QoS 0 messages dropped because the subscriber was offline or not keeping up. */
  droppedQos0 = 0;
  /** QoS 1/2 messages dropped because a session queue was full. */
  droppedQueueFull = 0;
  /** QoS 1/2 messages dropped because all queues together held limits.max_queued_bytes_total. */
  droppedQueueTotal = 0;
  /** Sessions with a connection (a gauge kept where a session's link is set and cleared). */
  sessionsOnline = 0;
  /** Messages waiting in session queues (a gauge kept by the queues). */
  queuedMessages = 0;
  /**
   * Bytes the session queues and in-flight windows hold: each queued or unacknowledged QoS 1/2
   * message's payload, topic and properties once however many queues and windows hold it, plus
   * a fixed cost per message and per entry (a gauge, against limits.max_queued_bytes_total).
   */
  queuedBytes = 0;
  /** Messages dropped because they exceeded the receiver's Maximum Packet Size. */
  droppedTooLarge = 0;
  /** Messages dropped because their Message Expiry Interval ran out. */
  droppedExpired = 0;
  /**
   * Second copies of a QoS 1/2 message a session already held or had
   * delivered (cluster: a session moving between nodes, a dead node's inbox).
   */
  duplicatesDropped = 0;
  /**
   * Messages a share group had given a session that ended before its client got them (QoS 1
   * unacknowledged, or still queued), sent to another member of the group instead.
   */
  sharedRedelivered = 0;
  /**
   * Messages handed on from another node's share-group member that found no member of the group
   * here any more (the group's last member left meanwhile).
   */
  droppedSharedGone = 0;
  sessionsExpired = 0;
  /** CONNECTs refused by authentication (bad credentials, no certificate, anonymous off). */
  authFailures = 0;
  /** CONNECTs refused with Server busy because password checks were saturated or too slow. */
  authBusy = 0;
  /** Certificate sets (certfile, keyfile, cafile) refused at reload; the old set kept serving. */
  tlsReloadFailures = 0;
  willsPublished = 0;
  /** Retained PUBLISHes refused (MQTT 5, PUBACK 0x97) because the retained store was full. */
  retainedRefused = 0;
  /** QoS 1/2 PUBLISHes refused because the store was behind by [storage] max_unwritten_ops. */
  publishesRefusedStoreFull = 0;
  /** New subscriptions whose retained messages were cut at limits.max_retained_per_subscription. */
  retainedCutoffs = 0;
  /**
   * Stored retained messages not restored at start (retained_restore.ts): over
   * limits.max_retained_messages or limits.max_retained_bytes (lowered since they were stored),
   * or expired while the broker was down.
   */
  retainedDroppedAtStartCount = 0;
  retainedDroppedAtStartBytes = 0;
  retainedDroppedAtStartExpired = 0;
  /** SUBSCRIBE filters refused with 0x97 because the client was at its subscription limits. */
  subscriptionsRefused = 0;
  readonly latency = new LatencyHistogram();
  private sampleCountdown = LATENCY_SAMPLE_EVERY;

  /** PUBLISH packets received, all QoS. */
  get publishReceived(): number {
    const r = this.receivedByQos;
    return r[0] + r[1] + r[2];
  }

  /** Deliveries, all QoS. */
  get publishSent(): number {
    const s = this.sentByQos;
    return s[0] + s[1] + s[2];
  }

  /** True once every LATENCY_SAMPLE_EVERY calls: stamp this message for the latency histogram. */
  sample(): boolean {
    if (--this.sampleCountdown !== 0) return false;
    this.sampleCountdown = LATENCY_SAMPLE_EVERY;
    return true;
  }

  /** Counts the end of a connected client. */
  disconnected(reason: string): void {
    this.disconnects.set(reason, (this.disconnects.get(reason) ?? 0) + 1);
  }
}
