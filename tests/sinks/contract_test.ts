/** The Sink contract, run against every sink: memory, JSON lines, and BigQuery (on the fake server). */
import { getLogger } from "@logtape/logtape";
import { resolveConfig } from "../../src/config/mod.ts";
import { MemorySink } from "../../src/sinks/memory.ts";
import { bigQuerySink, jsonlSink } from "../../src/sinks/mod.ts";
import { decodeRowProperties, type TopicRow } from "../../src/sinks/row.ts";
import { startFakeBigQuery } from "../helpers/bigquery_server.ts";
import { type LoggedRecord, runSinkContract } from "./contract.ts";

const log = getLogger(["mcloudtt", "test"]);

/** A row read back from a destination, in the contract's shape. */
export function fromRow(row: TopicRow): LoggedRecord {
  return {
    topic: row.topic,
    payload: row.payload_encoding === "base64"
      ? Uint8Array.from(atob(row.payload), (c) => c.charCodeAt(0))
      : new TextEncoder().encode(row.payload),
    qos: Number(row.qos),
    retain: row.retain,
    clientId: row.client_id,
    username: row.username,
    contentType: row.content_type,
    payloadFormat: row.payload_format_indicator,
    userProperties: row.user_properties.map((p) => [p.key, p.value]),
    kind: row.kind,
  };
}

runSinkContract({
  name: "memory",
  newSink() {
    const sink = new MemorySink();
    return Promise.resolve({
      sink,
      logged: () =>
        Promise.resolve(sink.records.map(({ msg, info }) => {
          const props = decodeRowProperties(msg.props);
          return {
            topic: msg.topic,
            payload: msg.payload,
            qos: msg.qos,
            retain: msg.retain,
            clientId: info.clientId,
            username: info.username ?? null,
            contentType: props.contentType,
            payloadFormat: props.payloadFormatIndicator,
            userProperties: props.userProperties.map((p) => [p.key, p.value] as [string, string]),
            kind: info.kind,
          };
        })),
      [Symbol.asyncDispose]: () => Promise.resolve(),
    });
  },
  skip: {
    "offer never waits for a stalled destination, and stop keeps its deadline":
      "keeps everything in memory: there is no destination to stall",
  },
});

runSinkContract({
  name: "jsonl",
  async newSink() {
    const dir = await Deno.makeTempDir({ prefix: "mcloudtt-jsonl-" });
    const path = `${dir}/log.jsonl`;
    const sink = jsonlSink(
      resolveConfig({ topic_log_file: { enabled: true, path, flush_interval_ms: 20 } }),
      log,
      "node-a",
    );
    return {
      sink,
      async logged() {
        const text = await Deno.readTextFile(path).catch(() => "");
        return text.split("\n").filter((l) => l !== "").map((l) => fromRow(JSON.parse(l)));
      },
      [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
    };
  },
  skip: {
    "offer never waits for a stalled destination, and stop keeps its deadline":
      "a local file cannot be made to stall from a test (the BigQuery run covers the queue)",
  },
});

runSinkContract({
  name: "bigquery",
  newSink() {
    const fake = startFakeBigQuery();
    const sink = bigQuerySink(
      resolveConfig({
        bigquery: {
          enabled: true,
          project_id: "proj",
          dataset_id: "ds",
          endpoint: fake.url,
          credentials_path: "",
          flush_interval_ms: 20,
          request_timeout_ms: 2000,
        },
      }),
      log,
      "node-a",
    );
    return Promise.resolve({
      sink,
      logged: () =>
        Promise.resolve(fake.inserted.map((r) => fromRow(r.json as unknown as TopicRow))),
      stall: () => fake.stall(),
      release: () => fake.release(),
      [Symbol.asyncDispose]: () => fake.close(),
    });
  },
});
