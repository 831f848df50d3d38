/**
 * `mcloudtt bq-adapter`: the topic log as a separate deployment. Reads a
 * broker or cluster through a shared subscription ($share/<group>/<filter>,
 * QoS 1, persistent session) and writes what it receives with the same
 * BigQuery sink the broker uses. A message is acknowledged only once its row
 * is accepted (or spilled to disk), so replicas split the stream and a crashed
 * replica's unacknowledged messages go to the others or to its next start.
 */
import { getLogger } from "@logtape/logtape";
import type { Config } from "../config/mod.ts";
import { Consumer, type Delivery } from "../adapter/consumer.ts";
import { AdapterExposition } from "../ops/adapter_metrics.ts";
import { type HttpEndpoint, startHttp } from "../ops/http.ts";
import { setupLogging } from "../ops/log.ts";
import { bigQuerySink, defaultNodeId } from "../sinks/mod.ts";
import { encodePayload, RowIds, type TopicRow, type UserProperty } from "../sinks/row.ts";

const log = getLogger(["mcloudtt", "bq-adapter"]);

function userProperties(p: Delivery["properties"]): UserProperty[] {
  const out: UserProperty[] = [];
  for (const [key, v] of Object.entries(p?.userProperties ?? {})) {
    for (const value of Array.isArray(v) ? v : [v]) out.push({ key, value: String(value) });
  }
  return out;
}

/** The row for one delivery; the publisher's client id and username do not travel over MQTT. */
export function deliveryRow(d: Delivery, nodeId: string, id: string, at: number): TopicRow {
  const pfi = d.properties?.payloadFormatIndicator;
  return {
    id,
    topic: d.topic,
    ...encodePayload(d.payload),
    payload_format_indicator: pfi === undefined ? null : Number(pfi),
    content_type: d.properties?.contentType ?? null,
    qos: d.qos,
    retain: d.retain,
    client_id: "",
    username: null,
    node_id: nodeId,
    kind: "adapter",
    publish_time: new Date(at).toISOString(),
    user_properties: userProperties(d.properties),
  };
}

async function readPem(path: string, key: string): Promise<string> {
  if (!path) return "";
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(`adapter.${key} = ${JSON.stringify(path)}: cannot read: ${e}`);
  }
}

/** Runs the adapter until SIGINT/SIGTERM; returns the exit code. */
export async function runBqAdapter(config: Config): Promise<number> {
  await setupLogging({
    level: config.general.log_level,
    format: config.general.log_format,
    levels: config.general.log_levels,
    rate: config.general.log_rate,
    valueMax: config.general.log_value_max,
  });
  const a = config.adapter;
  const bq = config.bigquery;
  for (const key of ["project_id", "dataset_id"] as const) {
    if (bq[key] === "") {
      console.error(
        `mcloudtt bq-adapter: set bigquery.${key} (MCLOUDTT_BIGQUERY_${key.toUpperCase()})`,
      );
      return 2;
    }
  }
  if (a.receive_maximum > bq.max_queue) {
    log.warn(
      `adapter.receive_maximum (${a.receive_maximum}) > bigquery.max_queue (${bq.max_queue}): ` +
        `a long BigQuery outage can drop rows; keep receive_maximum <= max_queue`,
    );
  }
  const clientId = a.client_id || `bq-adapter-${defaultNodeId()}`;
  let ca: string, cert: string, key: string;
  try {
    [ca, cert, key] = await Promise.all([
      readPem(a.cafile, "cafile"),
      readPem(a.certfile, "certfile"),
      readPem(a.keyfile, "keyfile"),
    ]);
  } catch (e) {
    console.error(`mcloudtt bq-adapter: ${e instanceof Error ? e.message : e}`);
    return 2;
  }
  // The node id in each row is the adapter's client id: replicas are told apart.
  const sink = bigQuerySink(config, log, clientId);
  try {
    await sink.start();
  } catch (e) {
    console.error(`mcloudtt bq-adapter: cannot start: ${e instanceof Error ? e.message : e}`);
    return 2;
  }
  const ids = new RowIds(clientId);
  const consumer = new Consumer({
    url: a.url,
    clientId,
    username: a.username,
    password: a.password,
    ca,
    cert,
    key,
    subscription: `$share/${a.group}/${a.filter}`,
    sessionExpiry: a.session_expiry,
    receiveMaximum: a.receive_maximum,
    keepalive: a.keepalive,
    reconnectMs: a.reconnect_ms,
  }, (d) => {
    sink.enqueue(deliveryRow(d, clientId, ids.next(), Date.now()), (outcome) => {
      // A dropped row stays unacknowledged: the broker sends the message again after a reconnect.
      if (outcome !== "dropped") d.ack();
      else d.drop();
    });
  }, log);
  let http: HttpEndpoint | null = null;
  const exposition = new AdapterExposition({
    consumer: consumer.stats,
    unacked: () => consumer.unacked,
    sink: () => [sink.stats],
  });
  if (config.http.enabled) {
    try {
      http = await startHttp({
        hostname: config.http.bind,
        port: a.http_port,
        maxConnections: config.http.max_connections,
        requestDeadlineMs: config.http.request_timeout * 1000,
        // Not subscribed: nothing is written, and a rolling update should wait for this replica.
        problems: () => consumer.stats.connected ? [] : [`not subscribed to the broker ${a.url}`],
        metrics: async () => ({
          body: await exposition.metrics(),
          contentType: exposition.contentType,
        }),
      });
    } catch (e) {
      console.error(
        `mcloudtt bq-adapter: adapter.http_port = ${a.http_port}: cannot listen on ` +
          `${config.http.bind}: ${e instanceof Error ? e.message : e} ` +
          `(pick a free port, or set http.enabled = false)`,
      );
      await sink.stop(0);
      return 2;
    }
    // startHttp logs where it listens.
  }
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info(`bq-adapter: ${signal} received, flushing`);
    // Rows still queued are sent (and their messages acknowledged) before the DISCONNECT;
    // anything left unacknowledged stays in the session for the next replica.
    await sink.stop(config.general.shutdown_timeout * 1000);
    await consumer.stop();
    exposition.close();
    await http?.close();
    Deno.exit(0);
  };
  // Before the first subscription, which waits for the broker as long as it takes: a SIGTERM
  // meanwhile (a rollout while the broker is down) killed the process by its default action.
  Deno.addSignalListener("SIGINT", () => stop("SIGINT"));
  Deno.addSignalListener("SIGTERM", () => stop("SIGTERM"));
  await consumer.start();
  return await new Promise<number>(() => {});
}
