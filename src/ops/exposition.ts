/**
 * The Prometheus exposition of the broker's counters, in the text format (version 0.0.4),
 * written here rather than with a client library: every value is read at scrape time from the
 * plain counters in `Metrics` and the broker's state counts, so the hot path never touches it.
 * A library (prom-client, before) adds only dependencies and memory: importing it alone cost a
 * bare Deno process 1.4 MiB of heap. `promtool check metrics` checks this output
 * (tests/ops/exposition_test.ts).
 */
import { LATENCY_BUCKETS, type ListenerKind } from "./metrics.ts";
import type { BrokerStats, StateCounts } from "./stats.ts";
import { EventLoopLag } from "./lag.ts";
import type { SinkStats } from "../sinks/stats.ts";

const LISTENERS: readonly ListenerKind[] = ["tcp", "tls", "ws", "wss"];
const QOS = ["0", "1", "2"] as const;

/** One metric family: its samples are read when scraped. */
export interface Family {
  name: string;
  help: string;
  type: "counter" | "gauge" | "histogram";
  /** `[suffix, labels, value]`: labels already rendered (`{qos="1"}` or ""). */
  samples(): Iterable<readonly [string, string, number]>;
}

/** A label value as the text format wants it: backslash, double quote and newline escaped. */
export function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function escapeHelp(help: string): string {
  return help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

/** A sample value: integers and decimals as JavaScript writes them, infinities as +Inf / -Inf. */
function formatValue(v: number): string {
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return Number.isNaN(v) ? "NaN" : String(v);
}

/** The text format of `families`. */
export function render(families: readonly Family[]): string {
  const out: string[] = [];
  for (const f of families) {
    out.push(`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.type}`);
    for (const [suffix, labels, value] of f.samples()) {
      out.push(`${f.name}${suffix}${labels} ${formatValue(value)}`);
    }
  }
  out.push("");
  return out.join("\n");
}

/** The publish latency histogram, from the bucket counts kept in `Metrics.latency`. */
function latencyFamily(stats: BrokerStats): Family {
  return {
    name: "mcloudtt_publish_latency_seconds",
    help: "Time from receiving a PUBLISH to queueing it for a subscriber (1 in 16 sampled)",
    type: "histogram",
    *samples() {
      const h = stats.metrics.latency;
      let cumulative = 0;
      for (let i = 0; i <= LATENCY_BUCKETS.length; i++) {
        cumulative += h.counts[i];
        const le = i < LATENCY_BUCKETS.length ? String(LATENCY_BUCKETS[i]) : "+Inf";
        yield ["_bucket", `{le="${le}"}`, cumulative] as const;
      }
      yield ["_sum", "", h.sum] as const;
      yield ["_count", "", h.count] as const;
    },
  };
}

/** Row counters of SinkStats, as `mcloudtt_topic_log_rows_total{outcome}` labels them. */
const ROW_OUTCOMES = ["sent", "retried", "rejected", "dropped", "spilled", "replayed"] as const;

/** The topic log's families: one labelled sample per destination (none without a topic log). */
export function topicLogFamilies(read: () => readonly SinkStats[]): Family[] {
  const per = (
    name: string,
    help: string,
    type: "counter" | "gauge",
    value: (s: SinkStats) => number,
  ): Family => ({
    name,
    help,
    type,
    *samples() {
      for (const s of read()) {
        yield ["", `{destination="${escapeLabel(s.sink)}"}`, value(s)] as const;
      }
    },
  });
  return [
    per(
      "mcloudtt_topic_log_rows_queued_total",
      "Rows taken into the topic log queue (offered and selected by include/exclude)",
      "counter",
      (s) => s.queued,
    ),
    {
      name: "mcloudtt_topic_log_rows_total",
      help: "Topic log rows by outcome: sent (accepted), retried (sends repeated), rejected " +
        "(refused for good), dropped (lost to overflow or shutdown), spilled, replayed",
      type: "counter",
      *samples() {
        for (const s of read()) {
          const d = escapeLabel(s.sink);
          for (const o of ROW_OUTCOMES) {
            yield ["", `{destination="${d}",outcome="${o}"}`, s[o]] as const;
          }
        }
      },
    },
    {
      name: "mcloudtt_topic_log_requests_total",
      help: "Requests to the topic log destination, by result (failed: the whole request failed)",
      type: "counter",
      *samples() {
        for (const s of read()) {
          const d = escapeLabel(s.sink);
          yield ["", `{destination="${d}",result="ok"}`, s.answeredRequests] as const;
          yield ["", `{destination="${d}",result="failed"}`, s.failedRequests] as const;
        }
      },
    },
    per(
      "mcloudtt_topic_log_queue_rows",
      "Rows waiting in the topic log queue in memory",
      "gauge",
      (s) => s.queueLength,
    ),
    per(
      "mcloudtt_topic_log_queue_bytes",
      "Bytes the rows waiting in memory hold (estimated)",
      "gauge",
      (s) => s.queueBytes,
    ),
    per(
      "mcloudtt_topic_log_in_flight_rows",
      "Rows in requests that have not finished",
      "gauge",
      (s) => s.inFlight,
    ),
    per(
      "mcloudtt_topic_log_spill_bytes",
      "Bytes in the spill store",
      "gauge",
      (s) => s.spillBytes,
    ),
    {
      name: "mcloudtt_topic_log_request_duration_seconds",
      help: "Time of each request to the topic log destination, successful or not",
      type: "histogram",
      *samples() {
        for (const s of read()) {
          const d = escapeLabel(s.sink);
          const h = s.insertLatency;
          let cumulative = 0;
          for (let i = 0; i <= h.bucketsMs.length; i++) {
            cumulative += h.counts[i];
            const le = i < h.bucketsMs.length ? String(h.bucketsMs[i] / 1000) : "+Inf";
            yield ["_bucket", `{destination="${d}",le="${le}"}`, cumulative] as const;
          }
          yield ["_sum", `{destination="${d}"}`, h.sumMs / 1000] as const;
          yield ["_count", `{destination="${d}"}`, h.count] as const;
        }
      },
    },
  ];
}

/** The content type of the text format this module renders. */
export const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** A gauge with one unlabelled sample. */
export function gaugeFamily(name: string, help: string, read: () => number): Family {
  return { name, help, type: "gauge", samples: () => [["", "", read()] as const] };
}

/** A counter with one unlabelled sample. */
export function counterFamily(name: string, help: string, read: () => number): Family {
  return { name, help, type: "counter", samples: () => [["", "", read()] as const] };
}

/**
 * The process's memory, event-loop lag and start time (every mcloudtt process has them: the
 * broker and bq-adapter). Memory is read once per scrape: `reset` before the next one.
 */
export function processFamilies(lag: EventLoopLag): { families: Family[]; reset(): void } {
  let memory: Deno.MemoryUsage | null = null;
  const mem = () => (memory ??= Deno.memoryUsage());
  return {
    families: [
      gaugeFamily("process_resident_memory_bytes", "Resident memory size", () => mem().rss),
      gaugeFamily("mcloudtt_heap_used_bytes", "JavaScript heap in use", () => mem().heapUsed),
      gaugeFamily("mcloudtt_heap_total_bytes", "JavaScript heap allocated", () => mem().heapTotal),
      gaugeFamily(
        "mcloudtt_external_memory_bytes",
        "Memory of buffers outside the heap",
        () => mem().external,
      ),
      gaugeFamily(
        "mcloudtt_event_loop_lag_seconds",
        "Longest event-loop delay seen since the previous scrape",
        () => lag.takeMax() / 1000,
      ),
      gaugeFamily(
        "process_start_time_seconds",
        "Start time of the process since the epoch",
        () => Math.round(performance.timeOrigin / 1000),
      ),
    ],
    reset: () => memory = null,
  };
}

/** Every mcloudtt metric; `metrics()` renders the text format. */
/**
 * Metric families served together (a process's /metrics): rendered at scrape time, with what a
 * scrape reads once (memory, state counts) reset around each rendering.
 */
export abstract class FamilySet {
  protected readonly families: Family[] = [];
  protected readonly lag = new EventLoopLag();
  protected resetPerScrape: () => void = () => {};

  /** Content type of `metrics()`. */
  get contentType(): string {
    return CONTENT_TYPE;
  }

  /** The text exposition of every family, as of now. */
  metrics(): Promise<string> {
    this.resetPerScrape();
    try {
      return Promise.resolve(render(this.families));
    } finally {
      this.resetPerScrape();
    }
  }

  /** Stops the event-loop lag timer. */
  close(): void {
    this.lag.stop();
  }
}

export class Exposition extends FamilySet {
  private snapshot: StateCounts | null = null;

  constructor(private readonly stats: BrokerStats) {
    super();
    const add = (f: Family) => this.families.push(f);
    const m = () => stats.metrics;
    const counts = () => (this.snapshot ??= stats.counts());
    const gauge = (name: string, help: string, read: () => number) =>
      add(gaugeFamily(name, help, read));
    const counter = (name: string, help: string, read: () => number) =>
      add(counterFamily(name, help, read));
    const labelled = (
      type: "counter" | "gauge",
      name: string,
      help: string,
      label: string,
      read: () => Iterable<readonly [string, number]>,
    ) =>
      add({
        name,
        help,
        type,
        *samples() {
          for (const [value, n] of read()) {
            yield ["", `{${label}="${escapeLabel(value)}"}`, n] as const;
          }
        },
      });

    labelled(
      "gauge",
      "mcloudtt_connections",
      "Open network connections per listener",
      "listener",
      () => LISTENERS.map((l) => [l, m().connectionsByListener[l]]),
    );
    counter(
      "mcloudtt_connections_rejected_total",
      "Sockets closed at accept, before any byte was read, because the broker held max_connections and its margin",
      () => m().connectionsRejected,
    );
    counter(
      "mcloudtt_connections_evicted_total",
      "Sockets not past CONNECT (handshake, upgrade or CONNECT under way) closed, oldest first, to make room for a new socket at max_connections and its margin",
      () => m().connectionsEvicted,
    );
    counter("mcloudtt_connects_total", "CONNECTs accepted (CONNACK 0)", () => m().connects);
    counter(
      "mcloudtt_connects_refused_total",
      "CONNECTs refused (CONNACK with an error code)",
      () => m().connectsRefused,
    );
    labelled(
      "counter",
      "mcloudtt_disconnects_total",
      "Connected clients that went away, by reason code (or connection_lost without DISCONNECT)",
      "reason",
      () => m().disconnects,
    );
    labelled(
      "counter",
      "mcloudtt_messages_received_total",
      "PUBLISH packets received from clients, by QoS",
      "qos",
      () => QOS.map((q, i) => [q, m().receivedByQos[i]]),
    );
    labelled(
      "counter",
      "mcloudtt_messages_sent_total",
      "Messages delivered to subscribers, by QoS (each delivery once, resends not counted)",
      "qos",
      () => QOS.map((q, i) => [q, m().sentByQos[i]]),
    );
    counter("mcloudtt_bytes_received_total", "Bytes read from clients", () => m().bytesReceived);
    counter("mcloudtt_bytes_sent_total", "Bytes written to clients", () => m().bytesSent);
    gauge("mcloudtt_subscriptions", "Subscriptions", () => counts().subscriptions);
    gauge("mcloudtt_retained_messages", "Retained messages", () => counts().retained);
    labelled(
      "gauge",
      "mcloudtt_sessions",
      "Sessions, online (with a connection) or offline (persistent, waiting)",
      "state",
      () => [["online", counts().sessionsOnline], ["offline", counts().sessionsOffline]],
    );
    gauge(
      "mcloudtt_queued_messages",
      "QoS 1/2 messages waiting in session queues",
      () => counts().queued,
    );
    gauge(
      "mcloudtt_queued_bytes",
      "Bytes session queues and in-flight windows hold (each message once, plus each entry), against limits.max_queued_bytes_total",
      () => m().queuedBytes,
    );
    labelled(
      "counter",
      "mcloudtt_messages_dropped_total",
      "Messages not delivered to a subscriber, by reason",
      "reason",
      () => [
        ["qos0_not_sendable", m().droppedQos0],
        ["queue_full", m().droppedQueueFull],
        ["queue_total_full", m().droppedQueueTotal],
        ["too_large", m().droppedTooLarge],
        ["expired", m().droppedExpired],
        ["duplicate", m().duplicatesDropped],
        ["shared_group_gone", m().droppedSharedGone],
      ],
    );
    counter(
      "mcloudtt_shared_redelivered_total",
      "Messages of a share group sent to another member because the first one's session ended first",
      () => m().sharedRedelivered,
    );
    counter(
      "mcloudtt_retained_cutoffs_total",
      "New subscriptions whose retained messages were cut at limits.max_retained_per_subscription",
      () => m().retainedCutoffs,
    );
    labelled(
      "counter",
      "mcloudtt_retained_dropped_at_start_total",
      "Stored retained messages not restored at start, by the limit they passed (or expired)",
      "reason",
      () => [
        ["max_retained_messages", m().retainedDroppedAtStartCount],
        ["max_retained_bytes", m().retainedDroppedAtStartBytes],
        ["expired", m().retainedDroppedAtStartExpired],
      ],
    );
    counter(
      "mcloudtt_auth_failures_total",
      "CONNECTs refused by authentication",
      () => m().authFailures,
    );
    counter(
      "mcloudtt_auth_busy_total",
      "CONNECTs refused with Server busy because password checks were saturated",
      () => m().authBusy,
    );
    counter(
      "mcloudtt_retained_refused_total",
      "Retained PUBLISHes refused (0x97) because the retained store was full",
      () => m().retainedRefused,
    );
    counter(
      "mcloudtt_publishes_refused_store_full_total",
      "QoS 1/2 PUBLISHes refused (0x97) while storage.max_unwritten_ops store operations waited",
      () => m().publishesRefusedStoreFull,
    );
    gauge(
      "mcloudtt_store_unwritten_operations",
      "Store operations not written yet (a failing store's are retried until written)",
      () => counts().storeUnwritten,
    );
    counter(
      "mcloudtt_store_write_failures_total",
      "Store writes (batches) that failed and were retried",
      () => counts().storeWriteFailures,
    );
    gauge(
      "mcloudtt_cluster_inbox_backlog",
      "Entries in this node's cluster inbox (forwarded by other nodes, not yet delivered here)",
      () => counts().inboxBacklog,
    );
    gauge(
      "mcloudtt_cluster_nodes_behind",
      "Cluster nodes whose inbox is at cluster.max_inbox_backlog (this one included)",
      () => counts().nodesBehind,
    );
    counter(
      "mcloudtt_cluster_forwards_held_total",
      "QoS 1/2 messages for a node behind whose acknowledgement waited until it caught up",
      () => counts().forwardsHeld,
    );
    counter(
      "mcloudtt_cluster_forwards_dropped_total",
      "QoS 0 copies not forwarded to a node behind",
      () => counts().forwardsDropped,
    );
    counter(
      "mcloudtt_subscriptions_refused_total",
      "SUBSCRIBE filters refused (0x97) at the client's subscription limits",
      () => m().subscriptionsRefused,
    );
    counter(
      "mcloudtt_tls_handshake_failures_total",
      "TLS and secure WebSocket handshakes that failed",
      () => m().tlsHandshakeFailures,
    );
    counter(
      "mcloudtt_publishers_held_total",
      "Times a publisher was not read until its messages' copies for other nodes were written",
      () => m().publishersHeld,
    );
    counter(
      "mcloudtt_clients_throttled_total",
      "Connections slowed at least once for sending faster than limits.max_publish_rate or max_read_rate",
      () => m().clientsThrottledTotal,
    );
    gauge(
      "mcloudtt_clients_throttled",
      "Connections not read now because they sent faster than limits.max_publish_rate or max_read_rate",
      () => m().clientsThrottled,
    );
    counter(
      "mcloudtt_client_certificates_expired_total",
      "Clients disconnected because their client certificate expired while they were connected",
      () => m().certificatesExpired,
    );
    counter(
      "mcloudtt_protocol_errors_total",
      "Connections closed for a protocol error",
      () => m().protocolErrors,
    );
    counter(
      "mcloudtt_internal_errors_total",
      "Connections closed after an unexpected exception (DISCONNECT 0x83)",
      () => m().internalErrors,
    );
    counter(
      "mcloudtt_sessions_expired_total",
      "Sessions ended by their expiry interval",
      () => m().sessionsExpired,
    );
    counter("mcloudtt_wills_published_total", "Wills published", () => m().willsPublished);
    add(latencyFamily(stats));

    const process = processFamilies(this.lag);
    for (const f of process.families) add(f);
    for (const f of topicLogFamilies(() => m().topicLog())) add(f);
    this.resetPerScrape = () => {
      this.snapshot = null;
      process.reset();
    };
  }
}
