/**
 * How fast one connection may send (limits.max_publish_rate, max_read_rate): two token buckets,
 * PUBLISH packets and bytes, refilled from the clock at each read. A connection that used more
 * than its share is not read until the keep-alive sweep finds its debt paid: the client is slowed,
 * never refused, and what it sends meanwhile waits in its socket (TCP flow control), not in the
 * broker. The PUBLISH bucket is checked packet by packet: the rest of a read behind the packet
 * that emptied it waits here (`deferred`, at most one read's bytes) and is handled first when
 * the debt is paid. Bytes are taken a read at a time, so one read (up to 64 KiB) may pass the
 * byte bucket at once; the debt it leaves is paid before the next, which keeps the average.
 */
import { getLogger } from "@logtape/logtape";
import type { Metrics } from "../ops/metrics.ts";

const log = getLogger(["mcloudtt", "connection"]);

/** The per-connection rates, 0 for no bound. */
export interface RateLimits {
  /** PUBLISH packets per second (limits.max_publish_rate). */
  publishesPerSecond: number;
  /** Bytes read per second (limits.max_read_rate). */
  bytesPerSecond: number;
  /**
   * How long a client may stay over its rate before it is disconnected (0x96), 0 for ever
   * (limits.max_throttled_seconds, in ms).
   */
  maxThrottledMs: number;
}

/** What the sweep finds (`RateLimit.sweep`). */
export const Swept = { Reading: 0, Held: 1, Released: 2, TooLong: 3 } as const;

/** True when `r` bounds anything (a connection then gets a RateLimit at CONNACK). */
export function rateLimited(r: RateLimits): boolean {
  return r.publishesPerSecond > 0 || r.bytesPerSecond > 0;
}

/** One connection's buckets. */
export class RateLimit {
  /** PUBLISH packets it may still send now: negative is a debt; Infinity when unbounded. */
  private publishes: number;
  private bytes: number;
  private readonly publishCap: number;
  private readonly byteCap: number;
  private at: number;
  /** Reading is stopped here until the debt is paid (see `release`). */
  held = false;
  /** Held at least once: the log line and mcloudtt_clients_throttled_total count it once. */
  private before = false;
  /**
   * Since when the client has been over its rate (ms), -1 when it is not: from a hold until a
   * sweep finds it not held. A client that keeps sending faster than its rate is held again
   * soon after each release (what it sent waits in its socket), so every sweep finds it held.
   */
  private overSince = -1;
  /** Bytes read but not framed yet, behind the PUBLISH that emptied the bucket: `[0, kept)`. */
  private deferred: Uint8Array | null = null;
  private kept = 0;

  /**
   * `burstMs`: the longest a connection may go unread while held (the sweep interval): a
   * bucket holds at least that long's worth, or a second's, so pausing costs no throughput.
   */
  constructor(
    private readonly r: RateLimits,
    burstMs: number,
    now: number,
    private readonly metrics: Metrics,
  ) {
    const window = Math.max(1000, burstMs) / 1000;
    this.publishCap = r.publishesPerSecond > 0 ? r.publishesPerSecond * window : Infinity;
    this.byteCap = r.bytesPerSecond > 0 ? r.bytesPerSecond * window : Infinity;
    this.publishes = this.publishCap;
    this.bytes = this.byteCap;
    this.at = now;
  }

  /** `length` bytes were read at `now`: refills both buckets, then takes the bytes. */
  read(length: number, now: number): void {
    this.refill(now);
    this.bytes -= length;
  }

  /** A PUBLISH packet was read (after the `read` of its bytes). */
  published(): void {
    this.publishes--;
  }

  /** False once PUBLISH packets are in debt: the packets behind it wait (`defer`). */
  get mayGoOn(): boolean {
    return this.publishes >= 0;
  }

  /** True while bytes wait (`defer`): what is read meanwhile goes behind them. */
  get waiting(): boolean {
    return this.deferred !== null;
  }

  /**
   * Keeps `chunk[from, to)` behind what is deferred already, to be framed once released. The
   * buffer grows by doubling: a transport that hands over many small messages while it stops
   * (WebSocket frames of one read) costs a copy of each, not of all before it each time.
   */
  defer(chunk: Uint8Array, from: number, to: number): void {
    const n = to - from;
    let d = this.deferred;
    if (d === null || d.length - this.kept < n) {
      const grown = new Uint8Array(Math.max(this.kept + n, d === null ? 0 : 2 * d.length));
      if (d !== null) grown.set(d.subarray(0, this.kept));
      this.deferred = d = grown;
    }
    d.set(chunk.subarray(from, to), this.kept);
    this.kept += n;
  }

  /** What was deferred, handed over once (null when nothing was). */
  takeDeferred(): Uint8Array | null {
    const d = this.deferred;
    if (d === null) return null;
    const kept = this.kept;
    this.deferred = null;
    this.kept = 0;
    return kept === d.length ? d : d.subarray(0, kept);
  }

  /**
   * True when a bucket just went into debt and reading must stop (sets `held`); the client's
   * first time is logged.
   */
  exhausted(clientId: string, address: string, now: number): boolean {
    if (this.held || (this.publishes >= 0 && this.bytes >= 0)) return false;
    this.held = true;
    if (this.overSince < 0) this.overSince = now;
    this.metrics.clientsThrottled++;
    if (!this.before) {
      this.before = true;
      this.metrics.clientsThrottledTotal++;
      log.info("client {client_id} ({remote_address}) sends faster than {limit}: slowed to it", {
        client_id: clientId,
        remote_address: address,
        limit: this.publishes < 0
          ? `limits.max_publish_rate (${this.r.publishesPerSecond}/s)`
          : `limits.max_read_rate (${this.r.bytesPerSecond} B/s)`,
      });
    }
    return true;
  }

  /**
   * The keep-alive sweep: whether a held client's debt is paid (Released: read it again), and
   * whether it has been over its rate for longer than limits.max_throttled_seconds (TooLong).
   */
  sweep(now: number): number {
    if (!this.held) {
      this.overSince = -1;
      return Swept.Reading;
    }
    if (this.r.maxThrottledMs > 0 && now - this.overSince > this.r.maxThrottledMs) {
      return Swept.TooLong;
    }
    this.refill(now);
    if (this.publishes < 0 || this.bytes < 0) return Swept.Held;
    this.unhold();
    return Swept.Released;
  }

  /** The connection closed. */
  closed(): void {
    if (this.held) this.unhold();
    this.deferred = null;
    this.kept = 0;
  }

  private unhold(): void {
    this.held = false;
    this.metrics.clientsThrottled--;
  }

  private refill(now: number): void {
    const ms = now - this.at;
    if (ms <= 0) return;
    this.at = now;
    const r = this.r;
    if (this.publishes < this.publishCap) {
      this.publishes = Math.min(this.publishCap, this.publishes + ms * r.publishesPerSecond / 1000);
    }
    if (this.bytes < this.byteCap) {
      this.bytes = Math.min(this.byteCap, this.bytes + ms * r.bytesPerSecond / 1000);
    }
  }
}
