/**
 * Which forwarded messages a node's inbox already brought, by cluster-wide message id
 * (codec.ts `MessageIds`: a process prefix and its counter). Redis may run one XADD twice:
 * ioredis sends the commands in flight again on a new connection, and the first connection's
 * copy may have been executed already (a dropped connection, a command timeout during a pause).
 * The second entry carries the same ids, and a QoS 2 message delivered from both would arrive
 * twice. Per sending process, a window of the last `window` counter values is kept as bits:
 * memory is bounded (window / 8 bytes per process, at most `maxOrigins` processes), and an id
 * older than the window is taken as new (delivered: at least once rather than lost).
 */
import { idOrigin, idSeq } from "./codec.ts";

/** Counter values remembered per sending process: a resent XADD comes within this many. */
export const SEEN_WINDOW = 1 << 17;
/** Sending processes remembered; the least recently heard from is forgotten first. */
export const SEEN_ORIGINS = 128;

class Window {
  /** Highest counter value seen. */
  max = 0;
  readonly bits: Uint32Array;
  constructor(private readonly size: number) {
    this.bits = new Uint32Array(size >>> 5);
  }

  /** True the first time `seq` is offered (or when it is too old to tell). */
  firstTime(seq: number): boolean {
    const size = this.size;
    const bits = this.bits;
    if (seq > this.max) {
      // The positions between the old and the new highest value are reused: clear them.
      if (seq - this.max >= size) bits.fill(0);
      else for (let s = this.max + 1; s < seq; s++) bits[(s % size) >>> 5] &= ~(1 << (s & 31));
      this.max = seq;
      const i = seq % size;
      bits[i >>> 5] |= 1 << (i & 31);
      return true;
    }
    if (this.max - seq >= size) return true;
    const i = seq % size;
    const word = bits[i >>> 5];
    const bit = 1 << (i & 31);
    if ((word & bit) !== 0) return false;
    bits[i >>> 5] = word | bit;
    return true;
  }
}

export class SeenIds {
  private readonly origins = new Map<string, Window>();
  /** The process heard from last: an inbox entry holds one process's messages, so most repeat. */
  private lastOrigin = "";
  private lastWindow: Window | null = null;

  constructor(
    private readonly window = SEEN_WINDOW,
    private readonly maxOrigins = SEEN_ORIGINS,
  ) {
    if (window % 32 !== 0) throw new RangeError("the window is a multiple of 32");
  }

  /** False when `id` came before (within the window); ids `MessageIds` did not make are new. */
  firstTime(id: string): boolean {
    const seq = idSeq(id);
    if (!Number.isSafeInteger(seq) || seq <= 0) return true;
    const origin = idOrigin(id);
    if (origin === this.lastOrigin && this.lastWindow !== null) {
      return this.lastWindow.firstTime(seq);
    }
    const origins = this.origins;
    let w = origins.get(origin);
    if (w === undefined) {
      if (origins.size >= this.maxOrigins) origins.delete(origins.keys().next().value!);
      w = new Window(this.window);
    } else origins.delete(origin);
    // Re-inserted: the map's order is the order processes were last heard from.
    origins.set(origin, w);
    this.lastOrigin = origin;
    this.lastWindow = w;
    return w.firstTime(seq);
  }
}
