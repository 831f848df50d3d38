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

/** The TLS handle's writes, as node's stream calls them. */
interface WriteBufferHandle {
  writeBuffer(req: object, bytes: Uint8Array): number;
  writev?(req: object, chunks: unknown[], allBuffers: boolean): number;
  /** The runtime's `writeBuffer` and `writev`, kept where `writeInPieces` replaced them. */
  [OWN_WRITE]?: (req: object, bytes: Uint8Array) => number;
  [OWN_WRITEV]?: (req: object, chunks: unknown[], allBuffers: boolean) => number;
}

/** Where a handle whose writes go down in pieces keeps the runtime's write methods. */
const OWN_WRITE = Symbol("mcloudtt.ownWriteBuffer");
const OWN_WRITEV = Symbol("mcloudtt.ownWritev");

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

/**
 * Hands `bytes` to the handle's `write` in pieces of at most WRITE_PIECE; returns the first
 * failure's status, else 0.
 */
function writePieces(
  write: (req: object, bytes: Uint8Array) => number,
  handle: WriteBufferHandle,
  req: object,
  bytes: Uint8Array,
): number {
  if (bytes.length <= WRITE_PIECE) return write.call(handle, req, bytes);
  let status = 0;
  for (let off = 0; off < bytes.length && status === 0; off += WRITE_PIECE) {
    status = write.call(handle, req, bytes.subarray(off, off + WRITE_PIECE));
  }
  return status;
}

/** `writeBuffer` of a handle that writes in pieces (shared by all of them: no closure each). */
function piecedWriteBuffer(this: WriteBufferHandle, req: object, bytes: Uint8Array): number {
  return writePieces(this[OWN_WRITE]!, this, req, bytes);
}

/**
 * `writev` of a handle that writes in pieces: node's stream hands a corked write over as
 * several buffers (ws: a frame's header and its payload). A large one is joined and written in
 * pieces; small ones, and ones with strings in them, go to the runtime's `writev` as they are.
 */
function piecedWritev(
  this: WriteBufferHandle,
  req: object,
  chunks: unknown[],
  allBuffers: boolean,
): number {
  const own = this[OWN_WRITEV]!;
  if (!allBuffers) return own.call(this, req, chunks, allBuffers);
  let n = 0;
  for (let i = 0; i < chunks.length; i++) n += (chunks[i] as Uint8Array).length;
  if (n <= WRITE_PIECE) return own.call(this, req, chunks, allBuffers);
  const joined = new Uint8Array(n);
  for (let i = 0, at = 0; i < chunks.length; i++) {
    const c = chunks[i] as Uint8Array;
    joined.set(c, at);
    at += c.length;
  }
  return writePieces(this[OWN_WRITE]!, this, req, joined);
}

/**
 * Makes every write that node's stream hands `socket`'s TLS handle go down in pieces, as
 * `writeTls` does its own: for sockets written through `socket.write` by someone else (the ws
 * library, for secure WebSocket), which got 48 KiB a turn too. Two shared functions set on the
 * handle; the handle calls back the stream's request object once, as for one write. Returns
 * false, changing nothing, where the handle lacks `writeBuffer` and `writev`.
 */
export function writeInPieces(socket: Socket): boolean {
  const handle = (socket as unknown as { _handle?: Partial<WriteBufferHandle> | null })._handle;
  if (
    handle == null || typeof handle.writeBuffer !== "function" ||
    typeof handle.writev !== "function"
  ) {
    return false;
  }
  if (handle[OWN_WRITE] !== undefined) return true;
  handle[OWN_WRITE] = handle.writeBuffer;
  handle[OWN_WRITEV] = handle.writev;
  handle.writeBuffer = piecedWriteBuffer;
  handle.writev = piecedWritev;
  return true;
}

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
  let status: number;
  try {
    status = writePieces(handle[OWN_WRITE] ?? handle.writeBuffer, handle, req, bytes);
  } catch {
    status = -1;
  }
  if (status !== 0) {
    // The handle failed a piece: report it after this returns (a piece it took before calls
    // back later, and finds no callback pending).
    req.pending = null;
    queueMicrotask(() => done(new Error(`TLS write failed (status ${status})`)));
    return;
  }
  directWrites++;
}
