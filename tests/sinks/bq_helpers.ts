/**
 * Shared by the BigQuery sink tests: a sink configured for the local fake BigQuery, with short
 * timings, and small waiting helpers.
 */
import { getLogger } from "@logtape/logtape";
import { type Config, type DeepPartial, resolveConfig } from "../../src/config/mod.ts";
import { bigQuerySink } from "../../src/sinks/mod.ts";
import type { QueueSink } from "../../src/sinks/queue.ts";
import type { FakeBigQuery } from "../helpers/bigquery_server.ts";
import { info, testMessage } from "./contract.ts";

export const log = getLogger(["mcloudtt", "test"]);

export function bqConfig(
  fake: FakeBigQuery | string,
  bq: DeepPartial<Config["bigquery"]> = {},
  storageDir?: string,
): Config {
  return resolveConfig({
    ...(storageDir ? { storage: { dir: storageDir } } : {}),
    bigquery: {
      enabled: true,
      project_id: "proj",
      dataset_id: "ds",
      table_id: "log",
      endpoint: typeof fake === "string" ? fake : fake.url,
      credentials_path: "",
      flush_interval_ms: 20,
      request_timeout_ms: 2000,
      retry_initial_ms: 10,
      retry_max_ms: 40,
      ...bq,
    },
  });
}

export function bqSink(
  fake: FakeBigQuery | string,
  bq: DeepPartial<Config["bigquery"]> = {},
  storageDir?: string,
): QueueSink {
  return bigQuerySink(bqConfig(fake, bq, storageDir), log, "node-a");
}

export function offerMany(sink: QueueSink, n: number, prefix = "t", payload?: string): void {
  for (let i = 0; i < n; i++) sink.offer(testMessage(`${prefix}/${i}`, payload ?? `${i}`), info());
}

export async function until(check: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
