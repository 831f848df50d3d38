/**
 * Keeps a listener accepting after a failed accept. Deno 2.9's libuv emulation
 * (`libs/core/uv_compat/tcp.rs`) stops draining a listener at the first accept
 * that fails (EMFILE when the process is out of file descriptors) without
 * telling JavaScript, and nothing wakes it again: once descriptors were free
 * again the kernel kept queueing connections that were never accepted, on the
 * native TCP listener and on every node:net based one (TLS, WebSocket). Calling
 * `listen()` on the listening handle again marks it ready, and the next event
 * loop turn tries to accept what waits. Done on a timer: the failure is not
 * visible, and on a healthy listener the call finds nothing (one accept that
 * returns EAGAIN per interval).
 */

/** What is needed of a listening handle (node's `TCPWrap`). */
export interface RearmableHandle {
  listen(backlog: number): number;
}

/** How often a listener is nudged: connections that waited out a descriptor shortage wait at most this much longer. */
export const REARM_INTERVAL_MS = 1000;

/** The backlog listeners are created with (node's default, and the native listener's). */
export const LISTEN_BACKLOG = 511;

/**
 * Nudges `handle()` every `everyMs` until the returned function is called; a handle that is
 * gone (null) is skipped. The timer does not keep the process alive.
 */
export function keepAccepting(
  handle: () => RearmableHandle | null | undefined,
  everyMs = REARM_INTERVAL_MS,
): () => void {
  const timer = setInterval(() => {
    try {
      handle()?.listen(LISTEN_BACKLOG);
    } catch {
      // closed meanwhile: the listener's own close stops the timer
    }
  }, everyMs);
  Deno.unrefTimer(timer);
  return () => clearInterval(timer);
}

/** A node:net server's listening handle, where this runtime has one. */
export function nodeServerHandle(server: object): RearmableHandle | null {
  const h = (server as { _handle?: { listen?: unknown } | null })._handle;
  return h && typeof h.listen === "function" ? h as RearmableHandle : null;
}
