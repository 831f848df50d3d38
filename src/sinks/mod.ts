/**
 * Builds the topic log from the configuration: BigQuery (`[bigquery]`), a
 * JSON-lines file (`[topic_log_file]`), both, or none. broker.ts calls
 * `createSink`; the core only ever sees the `Sink` interface.
 */
import { getLogger, type Logger } from "@logtape/logtape";
import type { Config } from "../config/mod.ts";
import type { Message } from "../protocol/message.ts";
import type { BigQueryDestinationOptions } from "./bigquery.ts";
import { JsonlDestination } from "./jsonl.ts";
import { noSink } from "./memory.ts";
import { type Destination, QueueSink, type SendResult } from "./queue.ts";
import type { TopicRow } from "./row.ts";
import type { SinkStats } from "./stats.ts";
import type { PublishInfo, Sink } from "./types.ts";

export type { SinkStats } from "./stats.ts";

export interface CreateSinkOptions {
  /** Written into every row and used in row ids; default: the host name (the pod name on Kubernetes). */
  nodeId?: string;
}

/** This machine's name, or "mcloudtt" when it cannot be read. */
export function defaultNodeId(): string {
  try {
    return Deno.hostname();
  } catch {
    return "mcloudtt";
  }
}

/**
 * Loads the Google client library only when a BigQuery sink starts: a broker
 * without a topic log does not pay its start-up time and memory.
 */
class LazyBigQuery implements Destination {
  readonly name = "bigquery";
  private inner: Destination | null = null;

  constructor(private readonly opts: BigQueryDestinationOptions, private readonly log: Logger) {}

  async start(): Promise<void> {
    const { BigQueryDestination } = await import("./bigquery.ts");
    this.inner = new BigQueryDestination(this.opts, this.log);
    await this.inner.start();
  }

  send(rows: readonly TopicRow[]): Promise<SendResult> {
    return this.inner!.send(rows);
  }

  close(): Promise<void> {
    return this.inner?.close() ?? Promise.resolve();
  }
}

/** Where rows are spilled: `bigquery.spill_dir`, or a folder in the data directory. */
export function spillDir(config: Config): string {
  return config.bigquery.spill_dir || `${config.storage.dir}/topic-log-spill`;
}

/** The JSON-lines file: `topic_log_file.path`, or a file in the data directory. */
export function jsonlPath(config: Config): string {
  return config.topic_log_file.path || `${config.storage.dir}/topic-log.jsonl`;
}

/** The BigQuery sink of `config.bigquery` (whether enabled or not: the adapter uses it too). */
export function bigQuerySink(config: Config, log: Logger, nodeId: string): QueueSink {
  const bq = config.bigquery;
  const dest = new LazyBigQuery({
    projectId: bq.project_id,
    datasetId: bq.dataset_id,
    tableId: bq.table_id,
    credentialsPath: bq.credentials_path,
    endpoint: bq.endpoint,
    location: bq.location,
    createTable: bq.create_table,
    requestTimeoutMs: bq.request_timeout_ms,
  }, log);
  return new QueueSink(dest, {
    batchSize: bq.batch_size,
    batchMaxBytes: bq.batch_max_bytes,
    flushIntervalMs: bq.flush_interval_ms,
    maxQueue: bq.max_queue,
    maxQueueBytes: bq.max_queue_bytes,
    overflow: bq.overflow,
    spillDir: spillDir(config),
    spillMaxBytes: bq.spill_max_bytes,
    concurrency: bq.max_concurrent_requests,
    retryInitialMs: bq.retry_initial_ms,
    retryMaxMs: bq.retry_max_ms,
    requestTimeoutMs: bq.request_timeout_ms,
    include: bq.include,
    exclude: bq.exclude,
    nodeId,
  }, log);
}

/** The JSON-lines sink of `config.topic_log_file`. */
export function jsonlSink(config: Config, log: Logger, nodeId: string): QueueSink {
  const f = config.topic_log_file;
  return new QueueSink(
    new JsonlDestination({ path: jsonlPath(config), maxBytes: f.max_bytes, maxFiles: f.max_files }),
    {
      batchSize: f.batch_size,
      // A file takes any size of write.
      batchMaxBytes: 0,
      flushIntervalMs: f.flush_interval_ms,
      maxQueue: f.max_queue,
      // A disk that stalls (a full or network volume) must not let 100,000 large rows pile up.
      maxQueueBytes: f.max_queue_bytes,
      overflow: "drop-oldest",
      spillDir: "",
      spillMaxBytes: 0,
      concurrency: 1,
      retryInitialMs: 100,
      retryMaxMs: 5000,
      requestTimeoutMs: 30_000,
      include: f.include,
      exclude: f.exclude,
      nodeId,
    },
    log,
  );
}

/** Offers every message to several sinks; one failing never stops the others. */
export class FanOutSink implements Sink {
  readonly name: string;

  constructor(readonly sinks: readonly Sink[]) {
    this.name = sinks.map((s) => s.name).join("+");
  }

  async start(): Promise<void> {
    await Promise.all(this.sinks.map((s) => s.start()));
  }

  offer(msg: Message, info: PublishInfo): void {
    for (const s of this.sinks) {
      try {
        s.offer(msg, info);
      } catch {
        // A Sink must not throw; if one does anyway, the others still get the message.
      }
    }
  }

  async stop(deadlineMs: number): Promise<void> {
    await Promise.all(this.sinks.map((s) => s.stop(deadlineMs)));
  }
}

/** The topic log the configuration asks for; `noSink` when none is enabled. */
export function createSink(
  config: Config,
  log: Logger = getLogger(["mcloudtt", "topic-log"]),
  opts: CreateSinkOptions = {},
): Sink {
  const nodeId = opts.nodeId ?? defaultNodeId();
  const sinks: Sink[] = [];
  if (config.bigquery.enabled) sinks.push(bigQuerySink(config, log, nodeId));
  if (config.topic_log_file.enabled) sinks.push(jsonlSink(config, log, nodeId));
  if (sinks.length === 0) return noSink;
  return sinks.length === 1 ? sinks[0] : new FanOutSink(sinks);
}

/** Counters of every queue behind `sink` (for /metrics); [] for sinks without them. */
export function sinkStats(sink: Sink): SinkStats[] {
  if (sink instanceof QueueSink) return [sink.stats];
  if (sink instanceof FanOutSink) return sink.sinks.flatMap(sinkStats);
  return [];
}
