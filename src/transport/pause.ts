/**
 * Pausing a node socket so that the peer really waits (backpressure). For a
 * plain socket `pause()` is enough: the stream stops reading the TCP handle
 * once its buffer is full. Deno's node:tls does not pass that on: its TLS
 * handle's readStop() leaves the TCP handle under it reading, and the
 * decrypted bytes pile up in native memory without bound while the JS side
 * is paused (measured: a client flooding a paused TLS socket grew the
 * process by 1 MiB per MiB sent). So the TCP handle is stopped and restarted
 * too, when the runtime exposes it.
 */
import type { Duplex } from "node:stream";

/** The part of a native stream handle that starts and stops reading. */
interface ReadHandle {
  readStart(): unknown;
  readStop(): unknown;
}

function tcpUnderTls(socket: Duplex): ReadHandle | null {
  const handle = (socket as unknown as { _handle?: { _nativeTcpHandle?: ReadHandle } })._handle;
  const tcp = handle?._nativeTcpHandle;
  return tcp !== undefined && typeof tcp.readStop === "function" ? tcp : null;
}

/** Stops reading `socket` (and the TCP handle under a TLS socket). */
export function pauseSocket(socket: Duplex): void {
  socket.pause();
  tcpUnderTls(socket)?.readStop();
}

/** Reads `socket` again after `pauseSocket`. */
export function resumeSocket(socket: Duplex): void {
  if (socket.destroyed) return;
  tcpUnderTls(socket)?.readStart();
  socket.resume();
}

/** Stops reading the TCP handle under a TLS socket that something else (ws) paused. */
export function pauseUnderlying(socket: Duplex): void {
  tcpUnderTls(socket)?.readStop();
}

/** Restarts what `pauseUnderlying` stopped. */
export function resumeUnderlying(socket: Duplex): void {
  if (!socket.destroyed) tcpUnderTls(socket)?.readStart();
}
