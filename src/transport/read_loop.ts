/**
 * Read buffers sized by traffic. Memory per idle client matters at 10k+ clients, and an idle
 * connection still needs a buffer for its pending read (Deno reads into a caller's buffer): so
 * idle and slow connections read into a small slot of a shared slab, which costs a view and the
 * slot instead of an ArrayBuffer with its own backing store (measured: ~0.4 kB less per
 * connection, see tests/bench/idle_cost.ts). Slots never overlap, so reads pending on many
 * connections at once are safe. A read that fills its buffer moves the connection to a buffer
 * of its own that grows, so a busy connection picks up many packets per read; a read that fits
 * a slot moves it back.
 */

/** Bytes a slot holds: one small packet (a PINGREQ, a short PUBLISH, most CONNECTs). */
export const SLOT_SIZE = 128;
const SLOTS_PER_SLAB = 512;
/** The first buffer of its own a connection gets once a read fills its slot. */
const OWN_FIRST = 1024;
const OWN_MAX = 16 * 1024;

/** A block of slots; `free` holds the byte offsets not handed out. */
class Slab {
  readonly bytes = new Uint8Array(SLOT_SIZE * SLOTS_PER_SLAB);
  readonly free: number[] = [];
  constructor() {
    for (let i = SLOTS_PER_SLAB - 1; i >= 0; i--) this.free.push(i * SLOT_SIZE);
  }
}

/** Slabs with at least one free slot; the last one is used first. */
const open: Slab[] = [];
/** Slots handed out, for tests and metrics. */
let slotsInUse = 0;

function takeSlot(): { slab: Slab; view: Uint8Array } {
  let slab = open[open.length - 1];
  if (slab === undefined) open.push(slab = new Slab());
  const off = slab.free.pop()!;
  if (slab.free.length === 0) open.pop();
  slotsInUse++;
  return { slab, view: slab.bytes.subarray(off, off + SLOT_SIZE) };
}

function releaseSlot(slab: Slab, view: Uint8Array): void {
  slotsInUse--;
  slab.free.push(view.byteOffset);
  if (slab.free.length === 1) open.push(slab);
  else if (slab.free.length === SLOTS_PER_SLAB && open.length > 1) {
    // An empty slab is given back while another has room: a burst of connections leaves no
    // slabs behind once it is gone.
    open.splice(open.indexOf(slab), 1);
  }
}

/** Read slots currently handed out (slabs are shared by all connections of the process). */
export function readSlotsInUse(): number {
  return slotsInUse;
}

/**
 * The read buffer of one connection: a slot while reads are small, else a buffer of its own.
 * Call `afterRead(n)` after each read of `n` bytes into `bytes`, and `releaseBuffer()` once no
 * read is pending any more. Transports extend it (one object per connection, not two). A read
 * is handed on as `bytes` and its length, not as a view: a view cached per connection cost
 * ~100 B per idle connection, and one made per read is an allocation per read.
 */
export class ReadBuffer {
  /** Where the next read goes. */
  bytes: Uint8Array;
  private slab: Slab | null;

  constructor() {
    const s = takeSlot();
    this.slab = s.slab;
    this.bytes = s.view;
  }

  /** Picks the buffer for the next read after one of `n` bytes. */
  afterRead(n: number): void {
    const size = this.bytes.length;
    if (n === size) {
      if (size >= OWN_MAX) return;
      this.releaseBuffer();
      this.bytes = new Uint8Array(size === SLOT_SIZE ? OWN_FIRST : size * 2);
    } else if (this.slab === null) {
      if (n <= SLOT_SIZE) {
        const s = takeSlot();
        this.slab = s.slab;
        this.bytes = s.view;
      } else if (n < size >> 3 && size > OWN_FIRST) {
        this.bytes = new Uint8Array(size >> 1);
      }
    }
  }

  /** Gives the slot back (idempotent); the buffer must not be read into afterwards. */
  releaseBuffer(): void {
    if (this.slab === null) return;
    releaseSlot(this.slab, this.bytes);
    this.slab = null;
  }
}
