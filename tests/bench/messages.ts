/**
 * The JSON-lines conversation between the bench coordinator (main.ts) and its worker processes.
 *
 * One command per line on the worker's stdin, exactly one reply per command on its stdout.
 */

import type { ClientTls } from "./tls.ts";
import type { ProtocolLevel } from "./wire.ts";

/** One MQTT client a worker runs. */
export interface ClientPlan {
  readonly clientId: string;
  /** "pub" publishes to `topic`; "sub" subscribes to `topic`; "slow-sub" does so and reads slowly. */
  readonly kind: "pub" | "sub" | "slow-sub";
  readonly topic: string;
  readonly qos: 0 | 1 | 2;
  /** Written into every payload so subscribers can tell publishers apart (pubs only). */
  readonly publisherIndex?: number;
  /** Set: a persistent session (Clean Start 0) with this Session Expiry Interval, seconds. */
  readonly sessionExpiry?: number;
}

/** Everything a load worker needs to run its share of a scenario. */
export interface LoadPlan {
  readonly host: string;
  readonly port: number;
  /** TLS towards the broker (trusting this CA); plain TCP when absent. */
  readonly tls?: ClientTls;
  readonly version: ProtocolLevel;
  readonly payloadBytes: number;
  /** PUBLISH packets per write call. */
  readonly batch: number;
  readonly clients: readonly ClientPlan[];
  /** Messages per second for each publisher; absent means as fast as flow control allows. */
  readonly ratePerPublisher?: number;
  /** Each publisher stops by itself after this many messages; absent means until `stop`. */
  readonly messagesPerPublisher?: number;
  /** Read sequence numbers from payloads to count duplicates. */
  readonly trackDuplicates: boolean;
  /** Record publish-to-deliver latency (publishers and subscribers share this process). */
  readonly latency: boolean;
  /** In-flight window for QoS 1/2 publishers on 3.1.1, which has no Receive Maximum. */
  readonly v311Window: number;
  /** How a "slow-sub" reads: this many bytes per read, then a pause of `slowReadPauseMs`. */
  readonly slowReadBytes: number;
  readonly slowReadPauseMs: number;
}

/** A worker that opens many idle connections and holds them. */
export interface IdlePlan {
  readonly host: string;
  readonly port: number;
  /** TLS towards the broker (trusting this CA); plain TCP when absent. */
  readonly tls?: ClientTls;
  readonly version: ProtocolLevel;
  readonly count: number;
  /** Local addresses to bind, used round-robin (spreads the 4-tuples over more source ports). */
  readonly sourceAddresses: readonly string[];
  /** Connections being opened at once by this worker. */
  readonly concurrency: number;
  readonly keepAliveSeconds: number;
  readonly clientIdPrefix: string;
}

/** Commands from the coordinator. */
export type Command =
  | { readonly cmd: "setup"; readonly plan: LoadPlan }
  | { readonly cmd: "setup-idle"; readonly plan: IdlePlan }
  | { readonly cmd: "go" }
  | { readonly cmd: "mark" }
  | { readonly cmd: "stop"; readonly timeoutMs: number }
  // Subscribers close their connections (sessions stay) and later connect again without
  // subscribing: what a persistent session kept for them arrives then.
  | { readonly cmd: "disconnect" }
  | { readonly cmd: "reconnect" }
  | { readonly cmd: "close" };

/** Latency percentiles over the samples taken since the previous mark, in microseconds. */
export interface LatencySummary {
  readonly count: number;
  readonly p50: number;
  readonly p99: number;
  readonly p999: number;
  readonly max: number;
}

/** Result of opening idle connections. */
export interface ConnectSummary {
  readonly connected: number;
  readonly failed: number;
  /** From the first connect attempt to the last CONNACK. */
  readonly elapsedMs: number;
  readonly firstError?: string;
}

/** A worker's counters at one moment. */
export interface Snapshot {
  readonly ok: true;
  /** Worker-local monotonic time (ms) when the snapshot was taken. */
  readonly at: number;
  /** CPU time (user + system) this worker process has used so far. */
  readonly cpuMicros: number;
  readonly sent: number;
  readonly acked: number;
  readonly received: number;
  readonly duplicates: number;
  readonly inflight: number;
  readonly errors: readonly string[];
  readonly latency?: LatencySummary;
  readonly connect?: ConnectSummary;
}

/** A command that failed inside the worker. */
export interface Failure {
  readonly ok: false;
  readonly error: string;
}

/** The single reply to each command. */
export type Reply = Snapshot | Failure;
