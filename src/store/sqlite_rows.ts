/**
 * The embedded store's values as SQLite rows and back: messages, deliveries, subscriptions
 * (sqlite.ts writes and reads them; column orders match its statements).
 */
import type { SQLInputValue } from "node:sqlite";
import { getLogger } from "@logtape/logtape";
import type { StoredDelivery, StoredMessage, StoredSubscription } from "./types.ts";

/** A row as node:sqlite returns it. */
export type Row = Record<string, SQLInputValue>;

const log = getLogger(["mcloudtt", "store"]);

/** topic, payload, qos, retain, props, expires_at, origin: the column order everywhere. */
export function messageValues(m: StoredMessage): SQLInputValue[] {
  return [m.topic, m.payload, m.qos, m.retain ? 1 : 0, m.props, m.expiresAt, m.origin];
}

/** A message of a row; `id` from its `cid` column, where it has one (the messages table). */
export function readMessage(r: Row, prefix = ""): StoredMessage {
  const props = r[prefix + "props"];
  const cid = r[prefix + "cid"];
  const m: { -readonly [K in keyof StoredMessage]: StoredMessage[K] } = {
    topic: String(r[prefix + "topic"]),
    payload: r[prefix + "payload"] as Uint8Array,
    qos: Number(r[prefix + "qos"]) as 0 | 1 | 2,
    retain: r[prefix + "retain"] === 1,
    props: props === null ? null : props as Uint8Array,
    expiresAt: Number(r[prefix + "expires_at"]),
    origin: String(r[prefix + "origin"]),
  };
  if (typeof cid === "string" && cid !== "") m.id = cid;
  return m;
}

export function deliveryValues(
  clientId: string,
  seq: number,
  msgId: number,
  d: StoredDelivery,
): SQLInputValue[] {
  return [
    clientId,
    seq,
    msgId,
    d.qos,
    d.retain ? 1 : 0,
    d.subIds ? JSON.stringify(d.subIds) : null,
  ];
}

export function readDelivery(r: Row, msg: StoredMessage): StoredDelivery {
  return {
    msg,
    qos: Number(r.d_qos) as 1 | 2,
    retain: r.d_retain === 1,
    subIds: r.sub_ids === null ? null : readSubIds(r),
  };
}

/** Subscription Identifiers of a stored delivery; unreadable ones are dropped (logged), not the message. */
function readSubIds(r: Row): number[] | null {
  try {
    const ids: unknown = JSON.parse(String(r.sub_ids));
    if (Array.isArray(ids) && ids.every((i) => Number.isInteger(i))) return ids;
  } catch {
    // logged below
  }
  log.warn(
    "unreadable subscription identifiers {ids} of a message queued for {clientId}: dropped",
    {
      ids: String(r.sub_ids).slice(0, 100),
      clientId: String(r.client_id),
    },
  );
  return null;
}

/** A session's subscriptions as stored (JSON tuples); throws when they are not that. */
export function readSubscriptions(v: SQLInputValue): StoredSubscription[] {
  const list: unknown = JSON.parse(String(v));
  if (!Array.isArray(list)) throw new Error("not a list");
  return list.map((t: unknown) => {
    if (
      !Array.isArray(t) || t.length !== 6 || typeof t[0] !== "string" || !within(t[1], 2) ||
      !within(t[2], 1) || !within(t[3], 1) || !within(t[4], 2) || !within(t[5], 268435455)
    ) {
      throw new Error(`not a subscription: ${JSON.stringify(t).slice(0, 100)}`);
    }
    return readSubscription(t as SubscriptionTuple);
  });
}

function within(n: unknown, max: number): boolean {
  return typeof n === "number" && Number.isInteger(n) && 0 <= n && n <= max;
}

/** A subscription as a compact JSON tuple: key, qos, noLocal, rap, retainHandling, id. */
type SubscriptionTuple = [string, number, number, number, number, number];

/** key, qos, no_local, retain_as_published, retain_handling, subscription_id. */
export function subscriptionValues(s: StoredSubscription): SQLInputValue[] {
  return [
    s.key,
    s.qos,
    s.noLocal ? 1 : 0,
    s.retainAsPublished ? 1 : 0,
    s.retainHandling,
    s.subscriptionId,
  ];
}

/** A row of the subscriptions table, or null when it holds what no version writes. */
export function subscriptionRow(r: Row): StoredSubscription | null {
  const t = [
    r.key,
    r.qos,
    r.no_local,
    r.retain_as_published,
    r.retain_handling,
    r.subscription_id,
  ].map((v) => typeof v === "bigint" ? Number(v) : v);
  if (
    typeof t[0] !== "string" || !within(t[1], 2) || !within(t[2], 1) || !within(t[3], 1) ||
    !within(t[4], 2) || !within(t[5], 268435455)
  ) return null;
  return readSubscription(t as SubscriptionTuple);
}

function readSubscription(t: SubscriptionTuple): StoredSubscription {
  return {
    key: t[0],
    qos: t[1] as 0 | 1 | 2,
    noLocal: t[2] === 1,
    retainAsPublished: t[3] === 1,
    retainHandling: t[4] as 0 | 1 | 2,
    subscriptionId: t[5],
  };
}
