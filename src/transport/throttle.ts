/**
 * When a transport stops reading a connection: while the broker's handler holds its read gate
 * shut (backpressure), and for one event-loop turn after a large read. The runtime reads a
 * flooding peer again and again within one turn (Deno's TLS socket, and its native TCP handles
 * up to 32 times), and without a pause the loop does not get to other connections' writes: one
 * publisher flooding QoS 0 starved its subscriber's writes (issue 14, over TLS: 10k-80k of ~1M
 * msg/s delivered, the rest dropped as congested). Small reads never pause. One rule for every
 * transport that reads through callbacks (tls_read.ts, tcp_native.ts); how a connection stops
 * and starts reading is its own.
 */
import type { ConnectionHandler } from "./types.ts";

/**
 * A read at least this large means the peer sends flat out (a runtime read takes up to 64 KiB;
 * a client at a modest rate reads far less per turn).
 */
export const FLOOD_CHUNK = 16 * 1024;

/** A connection's reading, as pausing needs it. */
export interface Throttled {
  readonly handler: ConnectionHandler;
  /** Set while reading is stopped here. */
  paused: boolean;
  /** Stops reading the connection. */
  pauseReading(): void;
  /** Reads it again (a connection that ended meanwhile stays stopped). */
  resumeReading(): void;
}

/**
 * After a read of `n` bytes: pauses while the gate is shut, or for a turn after a read of at
 * least `flood` bytes.
 */
export function throttle(r: Throttled, n: number, flood = FLOOD_CHUNK): void {
  if (r.paused) return;
  const gate = r.handler.readGate;
  if (gate !== null) {
    r.paused = true;
    r.pauseReading();
    gate.then(() => resume(r));
  } else if (n >= flood) {
    r.paused = true;
    r.pauseReading();
    setImmediate(resume, r);
  }
}

function resume(r: Throttled): void {
  const gate = r.handler.readGate;
  if (gate !== null) {
    gate.then(() => resume(r));
    return;
  }
  r.paused = false;
  r.resumeReading();
}
