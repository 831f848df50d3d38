/**
 * What every listener on a node:net server needs, whatever it speaks (MQTT over TLS, WebSocket,
 * the operations endpoint): binding with a failed accept recovered (rearm.ts), the open sockets,
 * and a close that does not wait for ever on a silent peer.
 */
import type { Server, Socket } from "node:net";
import { keepAccepting, nodeServerHandle } from "./rearm.ts";
import type { Acceptor } from "./types.ts";

/** How long a closing server lets its sockets end on their own before cutting the rest. */
const CLOSE_GRACE_MS = 1000;

/** When trackSockets saw a socket accepted (Date.now()), on the raw socket. */
const ACCEPTED = Symbol("mcloudtt.acceptedAt");

type Stamped = { [ACCEPTED]?: number; _parent?: Stamped };

/**
 * Milliseconds since `socket` was accepted, as trackSockets saw it: for a TLS socket, its TCP
 * socket's accept (node:tls keeps that socket as `_parent`), so a handshake's time counts. 0 for
 * a socket trackSockets did not see.
 */
export function openFor(socket: object): number {
  const s = socket as Stamped;
  const at = s[ACCEPTED] ?? s._parent?.[ACCEPTED];
  return at === undefined ? 0 : Math.max(0, Date.now() - at);
}

/**
 * The raw sockets of `server` that are still open, kept up to date. With an `acceptor` each new
 * socket is first admitted by the broker (counted from accept, before its TLS handshake or
 * WebSocket upgrade, until it closes) or closed at once.
 */
export function trackSockets(server: Server, acceptor?: Acceptor): Set<Socket> {
  const open = new Set<Socket>();
  const admit = acceptor?.admit?.bind(acceptor);
  const released = acceptor?.released?.bind(acceptor);
  server.on("connection", (s: Socket) => {
    if (admit !== undefined && !admit(true)) {
      s.destroy();
      return;
    }
    (s as Stamped)[ACCEPTED] = Date.now();
    open.add(s);
    s.once("close", () => {
      open.delete(s);
      released?.();
    });
  });
  return open;
}

/**
 * Closes `server`. Peers that never reach the core (a TLS handshake or an HTTP request not yet
 * complete) are closed by nothing else, and a silent one would hold close() open: after a grace
 * period they are cut.
 */
export function closeWithGrace(server: Server, open: Set<Socket>): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      for (const s of open) s.destroy();
    }, CLOSE_GRACE_MS);
    server.close(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * Binds `server`; resolves with its address once it listens. Until it closes, it is nudged to
 * accept again after a failed accept (see rearm.ts: otherwise it would stop for good).
 */
export async function listenServer(
  server: Server,
  hostname: string,
  port: number,
): Promise<{ address: string; port: number }> {
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, hostname, () => {
      server.off("error", reject);
      resolve();
    });
  });
  server.once("close", keepAccepting(() => nodeServerHandle(server)));
  return server.address() as { address: string; port: number };
}
