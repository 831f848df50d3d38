/**
 * What every listener on a node:net server needs, whatever it speaks (MQTT over TLS, WebSocket,
 * the operations endpoint): binding with a failed accept recovered (rearm.ts), the open sockets,
 * and a close that does not wait for ever on a silent peer.
 */
import type { Server, Socket } from "node:net";
import { keepAccepting, nodeServerHandle } from "./rearm.ts";
import type { Acceptor, Admitted } from "./types.ts";

/** How long a closing server lets its sockets end on their own before cutting the rest. */
const CLOSE_GRACE_MS = 1000;

/** How trackSockets admitted a raw socket, kept on it. */
const ADMITTED = Symbol("mcloudtt.admitted");

type Stamped = { [ADMITTED]?: HeldSocket; _parent?: Stamped };

/** A raw socket as the broker admitted it: when, and how to close it. */
class HeldSocket implements Admitted {
  readonly at = Date.now();
  constructor(private readonly socket: Socket) {}

  cut(): void {
    this.socket.destroy();
  }
}

/**
 * How `socket` was admitted at its accept: for a TLS socket, its TCP socket's (node:tls keeps
 * that socket as `_parent`). Undefined for a socket trackSockets did not see.
 */
export function admittedOf(socket: object): Admitted | undefined {
  const s = socket as Stamped;
  return s[ADMITTED] ?? s._parent?.[ADMITTED];
}

/** Milliseconds since `socket` was accepted (0 for a socket trackSockets did not see). */
export function openFor(socket: object): number {
  const a = admittedOf(socket);
  return a === undefined ? 0 : Math.max(0, Date.now() - a.at);
}

/**
 * The raw sockets of `server` that are still open, kept up to date. With an `acceptor` each new
 * socket is first admitted by the broker (counted from accept, before its TLS handshake or
 * WebSocket upgrade, until it closes; closed by the broker to make room while it has not got
 * past CONNECT) or closed at once.
 */
export function trackSockets(server: Server, acceptor?: Acceptor): Set<Socket> {
  const open = new Set<Socket>();
  const admit = acceptor?.admit?.bind(acceptor);
  const released = acceptor?.released?.bind(acceptor);
  server.on("connection", (s: Socket) => {
    if (admit !== undefined) {
      const admitted = new HeldSocket(s);
      if (!admit(true, admitted)) {
        s.destroy();
        return;
      }
      (s as Stamped)[ADMITTED] = admitted;
    }
    open.add(s);
    s.once("close", () => {
      open.delete(s);
      released?.((s as Stamped)[ADMITTED]);
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
