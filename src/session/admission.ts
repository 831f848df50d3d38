/**
 * Sockets admitted at accept, before any CONNECT, TLS handshake or WebSocket upgrade, against
 * `limits.max_connections`: past it a new socket is closed at once, so that sockets that never
 * send CONNECT cannot grow without bound.
 */
import { getLogger } from "@logtape/logtape";
import type { Metrics } from "../ops/metrics.ts";
import { RateLimitedLog } from "../sinks/stats.ts";

const log = getLogger(["mcloudtt", "core"]);

/**
 * `max_connections` and the sockets over it kept long enough to refuse their CONNECT with 0x97
 * (Quota exceeded): 1 % of the limit, at least 16.
 */
export function socketLimit(maxConnections: number): number {
  return maxConnections + Math.max(16, Math.ceil(maxConnections / 100));
}

export class SocketAdmission {
  /**
   * Sockets the listeners may hold at once, before or after CONNECT: `limits.max_connections`
   * and a margin, so that a client over the limit still reads CONNACK 0x97 (refused at CONNECT).
   */
  readonly limit: number;
  private readonly rejectedLog = new RateLimitedLog((m) => log.warn(m));

  constructor(private readonly metrics: Metrics, private readonly maxConnections: number) {
    this.limit = socketLimit(maxConnections);
  }

  /**
   * A listener accepted a socket: false when the broker already holds `limit` sockets and the
   * transport must close this one at once. `held`: a TLS or WebSocket socket, counted until it
   * is released (a plain TCP socket reaches the core's accept() at once and is counted there).
   */
  admit(held: boolean): boolean {
    const m = this.metrics;
    if (m.connectionsByListener.tcp + m.socketsHeld >= this.limit) {
      m.connectionsRejected++;
      this.rejectedLog.note(
        `closed a new socket at accept: ${this.limit} sockets open ` +
          `(limits.max_connections ${this.maxConnections} and room to refuse with a CONNACK)`,
      );
      return false;
    }
    if (held) m.socketsHeld++;
    return true;
  }
}
