/**
 * The topic log's row: one published message as a flat record, the same for
 * every destination (BigQuery, JSON lines). Built once per logged message, off
 * the wire bytes, so the sink never holds on to the broker's buffers.
 */
import { Buffer } from "node:buffer";
import { Reader } from "../protocol/bytes.ts";
import type { Message } from "../protocol/message.ts";
import { Prop } from "../protocol/properties.ts";
import type { PublishInfo } from "./types.ts";

/** One MQTT 5 User Property. */
export interface UserProperty {
  readonly key: string;
  readonly value: string;
}

/** One logged message, as written to BigQuery and to JSON lines. */
export interface TopicRow {
  /** Unique per message: the BigQuery insertId (deduplicates retries) and a column to deduplicate on. */
  readonly id: string;
  readonly topic: string;
  /** The payload as UTF-8 text when it is well-formed UTF-8, else base64. */
  readonly payload: string;
  /** How `payload` is written: "utf8" (the bytes as text) or "base64". */
  readonly payload_encoding: "utf8" | "base64";
  /** MQTT 5 Payload Format Indicator (0 bytes, 1 UTF-8), null when absent. */
  readonly payload_format_indicator: number | null;
  readonly content_type: string | null;
  readonly qos: number;
  readonly retain: boolean;
  /** Publisher's client id; "" for messages the broker makes itself ($SYS). */
  readonly client_id: string;
  readonly username: string | null;
  /** The broker node (or adapter) that logged the message. */
  readonly node_id: string;
  /** "client", "will" or "sys" in the broker; "adapter" when written by `mcloudtt bq-adapter`. */
  readonly kind: string;
  /** When the broker received the message, RFC 3339 in UTC with milliseconds. */
  readonly publish_time: string;
  readonly user_properties: readonly UserProperty[];
}

/** A BigQuery column, in the shape `tables.insert` takes and `tables.get` returns. */
export interface ColumnSchema {
  readonly name: string;
  readonly type: "STRING" | "INTEGER" | "BOOLEAN" | "TIMESTAMP" | "RECORD";
  readonly mode: "REQUIRED" | "NULLABLE" | "REPEATED";
  readonly description?: string;
  readonly fields?: readonly ColumnSchema[];
}

/** The table schema; `create_table` creates it and start-up checks an existing table against it. */
export const ROW_SCHEMA: readonly ColumnSchema[] = [
  { name: "id", type: "STRING", mode: "REQUIRED", description: "unique message id (insertId)" },
  { name: "topic", type: "STRING", mode: "REQUIRED" },
  { name: "payload", type: "STRING", mode: "NULLABLE", description: "UTF-8 text, else base64" },
  { name: "payload_encoding", type: "STRING", mode: "REQUIRED", description: "utf8 | base64" },
  { name: "payload_format_indicator", type: "INTEGER", mode: "NULLABLE" },
  { name: "content_type", type: "STRING", mode: "NULLABLE" },
  { name: "qos", type: "INTEGER", mode: "REQUIRED" },
  { name: "retain", type: "BOOLEAN", mode: "REQUIRED" },
  { name: "client_id", type: "STRING", mode: "REQUIRED" },
  { name: "username", type: "STRING", mode: "NULLABLE" },
  { name: "node_id", type: "STRING", mode: "REQUIRED" },
  { name: "kind", type: "STRING", mode: "REQUIRED", description: "client | will | sys | adapter" },
  { name: "publish_time", type: "TIMESTAMP", mode: "REQUIRED" },
  {
    name: "user_properties",
    type: "RECORD",
    mode: "REPEATED",
    fields: [
      { name: "key", type: "STRING", mode: "REQUIRED" },
      { name: "value", type: "STRING", mode: "REQUIRED" },
    ],
  },
];

/** The pass-through properties a row keeps, decoded from `Message.props`. */
export interface RowProperties {
  payloadFormatIndicator: number | null;
  contentType: string | null;
  userProperties: UserProperty[];
}

/**
 * Decodes the encoded pass-through properties of a Message (the property
 * bytes without their length prefix; see publish.ts). Those bytes were
 * validated when the PUBLISH arrived, so only the identifiers that can appear
 * there are handled; anything else ends the walk rather than throwing.
 */
export function decodeRowProperties(props: Uint8Array | null): RowProperties {
  const out: RowProperties = {
    payloadFormatIndicator: null,
    contentType: null,
    userProperties: [],
  };
  if (props === null || props.length === 0) return out;
  const r = new Reader(props, 0, props.length);
  try {
    while (r.pos < r.end) {
      const id = r.u8();
      switch (id) {
        case Prop.PayloadFormatIndicator:
          out.payloadFormatIndicator = r.u8();
          break;
        case Prop.ContentType:
          out.contentType = r.string();
          break;
        case Prop.ResponseTopic:
          r.string();
          break;
        case Prop.CorrelationData:
          r.binary();
          break;
        case Prop.UserProperty:
          out.userProperties.push({ key: r.string(), value: r.string() });
          break;
        default:
          return out;
      }
    }
  } catch {
    // Truncated bytes cannot come from our decoder; keep what was read.
  }
  return out;
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** UTF-8 text when the bytes are well-formed UTF-8, else base64. */
export function encodePayload(payload: Uint8Array): Pick<TopicRow, "payload" | "payload_encoding"> {
  try {
    return { payload: strictUtf8.decode(payload), payload_encoding: "utf8" };
  } catch {
    return { payload: toBase64(payload), payload_encoding: "base64" };
  }
}

/** The bytes as base64, encoded where they are (no copy, no intermediate string). */
function toBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}

/**
 * Builds the row for one message; `id` must be unique per message (see
 * RowIds). `at` is when it was received (info.receivedAt, when the core
 * fills it in); the client id falls back to the message's origin (wills).
 */
export function toRow(
  msg: Message,
  info: PublishInfo,
  nodeId: string,
  id: string,
  at = info.receivedAt,
): TopicRow {
  const props = decodeRowProperties(msg.props);
  return {
    id,
    topic: msg.topic,
    ...encodePayload(msg.payload),
    payload_format_indicator: props.payloadFormatIndicator,
    content_type: props.contentType,
    qos: msg.qos,
    retain: msg.retain,
    client_id: info.clientId || msg.origin,
    username: info.username ?? null,
    node_id: nodeId,
    kind: info.kind,
    publish_time: new Date(at).toISOString(),
    user_properties: props.userProperties,
  };
}

/**
 * Row ids: node id, a start-up stamp with a random part, and a sequence
 * number. Unique for every message logged by this process and by any earlier
 * or later run of the node (or a second sink started in the same millisecond),
 * and fixed when the row is made, so every retry and every replay from the
 * spill file sends the same insertId and BigQuery drops the duplicates.
 */
export class RowIds {
  private seq = 0;
  private readonly prefix: string;

  constructor(nodeId: string, startedAt = Date.now()) {
    this.prefix = `${nodeId}-${startedAt.toString(36)}${crypto.randomUUID().slice(0, 6)}-`;
  }

  next(): string {
    return this.prefix + (this.seq++).toString(36);
  }
}
