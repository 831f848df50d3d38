/**
 * A session's parts as the Redis store lays them out: numbered queue and in-flight entries, and
 * the whole session read back from what the LOAD script returns (an unreadable part is logged
 * and skipped, never a crash).
 */
import { Buffer } from "node:buffer";
import { getLogger } from "@logtape/logtape";
import type { SessionState, StoredDelivery, StoredInflight, StoredSubscription } from "./types.ts";
import {
  CorruptValueError,
  decodeDelivery,
  decodeInflight,
  decodeSubscription,
  decodeWill,
  encodeDeliveryEntry,
  encodeInflightEntry,
} from "./redis_codec.ts";
import { KEY_NAMES, keyType } from "./redis_keys.ts";

const log = getLogger(["mcloudtt", "store", "redis"]);

/** A Buffer view of `b` (no copy), as ioredis takes binary arguments. */
export function buf(b: Uint8Array): Buffer {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

/** A reply value as text (ioredis returns Buffers from `callBuffer`). */
export function str(v: unknown): string {
  if (v instanceof Uint8Array) return Buffer.from(v).toString("utf8");
  return String(v);
}

/** A deadline as a script argument: "inf" for none. */
export function expiresAtArg(ms: number): string {
  return ms === Infinity ? "inf" : String(ms);
}

/** A queue list entry: "<seq>|" and the encoded delivery. */
export function queueEntry(seq: number, item: StoredDelivery): Buffer {
  return buf(encodeDeliveryEntry(`${seq}|`, item));
}

/** An in-flight list entry: "<packet id>|" and the encoded delivery. */
export function inflightEntry(f: StoredInflight): Buffer {
  return buf(encodeInflightEntry(`${f.packetId}|`, f));
}

/** Splits "<number>|<value>". */
export function numbered(entry: Buffer): [number, Buffer] {
  const bar = entry.indexOf(0x7c);
  const n = bar > 0 ? Number(entry.subarray(0, bar).toString("latin1")) : NaN;
  if (!Number.isFinite(n)) throw new CorruptValueError("entry does not start with its number");
  return [n, entry.subarray(bar + 1)];
}

/** Logs the session keys a script found of the wrong type (and deleted). */
export function logBad(clientId: string, bad: readonly number[]): void {
  for (const k of bad) {
    log.warn("skipped the {key} of session {clientId}: not a Redis {type}", {
      key: KEY_NAMES[Number(k) - 1],
      clientId,
      type: keyType(Number(k)),
    });
  }
}

/** A session from the values the LOAD script returned; null when its meta is unreadable. */
export function decodeSession(clientId: string, data: Buffer[][]): SessionState | null {
  const [metaPairs, subs, queue, inflightEntries, qos2, rc] = data;
  const meta = new Map<string, Buffer>();
  for (let i = 0; i + 1 < metaPairs.length; i += 2) meta.set(str(metaPairs[i]), metaPairs[i + 1]);
  const field = (name: string): string => {
    const v = meta.get(name);
    if (v === undefined) throw new CorruptValueError(`meta has no ${name}`);
    return str(v);
  };
  const num = (name: string): number => {
    const v = field(name);
    const n = v === "inf" ? Infinity : Number(v);
    if (v === "" || Number.isNaN(n)) throw new CorruptValueError(`meta ${name} is not a number`);
    return n;
  };
  let base;
  try {
    if (field("v") !== "1") throw new CorruptValueError(`unknown format version ${field("v")}`);
    if (field("cid") !== clientId) throw new CorruptValueError("meta names another client id");
    const will = meta.get("will");
    // Written by an older version as one field (ids never contain a space, see MessageIds).
    const older = meta.get("rc");
    const recent = older === undefined || older.length === 0 ? [] : str(older).split(" ");
    for (const id of rc ?? []) recent.push(str(id));
    base = {
      clientId,
      owner: meta.has("o") ? field("o") : null,
      expiryInterval: num("ei"),
      expiresAt: num("ea"),
      will: will === undefined ? null : decodeWill(will),
      willAt: num("wa"),
      // Only when there are some: a session outside a cluster's moves has none.
      ...(recent.length === 0 ? {} : { recent }),
    };
  } catch (e) {
    log.warn("skipped session {clientId}: unreadable meta ({error})", {
      clientId,
      error: e instanceof Error ? e.message : String(e),
    });
    return null;
  }
  const skip = (what: string, e: unknown) =>
    log.warn("skipped {what} of session {clientId}: {error}", {
      what,
      clientId,
      error: e instanceof Error ? e.message : String(e),
    });
  const subscriptions: StoredSubscription[] = [];
  for (const sub of subs) {
    try {
      subscriptions.push(decodeSubscription(str(sub)));
    } catch (e) {
      skip(`subscription ${str(sub)}`, e);
    }
  }
  const items: (StoredDelivery & { seq: number })[] = [];
  for (const entry of queue) {
    try {
      const [seq, value] = numbered(entry);
      items.push({ ...decodeDelivery(value), seq });
    } catch (e) {
      skip("a queued message", e);
    }
  }
  const inflight: StoredInflight[] = [];
  for (const entry of inflightEntries) {
    try {
      const [packetId, value] = numbered(entry);
      const f = decodeInflight(value);
      if (f.packetId !== packetId) throw new CorruptValueError("packet id does not match");
      inflight.push(f);
    } catch (e) {
      skip("an inflight message", e);
    }
  }
  const incomingQos2: number[] = [];
  for (const p of qos2) {
    const n = Number(str(p));
    if (Number.isInteger(n) && n >= 1 && n <= 0xffff) incomingQos2.push(n);
    else skip("an incoming QoS 2 id", new CorruptValueError(str(p)));
  }
  return { ...base, subscriptions, queue: items, inflight, incomingQos2 };
}
