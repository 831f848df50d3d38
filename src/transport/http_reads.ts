/**
 * node:http's parser runs over a whole read and makes a request and its response for every
 * request in it before anything can stop it: pausing the socket stops the next read, not this
 * one, and a handler that closes the connection runs after all of them were made. A peer
 * pipelining requests it never reads so made Deno's node:http hold ~2,400 requests and their
 * answers per 64 KiB read until its deadline: 200 sockets of 66 KB sent to the operations
 * endpoint grew RSS by 966 MiB, 200 x 600 KB to the WebSocket port by up to 2.8 GiB, before any
 * authentication.
 *
 * Neither server keeps a connection for a second request (they answer with Connection: close),
 * so the parser is given the bytes of one request head and nothing after it: the rest of that
 * read and every later read are dropped (a request body too: neither server takes one). A head
 * that the parser turns into an upgrade hands the socket over: the filter steps aside
 * (`releaseReads`) and what followed the head goes to the new owner.
 *
 * This reads node:http's internals: its parser consumes a plain socket's handle directly (no
 * 'data' events) unless the handle is marked consumed before its connection listener runs, and
 * its 'data' listener is the one on the socket after that listener. Where they are not as
 * expected, nothing is changed.
 */
import type { Buffer } from "node:buffer";
import type { Server } from "node:net";
import type { Duplex } from "node:stream";

/** The filter on a socket, so that an upgrade handler can take it off (`releaseReads`). */
const FILTER = Symbol("mcloudtt.oneRequestHead");

type Filtered = Duplex & {
  [FILTER]?: (chunk: Buffer) => void;
  _handle?: { isStreamBase?: boolean; _consumed?: boolean } | null;
};

/**
 * Follows "\r\n\r\n", the end of a request head, across reads: `matched` is how much of it the
 * bytes before this read ended with. Returns the index just past the end in `chunk`, or -1 and
 * how much is matched at the end of `chunk`.
 */
export function headEnd(chunk: Uint8Array, matched: number): { end: number; matched: number } {
  let m = matched;
  for (let i = 0; i < chunk.length; i++) {
    const b = chunk[i];
    if (b === 0x0d) m = m === 2 ? 3 : 1;
    else if (b === 0x0a && (m === 1 || m === 3)) {
      if (m === 3) return { end: i + 1, matched: 0 };
      m = 2;
    } else m = 0;
  }
  return { end: -1, matched: m };
}

/**
 * Gives `server`'s HTTP parser the bytes of one request head per connection (`event`: where
 * node:http attaches its parser: "connection" for node:http, "secureConnection" for
 * node:https). The server must answer with Connection: close.
 */
export function oneRequestHead(server: Server, event: "connection" | "secureConnection"): void {
  // Before node:http's own listener: its parser must read through 'data' events.
  server.prependListener(event, (socket: Filtered) => {
    const handle = socket._handle;
    if (handle?.isStreamBase === true && handle._consumed !== true) handle._consumed = true;
  });
  // After it: its 'data' listener is fed through the filter.
  server.on(event, (socket: Filtered) => {
    const listeners = socket.listeners("data");
    if (listeners.length !== 1) return;
    const parse = listeners[0] as (this: Duplex, chunk: Buffer) => void;
    let matched = 0;
    let done = false;
    const filter = (chunk: Buffer) => {
      if (done) return;
      const h = headEnd(chunk, matched);
      matched = h.matched;
      if (h.end < 0) {
        parse.call(socket, chunk);
        return;
      }
      done = true;
      parse.call(socket, h.end === chunk.length ? chunk : chunk.subarray(0, h.end));
      // Upgraded by that head (releaseReads ran): the rest is the new owner's.
      if (socket[FILTER] === undefined && h.end < chunk.length && !socket.destroyed) {
        socket.emit("data", chunk.subarray(h.end));
      }
    };
    socket.removeListener("data", parse);
    socket.on("data", filter);
    socket[FILTER] = filter;
  });
}

/** Takes the filter off `socket`: it leaves node:http (a WebSocket upgrade). */
export function releaseReads(socket: Duplex): void {
  const s = socket as Filtered;
  const filter = s[FILTER];
  if (filter === undefined) return;
  s[FILTER] = undefined;
  socket.removeListener("data", filter);
}
