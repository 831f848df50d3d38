/**
 * Sockets admitted at accept, before any CONNECT, TLS handshake or WebSocket upgrade, against
 * `limits.max_connections`: past it the oldest socket that has not got past CONNECT is closed to
 * make room, or, when every socket has, the new one is closed at once. So sockets that never
 * send CONNECT cannot grow without bound, nor keep every client out.
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

/** A socket that has not got past CONNECT: the broker may close it to make room for another. */
export interface Pending {
  /** Closes it at once. */
  cut(): void;
}

/** A TLS or WebSocket socket admitted at its TCP accept, before its handshake or upgrade. */
export interface Admitted extends Pending {
  /** When it was accepted (Date.now()): limits.connect_timeout counts from here. */
  readonly at: number;
}

export class SocketAdmission {
  /**
   * Sockets the listeners may hold at once, before or after CONNECT: `limits.max_connections`
   * and a margin, so that a client over the limit still reads CONNACK 0x97 (refused at CONNECT).
   */
  readonly limit: number;
  /**
   * Sockets not past CONNECT yet, oldest first (a Set keeps insertion order). At the limit the
   * oldest makes room: a peer holding sockets that never authenticate, which took every socket
   * until its connect timeout and kept every client out, now only pushes out its own older
   * ones unless it opens sockets faster than a client completes its handshake and CONNECT.
   */
  private readonly pending = new Set<Pending>();
  private readonly rejectedLog = new RateLimitedLog((m) => log.warn(m));
  private readonly evictedLog = new RateLimitedLog((m) => log.warn(m));

  constructor(private readonly metrics: Metrics, private readonly maxConnections: number) {
    this.limit = socketLimit(maxConnections);
  }

  /**
   * A listener accepted a socket: false when the broker already holds `limit` sockets, all of
   * them past CONNECT, and the transport must close this one at once. `held`: a TLS or
   * WebSocket socket (`admitted` describes it), counted until it is released (a plain TCP
   * socket reaches the core's accept() at once and is counted there).
   */
  admit(held: boolean, admitted?: Admitted): boolean {
    const m = this.metrics;
    if (m.connectionsByListener.tcp + m.socketsHeld >= this.limit && !this.evictOldest()) {
      m.connectionsRejected++;
      this.rejectedLog.note(
        `closed a new socket at accept: ${this.limit} sockets open ` +
          `(limits.max_connections ${this.maxConnections} and room to refuse with a CONNACK)`,
      );
      return false;
    }
    if (held) m.socketsHeld++;
    if (admitted !== undefined) this.pending.add(admitted);
    return true;
  }

  /** A socket not past CONNECT yet that admit() did not record (a plain TCP connection). */
  add(p: Pending): void {
    this.pending.add(p);
  }

  /** `p` got past CONNECT, or closed. */
  settle(p: Pending): void {
    this.pending.delete(p);
  }

  /**
   * Closes the oldest socket not past CONNECT; false when there is none. Its close is counted
   * when the transport reports it, a moment later: until then the new socket is one over.
   */
  private evictOldest(): boolean {
    for (const oldest of this.pending) {
      this.pending.delete(oldest);
      this.metrics.connectionsEvicted++;
      this.evictedLog.note(
        `closed the oldest socket that has not sent an accepted CONNECT to make room for a new ` +
          `one: ${this.limit} sockets open (limits.max_connections ${this.maxConnections} ` +
          `and room to refuse with a CONNACK)`,
      );
      oldest.cut();
      return true;
    }
    return false;
  }
}
