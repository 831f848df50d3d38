/**
 * A batch of the journal's ops as the Redis store sends it: each session's ops become the
 * arguments of one APPLY script (atomic, in order), and the sessions go a chunk at a time.
 *
 * Every session holds its own copy of what is queued for it (its keys share the session's hash
 * slot), so one message queued for many offline sessions is encoded once per session. Encoded
 * all at once, a batch held sessions x payload: 20 messages of 512 KiB for 200 offline sessions
 * took the broker from 100 to 628 MiB of RSS; a 1 MiB message for 10,000 sessions would need
 * 20 GB. A chunk is encoded and sent once the one before was answered, and holds sessions whose
 * ops add up to `WRITE_CHUNK_BYTES` of payload (at least one session, whatever its size).
 */
import type { Buffer } from "node:buffer";
import type { SessionState, StoreOp } from "./types.ts";
import { buf, expiresAtArg, inflightEntry, queueEntry } from "./redis_session_codec.ts";
import { encodedSize, encodeSubscription, encodeWill } from "./redis_codec.ts";

/** An op of one session (the others are retained messages). */
export type SessionOp = Exclude<
  StoreOp,
  { type: "retain" } | { type: "retain-delete" } | { type: "retain-delete-range" }
>;

/** Payload bytes a chunk of sessions' ops is cut at. */
export const WRITE_CHUNK_BYTES = 16 << 20;

/** What one op adds to its encoded arguments, roughly: its messages' encoded sizes. */
function opBytes(op: SessionOp): number {
  switch (op.type) {
    case "enqueue":
    case "inflight":
      return encodedSize(op.item.msg);
    case "session": {
      const s = op.state;
      let n = 256 + (s.will === null ? 0 : encodedSize(s.will.msg));
      for (const q of s.queue) n += encodedSize(q.msg);
      for (const f of s.inflight) n += encodedSize(f.msg);
      return n;
    }
    default:
      return 64;
  }
}

/** The client ids of `bySession`, in chunks of about `maxBytes` of ops each. */
export function* chunks(
  bySession: ReadonlyMap<string, readonly SessionOp[]>,
  maxBytes = WRITE_CHUNK_BYTES,
): Generator<string[]> {
  let chunk: string[] = [];
  let bytes = 0;
  for (const [cid, ops] of bySession) {
    let n = 0;
    for (const op of ops) n += opBytes(op);
    if (chunk.length > 0 && bytes + n > maxBytes) {
      yield chunk;
      chunk = [];
      bytes = 0;
    }
    chunk.push(cid);
    bytes += n;
  }
  if (chunk.length > 0) yield chunk;
}

/**
 * One session's ops as the APPLY script's arguments, after `head` (node, grace, tombstone, now,
 * window). `indexChange` learns whether the node's index of sessions should list it.
 */
export function applyArgs(
  head: readonly string[],
  ops: readonly SessionOp[],
  indexChange: Map<string, boolean>,
): (string | Buffer)[] {
  // Then how many acknowledged ids the batch adds to the session's window, and whether the
  // session must already exist ("1": a change of nothing is refused as missing).
  const args: (string | Buffer)[] = [...head, "0", "1"];
  let acked = 0;
  for (const op of ops) {
    switch (op.type) {
      case "session":
        sessionArgs(args, op.state);
        indexChange.set(op.state.clientId, true);
        args[6] = "0";
        break;
      case "session-delete":
        args.push("D");
        indexChange.set(op.clientId, false);
        args[6] = "0";
        break;
      case "enqueue":
        args.push("E", queueEntry(op.seq, op.item));
        break;
      case "dequeue":
        args.push("X", `${op.seq}|`);
        break;
      case "inflight":
        args.push("I", `${op.item.packetId}|`, inflightEntry(op.item));
        break;
      case "inflight-delete": {
        const id = op.id ?? "";
        args.push("J", `${op.packetId}|`, id);
        if (id !== "") acked++;
        break;
      }
      case "qos2-add":
        args.push("A", String(op.packetId));
        break;
      case "qos2-delete":
        args.push("B", String(op.packetId));
        break;
      case "subscribe":
        args.push("U", op.sub.key, encodeSubscription(op.sub));
        break;
      case "unsubscribe":
        args.push("R", op.key);
        break;
    }
  }
  args[5] = String(acked);
  return args;
}

/** A whole session ("S" and its parts). */
function sessionArgs(args: (string | Buffer)[], s: SessionState): void {
  args.push(
    "S",
    s.clientId,
    s.owner === null ? "-" : `+${s.owner}`,
    String(s.expiryInterval),
    expiresAtArg(s.expiresAt),
    String(s.willAt),
    String(s.will?.delay ?? 0),
    s.will === null ? "" : buf(encodeWill(s.will)),
    String(s.subscriptions.length),
  );
  for (const sub of s.subscriptions) args.push(encodeSubscription(sub));
  args.push(String(s.queue.length));
  for (const q of s.queue) args.push(queueEntry(q.seq, q));
  args.push(String(s.inflight.length));
  for (const f of s.inflight) args.push(inflightEntry(f));
  args.push(String(s.incomingQos2.length));
  for (const p of s.incomingQos2) args.push(String(p));
  const recent = s.recent ?? [];
  args.push(String(recent.length));
  for (const id of recent) args.push(id);
}
