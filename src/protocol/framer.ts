/**
 * Splits a byte stream into MQTT packets. Whole packets inside one read are
 * handed over in place (no copy); only a packet that spans reads is buffered,
 * and its size is checked against the maximum before any byte of it is kept.
 */
import { MalformedPacketError, MqttError, ReasonCode } from "./reason_codes.ts";

/**
 * Receives packets. An object with a method rather than a function: the
 * connection is its own handler instead of holding a bound function (48 B per
 * idle connection).
 */
export interface PacketHandler {
  /**
   * One packet: first header byte, and its body as `buf[start, end)`. The
   * bytes are only valid during the call. Returning false stops framing: the
   * connection is closing, or is not to be read for now (see `Framer.feed`).
   */
  handlePacket(header: number, buf: Uint8Array, start: number, end: number): boolean;
}

export class Framer {
  /** Header bytes of a packet whose length is not yet known (at most 5). */
  private head: number[] | null = null;
  /** A packet being assembled across reads. */
  private partial: Uint8Array | null = null;
  private have = 0;
  private bodyStart = 0;
  /**
   * True during the handler call for a packet that spanned reads: its buffer
   * was made for it alone and is never reused, so views into it may be kept
   * (a large payload is then shared, not copied again).
   */
  dedicated = false;

  constructor(public maxPacketSize: number) {}

  /** True when no partial packet is held. */
  get idle(): boolean {
    return this.head === null && this.partial === null;
  }

  /**
   * Feeds `chunk[0, n)`; calls `handler` for each complete packet. Returns `n`, or where the
   * bytes not framed yet start when the handler returned false. Throws MqttError (0x81
   * malformed, 0x95 too large) on framing errors.
   */
  feed(chunk: Uint8Array, handler: PacketHandler, n = chunk.length): number {
    let off = 0;
    const head = this.head;
    if (head !== null) {
      // Complete the fixed header one byte at a time; it is at most 5 bytes.
      while (off < n && this.partial === null) {
        head.push(chunk[off++]);
        const total = this.headerTotal(head, 0, head.length);
        if (total > 0) {
          this.partial = new Uint8Array(total);
          this.partial.set(head);
          this.have = head.length;
          this.bodyStart = head.length;
          this.head = null;
        }
      }
      if (this.partial === null) return n;
    }
    if (this.partial !== null) {
      const p = this.partial;
      const take = Math.min(p.length - this.have, n - off);
      p.set(chunk.subarray(off, off + take), this.have);
      this.have += take;
      off += take;
      if (this.have < p.length) return n;
      this.partial = null;
      this.dedicated = true;
      try {
        if (!handler.handlePacket(p[0], p, this.bodyStart, p.length)) return off;
      } finally {
        this.dedicated = false;
      }
    }
    while (off < n) {
      const avail = n - off;
      if (avail < 2) {
        this.head = [chunk[off]];
        return n;
      }
      // Fast path: remaining length in one byte.
      let total: number;
      let hdr: number;
      const b1 = chunk[off + 1];
      if (b1 < 0x80) {
        hdr = 2;
        total = 2 + b1;
        if (total > this.maxPacketSize) this.tooLarge(total);
      } else {
        total = this.headerTotal(chunk, off, n);
        if (total === 0) {
          this.head = Array.from(chunk.subarray(off, n));
          return n;
        }
        hdr = this.lastHeaderLength;
      }
      if (total <= avail) {
        if (!handler.handlePacket(chunk[off], chunk, off + hdr, off + total)) return off + total;
        off += total;
      } else {
        const p = new Uint8Array(total);
        p.set(chunk.subarray(off, n));
        this.partial = p;
        this.have = avail;
        this.bodyStart = hdr;
        return n;
      }
    }
    return n;
  }

  private lastHeaderLength = 0;

  /**
   * Total packet size from a fixed header at `buf[start, end)`, or 0 when
   * the header is still incomplete.
   */
  private headerTotal(buf: ArrayLike<number>, start: number, end: number): number {
    let value = 0;
    let mul = 1;
    for (let i = 1; i <= 4; i++) {
      if (start + i >= end) return 0;
      const b = buf[start + i];
      value += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) {
        this.lastHeaderLength = 1 + i;
        const total = 1 + i + value;
        if (total > this.maxPacketSize) this.tooLarge(total);
        return total;
      }
      mul *= 128;
    }
    throw new MalformedPacketError("remaining length longer than 4 bytes");
  }

  private tooLarge(total: number): never {
    throw new MqttError(
      ReasonCode.PacketTooLarge,
      `packet of ${total} bytes exceeds the maximum packet size ${this.maxPacketSize}`,
    );
  }
}
