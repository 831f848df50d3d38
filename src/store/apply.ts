/**
 * The meaning of each `StoreOp`, applied to plain maps. The memory store uses
 * it directly; other stores can use it to check themselves (contract test).
 */
import { type SessionState, type StoredMessage, type StoreOp, topicBetween } from "./types.ts";

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** Default of `[cluster] dedupe_window`: how many recent ids a session keeps. */
export const DEFAULT_DEDUPE_WINDOW = 256;

/**
 * Applies one op; ops on a session that does not exist are ignored. An
 * acknowledged id joins the session's recent ids, the last `dedupeWindow` kept.
 */
export function applyOp(
  sessions: Map<string, SessionState>,
  retained: Map<string, StoredMessage>,
  op: StoreOp,
  dedupeWindow = DEFAULT_DEDUPE_WINDOW,
): void {
  switch (op.type) {
    case "session":
      sessions.set(op.state.clientId, op.state);
      return;
    case "session-delete":
      sessions.delete(op.clientId);
      return;
    case "retain":
      retained.set(op.msg.topic, op.msg);
      return;
    case "retain-delete":
      retained.delete(op.topic);
      return;
    case "retain-delete-range":
      for (const topic of retained.keys()) {
        if (topicBetween(topic, op.after, op.before)) retained.delete(topic);
      }
      return;
  }
  const s = sessions.get(op.clientId);
  if (s === undefined) return;
  // A changed session is a new object: states handed to `write` and returned by a load are
  // snapshots, never edited in place (the core may still hold them).
  const next: Mutable<SessionState> = { ...s };
  switch (op.type) {
    case "enqueue":
      next.queue = [...s.queue, { ...op.item, seq: op.seq }];
      break;
    case "dequeue":
      next.queue = s.queue.filter((q) => q.seq !== op.seq);
      break;
    case "inflight":
      next.inflight = [...s.inflight.filter((f) => f.packetId !== op.item.packetId), op.item];
      break;
    case "inflight-delete":
      next.inflight = s.inflight.filter((f) => f.packetId !== op.packetId);
      if (op.id !== undefined && op.id !== "" && !(s.recent ?? []).includes(op.id)) {
        next.recent = [...(s.recent ?? []), op.id].slice(-dedupeWindow);
      }
      break;
    case "qos2-add":
      if (s.incomingQos2.includes(op.packetId)) return;
      next.incomingQos2 = [...s.incomingQos2, op.packetId];
      break;
    case "qos2-delete":
      next.incomingQos2 = s.incomingQos2.filter((p) => p !== op.packetId);
      break;
    case "subscribe": {
      const at = s.subscriptions.findIndex((x) => x.key === op.sub.key);
      next.subscriptions = at === -1
        ? [...s.subscriptions, op.sub]
        : s.subscriptions.map((x, i) => i === at ? op.sub : x);
      break;
    }
    case "unsubscribe":
      if (!s.subscriptions.some((x) => x.key === op.key)) return;
      next.subscriptions = s.subscriptions.filter((x) => x.key !== op.key);
      break;
  }
  sessions.set(op.clientId, next);
}
