/**
 * Writing a node:tls socket for the broker's outbox. node's `socket.write` runs every write
 * through the `Writable` machinery and makes a `WriteWrap` per write: a JS object with a
 * garbage-collected object of the runtime's behind it (Deno's cppgc `AsyncWrap`, freed only by
 * a full collection), plus the stream's own bookkeeping: about 150 B of JS heap per write
 * (issue 14: 1,590 → 1,293 B per QoS 1 message, which takes two writes). The outbox keeps at
 * most one write in flight per connection and does its own buffering and backpressure, so none
 * of that is needed: a write goes straight to the TLS handle's `writeBuffer`, with one request
 * object per connection, reused for every write, that the handle reports completion to
 * (`oncomplete`). These are runtime internals: where they are
 * missing, or while node's stream holds a write of its own, writes go through `socket.write`.
 */
import type { Socket } from "node:net";

/** The TLS handle's write, as node's stream calls it. */
interface WriteBufferHandle {
  writeBuffer(req: WriteRequest, bytes: Uint8Array): number;
}

/** What the handle calls back on: the request object it was given, with `oncomplete`. */
export interface WriteRequest {
  /** Called by the handle as `req.oncomplete(status)` once the write is done. */
  oncomplete(this: WriteRequest, status: number): void;
  /** The outbox's callback of the write in flight, else null. */
  pending: ((r: unknown) => void) | null;
}

/** The request's `oncomplete`, shared by every connection. */
function onDirectWrite(this: WriteRequest, status: number): void {
  const done = this.pending;
  this.pending = null;
  done?.(status === 0 ? null : new Error(`TLS write failed (status ${status})`));
}

function writeBufferHandle(socket: Socket): WriteBufferHandle | null {
  const handle = (socket as unknown as { _handle?: Partial<WriteBufferHandle> | null })._handle;
  return typeof handle?.writeBuffer === "function" ? handle as WriteBufferHandle : null;
}

/**
 * A write larger than this goes to the handle in pieces of this size, all at once. The runtime
 * encrypts at most 48 KiB of one write and sends the rest only when the socket write of that
 * part completes, which is in the next event-loop turn: so a TLS connection received at most
 * 48 KiB a turn however much waited for it. At fan-in (many publishers, one subscriber) turns
 * are long, and the subscriber got one piece a turn while everything else was dropped as
 * congested (issue 14: 331 k of 3.6 M msg/s delivered from 8 publishers over TLS; 2.3 M over
 * TCP). A piece no larger than that limit is encrypted by the call that hands it over, so
 * pieces cannot overtake or overwrite each other, and the handle calls `oncomplete` once, when
 * the socket writes of all of them completed (the request object is the same for every piece).
 * `tests/transport/tls_outbox_test.ts` checks that a large write arrives whole and how many
 * turns it takes.
 */
const WRITE_PIECE = 32 * 1024;

/** Writes made straight to the handle, for tests. */
let directWrites = 0;

/** How many writes went straight to a TLS handle so far. */
export function directTlsWrites(): number {
  return directWrites;
}

/** A fresh request object (the sink carries these two fields itself). */
export function writeRequest(): WriteRequest {
  return { oncomplete: onDirectWrite, pending: null };
}

/**
 * Writes `bytes` to `socket` and calls `done` once, never before this returns: with null once
 * the bytes are written, with an Error if the write failed. `req` is the connection's request
 * object; one write at a time per request.
 */
export function writeTls(
  socket: Socket,
  req: WriteRequest,
  bytes: Uint8Array,
  done: (r: unknown) => void,
): void {
  // The handle reports one write at a time (the runtime keeps a single completion slot).
  if (req.pending !== null) throw new Error("a TLS write is already in flight");
  const handle = socket.writableLength === 0 && !socket.destroyed && !socket.writableEnded
    ? writeBufferHandle(socket)
    : null;
  if (handle === null) {
    socket.write(bytes, done);
    return;
  }
  req.pending = done;
  let status = 0;
  try {
    if (bytes.length <= WRITE_PIECE) status = handle.writeBuffer(req, bytes);
    else {
      for (let off = 0; off < bytes.length && status === 0; off += WRITE_PIECE) {
        status = handle.writeBuffer(req, bytes.subarray(off, off + WRITE_PIECE));
      }
    }
  } catch {
    status = -1;
  }
  if (status !== 0) {
    // The handle took nothing and will not call back: report it after this returns.
    req.pending = null;
    queueMicrotask(() => done(new Error(`TLS write failed (status ${status})`)));
    return;
  }
  directWrites++;
}
