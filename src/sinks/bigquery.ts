/**
 * The BigQuery destination: streaming inserts (`tabledata.insertAll`) through
 * the official client library, one client per sink. Every row carries its own
 * insertId (the row id, fixed when the row was made), so a retried batch never
 * gets new ids and BigQuery drops the duplicates. Batching, retries with
 * backoff and overflow are the queue's (queue.ts); this file talks to BigQuery
 * and sorts its answers into accepted, retry and rejected.
 */
import { BigQuery, type BigQueryOptions, type Table } from "@google-cloud/bigquery";
import type { Logger } from "@logtape/logtape";
import {
  type Destination,
  PermanentError,
  type RowRejection,
  type SendResult,
  TooLargeError,
  TransientError,
} from "./queue.ts";
import { type ColumnSchema, ROW_SCHEMA, type TopicRow } from "./row.ts";
import { useRequestTimeout } from "./http_agent.ts";
import { raceTimeout } from "./timing.ts";

/** For a wait that only its timeout ends. */
const NEVER_ABORTED = new AbortController().signal;

export interface BigQueryDestinationOptions {
  projectId: string;
  datasetId: string;
  tableId: string;
  /** Service-account key file; "" = Application Default Credentials, or none with an endpoint. */
  credentialsPath: string;
  /** API root (scheme://host:port) standing in for Google's; "" = Google's. */
  endpoint: string;
  /** Dataset location used when creating it; "" = BigQuery's default. */
  location: string;
  createTable: boolean;
  requestTimeoutMs: number;
}

/**
 * HTTP statuses worth retrying: timeouts, rate limits, server trouble, and credentials or
 * permissions refused (401, 403): an IAM grant takes minutes to reach BigQuery, and a key is
 * replaced while the broker runs. Refused for good, the rows of that time were lost (in adapter
 * mode after the broker had its acknowledgement); retried, they wait in the queue and the spill
 * store, bounded, and the retries are logged, so the operator sees it and fixes the grant.
 */
const RETRY_STATUS = new Set([401, 403, 408, 429, 500, 502, 503, 504]);
/** Per-row reasons that say nothing about the row itself: send it again. */
const RETRY_REASONS = new Set(["stopped", "timeout", "backendError", "internalError"]);
/**
 * Whole-request reasons that mean "not now" whatever the status: BigQuery reports quota and rate
 * limits on streaming inserts as 403 (quotaExceeded, rateLimitExceeded), and passing trouble on
 * its side as backendError/internalError. Retried with backoff like a 429 or a 503.
 */
const RETRY_REQUEST_REASONS = new Set([
  "quotaExceeded",
  "rateLimitExceeded",
  "userRateLimitExceeded",
  "backendError",
  "internalError",
]);

/** The shape of the library's errors that we look at. */
interface ApiErrorLike {
  code?: number | string;
  message?: string;
  name?: string;
  /** Per-row failures of a PartialFailureError, or the `error.errors` of an HTTP error answer. */
  errors?: {
    row?: unknown;
    reason?: string;
    errors?: { reason?: string; message?: string }[];
  }[];
}

/**
 * Stands in for Google authentication when an endpoint is set and
 * credentials_path is "": requests go out without a token, and nothing looks
 * for credentials (which would also probe the cloud metadata server).
 */
const NO_AUTH = {
  getRequestHeaders: () => Promise.resolve(new Headers()),
  getAccessToken: () => Promise.resolve({ token: null }),
};

export class BigQueryDestination implements Destination {
  readonly name = "bigquery";
  private readonly client: BigQuery;
  private readonly table: Table;
  /** False until the dataset and table have been checked (retried before a send when start could not). */
  private ready = false;
  private checking: Promise<void> | null = null;
  /** Unregisters this destination's request timeout from the shared agents (http_agent.ts). */
  private readonly releaseTimeout: () => void;

  constructor(private readonly opts: BigQueryDestinationOptions, private readonly log: Logger) {
    // The library's `timeout` option does not reach the socket (node-fetch 3 ignores it): the
    // agents of http_agent.ts close a request that has no answer in time.
    this.releaseTimeout = useRequestTimeout(opts.requestTimeoutMs);
    const options: BigQueryOptions & { timeout: number } = {
      projectId: opts.projectId,
      // Retries are the queue's, with the same insertIds; the library's own would hide failures.
      retryOptions: { autoRetry: false, maxRetries: 0 },
      timeout: opts.requestTimeoutMs,
      ...(opts.location ? { location: opts.location } : {}),
      ...(opts.endpoint ? { apiEndpoint: opts.endpoint.replace(/\/+$/, "") } : {}),
      ...(opts.credentialsPath ? { keyFilename: opts.credentialsPath } : {}),
      ...(opts.endpoint && !opts.credentialsPath
        ? { authClient: NO_AUTH as unknown as BigQueryOptions["authClient"] }
        : {}),
    };
    this.client = new BigQuery(options);
    this.table = this.client.dataset(opts.datasetId).table(opts.tableId);
  }

  private get tableName(): string {
    return `${this.opts.projectId}.${this.opts.datasetId}.${this.opts.tableId}`;
  }

  /**
   * Checks (or creates) the dataset and table. A wrong schema, a missing table
   * without create_table, refused credentials or an unreadable key file stop
   * the start with a message. An unreachable or silent BigQuery does not: the
   * check gets request_timeout_ms in all, then goes on in the background and is
   * repeated before each insert until it passes, while rows queue (within the
   * queue's bounds). So a broker (or adapter) starts within request_timeout_ms
   * whatever BigQuery does.
   */
  async start(): Promise<void> {
    if (this.opts.credentialsPath) {
      try {
        await Deno.stat(this.opts.credentialsPath);
      } catch (e) {
        throw new Error(
          `bigquery.credentials_path = ${JSON.stringify(this.opts.credentialsPath)}: ` +
            `cannot read the service-account key (${errorText(e)}); set it to the key file, ` +
            `or to "" for Application Default Credentials`,
        );
      }
    }
    // At most request_timeout_ms in all: a silent BigQuery must not hold up the broker's start.
    const setUp = this.setUp();
    try {
      await raceTimeout(setUp, this.opts.requestTimeoutMs, NEVER_ABORTED);
    } catch (e) {
      if (!(e instanceof TransientError)) throw e;
      this.log.warn(
        `topic log: BigQuery not reachable at start (${e.message}); rows are queued ` +
          `and the table is checked again before the first insert`,
      );
      // Timed out, still running (each request ends by its timeout): its outcome is only logged
      // (a failure that was the reason above is not logged twice).
      setUp.catch((err) => {
        if (err !== e) this.log.warn(`topic log: checking the table: ${errorText(err)}`);
      });
    }
  }

  /** One check at a time: sends waiting for the table share the one under way. */
  private setUp(): Promise<void> {
    this.checking ??= this.check().finally(() => (this.checking = null));
    return this.checking;
  }

  private async check(): Promise<void> {
    try {
      const dataset = this.client.dataset(this.opts.datasetId);
      const [datasetExists] = await dataset.exists();
      if (!datasetExists) {
        if (!this.opts.createTable) throw this.missing("dataset", this.opts.datasetId);
        await dataset.create(this.opts.location ? { location: this.opts.location } : {}).catch(
          ignoreConflict,
        );
        this.log.info(`topic log: created BigQuery dataset ${this.opts.datasetId}`);
      }
      const [tableExists] = await this.table.exists();
      if (!tableExists) {
        if (!this.opts.createTable) throw this.missing("table", this.tableName);
        await this.table.create({
          schema: { fields: ROW_SCHEMA as unknown as Record<string, unknown>[] },
          description: "mcloudtt topic log: one row per published MQTT message",
        }).catch(ignoreConflict);
        this.log.info(`topic log: created BigQuery table ${this.tableName}`);
      } else {
        const [meta] = await this.table.getMetadata();
        const problems = schemaProblems(
          (meta as { schema?: { fields?: ColumnSchema[] } }).schema?.fields ?? [],
        );
        if (problems.length > 0) {
          throw new Error(
            `BigQuery table ${this.tableName} does not have the topic log schema: ` +
              `${problems.join("; ")}. Point bigquery.table_id at a new table ` +
              `(create_table = true creates it) or alter this one (README, "Topic log").`,
          );
        }
      }
      this.ready = true;
    } catch (e) {
      throw classify(e, `checking ${this.tableName}`);
    }
  }

  private missing(what: string, name: string): Error {
    return new Error(
      `BigQuery ${what} ${name} does not exist; create it or set bigquery.create_table = true`,
    );
  }

  async send(rows: readonly TopicRow[]): Promise<SendResult> {
    if (!this.ready) await this.setUp();
    const raw = rows.map((row) => ({ insertId: row.id, json: row }));
    try {
      const [answer] = await this.table.insert(raw, {
        raw: true,
        partialRetries: 0,
        // Good rows go in even when others in the batch are refused.
        skipInvalidRows: true,
        ignoreUnknownValues: false,
      });
      // The library takes any 200 as success, even a body that is not insertAll's JSON object
      // (an HTML page from a proxy, a cut-off answer): nothing says the rows went in, so they
      // are sent again (same insertIds, so BigQuery drops them if they did).
      if (answer === null || typeof answer !== "object" || Array.isArray(answer)) {
        throw new TransientError(
          `inserting ${rows.length} rows: the answer is not a JSON object: ` +
            JSON.stringify(String(answer).slice(0, 80)),
        );
      }
      return { rejected: [], retry: [] };
    } catch (e) {
      if (e instanceof TransientError) throw e;
      const err = e as ApiErrorLike;
      if (err.name === "PartialFailureError" && Array.isArray(err.errors)) {
        return sortRowErrors(raw, err.errors);
      }
      if (err.code === 404) {
        // Table or dataset gone: check again (and create, if allowed) before the next try.
        this.ready = false;
        throw new TransientError(`table ${this.tableName} not found`);
      }
      throw classify(e, `inserting ${rows.length} rows`);
    }
  }

  close(): Promise<void> {
    this.releaseTimeout();
    return Promise.resolve();
  }
}

function sortRowErrors(
  raw: readonly unknown[],
  errors: NonNullable<ApiErrorLike["errors"]>,
): SendResult {
  const index = new Map(raw.map((r, i) => [r, i]));
  const rejected: RowRejection[] = [];
  const retry: number[] = [];
  for (const failure of errors) {
    const i = index.get(failure.row);
    if (i === undefined) continue;
    const reasons = failure.errors ?? [];
    if (reasons.length > 0 && reasons.every((r) => RETRY_REASONS.has(r.reason ?? ""))) {
      retry.push(i);
    } else {
      const why = reasons.map((r) => `${r.reason ?? "?"}: ${r.message ?? ""}`).join("; ");
      rejected.push({ index: i, reason: why || "rejected" });
    }
  }
  return { rejected, retry };
}

function ignoreConflict(e: unknown): void {
  if ((e as ApiErrorLike).code !== 409) throw e;
}

/** Sorts a failure into retry-later or refused-for-good. */
function classify(e: unknown, doing: string): Error {
  if (e instanceof TransientError || e instanceof PermanentError || e instanceof TooLargeError) {
    return e;
  }
  const err = e as ApiErrorLike;
  const code = typeof err.code === "number" ? err.code : undefined;
  const text = `${doing}: ${errorText(e)}`;
  if (code === undefined) {
    // No HTTP status: connection refused or reset, DNS, timeout. Plain Errors we made
    // ourselves (schema mismatch, missing table) carry no code either but are not network errors.
    if (isNetworkError(e)) return new TransientError(text);
    return e instanceof Error ? e : new Error(text);
  }
  if (RETRY_STATUS.has(code)) return new TransientError(`HTTP ${code} ${text}`);
  // BigQuery refuses an insertAll body over 10 MB with a 400 saying so (a front end may say 413).
  if (code === 413 || (code === 400 && /payload size exceeds|too large/i.test(err.message ?? ""))) {
    return new TooLargeError(`HTTP ${code} ${text}`);
  }
  const reasons = (err.errors ?? []).map((r) => r.reason ?? "");
  if (reasons.some((r) => RETRY_REQUEST_REASONS.has(r))) {
    return new TransientError(`HTTP ${code} (${reasons.join(", ")}) ${text}`);
  }
  return new PermanentError(`HTTP ${code} ${text}`);
}

function isNetworkError(e: unknown): boolean {
  const err = e as { code?: unknown; type?: unknown; name?: unknown; message?: unknown };
  if (typeof err.code === "string") return true; // ECONNREFUSED, ECONNRESET, ETIMEDOUT, ...
  if (err.type === "system" || err.type === "request-timeout") return true; // node-fetch FetchError
  if (err.name === "AbortError" || err.name === "FetchError" || err.name === "TypeError") {
    return true;
  }
  return /fetch failed|ECONNREFUSED|ECONNRESET|socket hang up|timed? ?out|network/i.test(
    String(err.message ?? ""),
  );
}

/** Normal type names: tables.get may answer with either spelling. */
const TYPE_ALIASES: Record<string, string> = {
  INT64: "INTEGER",
  BOOL: "BOOLEAN",
  STRUCT: "RECORD",
};

/** Differences between an existing table's columns and ROW_SCHEMA that would make inserts fail. */
export function schemaProblems(
  actual: readonly ColumnSchema[],
  expected: readonly ColumnSchema[] = ROW_SCHEMA,
  prefix = "",
): string[] {
  const problems: string[] = [];
  const byName = new Map(actual.map((c) => [c.name.toLowerCase(), c]));
  for (const want of expected) {
    const name = prefix + want.name;
    const have = byName.get(want.name.toLowerCase());
    if (!have) {
      problems.push(`column ${name} (${want.type}) is missing`);
      continue;
    }
    const type = TYPE_ALIASES[have.type] ?? have.type;
    if (type !== want.type) {
      problems.push(`column ${name} is ${have.type}, expected ${want.type}`);
      continue;
    }
    const mode = have.mode ?? "NULLABLE";
    if ((mode === "REPEATED") !== (want.mode === "REPEATED")) {
      problems.push(`column ${name} is ${mode}, expected ${want.mode}`);
    } else if (mode === "REQUIRED" && want.mode !== "REQUIRED") {
      problems.push(`column ${name} is REQUIRED but may be empty (null)`);
    }
    if (want.fields) problems.push(...schemaProblems(have.fields ?? [], want.fields, `${name}.`));
  }
  const known = new Set(expected.map((c) => c.name.toLowerCase()));
  for (const extra of actual) {
    if (!known.has(extra.name.toLowerCase()) && extra.mode === "REQUIRED") {
      problems.push(`column ${prefix}${extra.name} is REQUIRED and not written by the topic log`);
    }
  }
  return problems;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
