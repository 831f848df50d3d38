/**
 * A table keyed by MQTT packet id (1..65535) for what a session holds per packet id: the
 * messages in flight to its client, the incoming QoS 2 ids not yet released.
 *
 * Why not a Map: entries come and go at the message rate, and a small Map with entries added
 * and deleted that often makes a new hash table every few additions. V8 leaves each replaced
 * table pointing at its successor. A full collection promotes the table in use to the old
 * generation; once that one is replaced, its pointer keeps the next table (and the entries in
 * it, messages with their payload copies) alive through the young-generation collection that
 * should have freed it, so that one is promoted too, and so on until the next full collection
 * ("nepotism"). Under 16 QoS 1 pairs at 10k msg/s (the bench, whose clients acknowledge in
 * batches) that promoted 1.4-1.8 MB per scavenge and the scavenges took 10-18 ms; with this
 * table 4-24 kB, and at most 3.8 ms (issue 14). Here entries live in flat arrays (open
 * addressing, linear probing from the slot given by the id's low bits, deletion by shifting
 * back): adding and removing one allocates nothing, and the arrays are replaced only when the
 * table grows, which depends on how many entries it holds, never on which ids: the incoming
 * QoS 2 ids are the client's choice, and ids that share their low bits must not make a table
 * of two entries grow to 65,536 slots.
 */

/** Smallest table: a client with a handful of messages in flight. */
const MIN_CAPACITY = 16;

export class PacketIdTable<T> {
  /** Entries by slot; undefined when the slot is free. */
  private slots: (T | undefined)[];
  /** The packet id in each slot, 0 when free (0 is never a packet id). */
  private ids: Uint16Array;
  /** When each slot's entry was added (counts up), for iteration in insertion order. */
  private order: Float64Array;
  private mask: number;
  private added = 0;
  /** Entries in the table. */
  size = 0;

  constructor(capacity = MIN_CAPACITY) {
    this.slots = new Array(capacity).fill(undefined);
    this.ids = new Uint16Array(capacity);
    this.order = new Float64Array(capacity);
    this.mask = capacity - 1;
  }

  /** Slots in the table (at least twice the entries). */
  get capacity(): number {
    return this.ids.length;
  }

  has(packetId: number): boolean {
    return this.find(packetId) >= 0;
  }

  get(packetId: number): T | undefined {
    const i = this.find(packetId);
    return i < 0 ? undefined : this.slots[i];
  }

  /**
   * True when `packetId`'s own slot is free, so finding it never takes a second step. A sender
   * that picks its packet ids picks such ones (see `SessionDelivery.allocatePacketId`).
   */
  fits(packetId: number): boolean {
    return this.ids[packetId & this.mask] === 0;
  }

  /** Adds or replaces the entry of `packetId` (replacing keeps its place in the order). */
  set(packetId: number, value: T): void {
    const at = this.find(packetId);
    if (at >= 0) {
      this.slots[at] = value;
      return;
    }
    // Kept at most half full: probes stay short.
    if ((this.size + 1) * 2 > this.ids.length) this.grow();
    this.place(packetId, value, ++this.added);
    this.size++;
  }

  delete(packetId: number): boolean {
    let i = this.find(packetId);
    if (i < 0) return false;
    const { ids, slots, order, mask } = this;
    // Shift back the entries after it that probed past it, so no search stops at the gap.
    for (let j = (i + 1) & mask; ids[j] !== 0; j = (j + 1) & mask) {
      const home = ids[j] & mask;
      // Stays if its home slot lies cyclically in (i, j].
      if (i <= j ? home > i && home <= j : home > i || home <= j) continue;
      ids[i] = ids[j];
      slots[i] = slots[j];
      order[i] = order[j];
      i = j;
    }
    ids[i] = 0;
    slots[i] = undefined;
    this.size--;
    if (this.size === 0) this.added = 0;
    return true;
  }

  /** The packet ids and entries, oldest first: a copy, so the table may change meanwhile. */
  entries(): [number, T][] {
    const at: number[] = [];
    for (let i = 0; i < this.ids.length; i++) if (this.ids[i] !== 0) at.push(i);
    at.sort((a, b) => this.order[a] - this.order[b]);
    return at.map((i) => [this.ids[i], this.slots[i]!]);
  }

  /** Calls `fn` with every entry, in no particular order; allocates nothing. */
  forEach(fn: (entry: T) => void): void {
    const { ids, slots } = this;
    for (let i = 0; i < ids.length; i++) if (ids[i] !== 0) fn(slots[i]!);
  }

  /** The entries, oldest first (a copy). */
  values(): T[] {
    return this.entries().map((e) => e[1]);
  }

  /** The packet ids, oldest first (a copy). */
  keys(): number[] {
    return this.entries().map((e) => e[0]);
  }

  /** The slot holding `packetId`, or -1. */
  private find(packetId: number): number {
    const { ids, mask } = this;
    for (let i = packetId & mask; ids[i] !== 0; i = (i + 1) & mask) {
      if (ids[i] === packetId) return i;
    }
    return -1;
  }

  /** Puts an entry known to be absent into the first free slot from its home. */
  private place(packetId: number, value: T, added: number): void {
    let i = packetId & this.mask;
    while (this.ids[i] !== 0) i = (i + 1) & this.mask;
    this.ids[i] = packetId;
    this.slots[i] = value;
    this.order[i] = added;
  }

  private grow(): void {
    const { ids, slots, order } = this;
    const capacity = ids.length * 2;
    this.slots = new Array(capacity).fill(undefined);
    this.ids = new Uint16Array(capacity);
    this.order = new Float64Array(capacity);
    this.mask = capacity - 1;
    for (let i = 0; i < ids.length; i++) if (ids[i] !== 0) this.place(ids[i], slots[i]!, order[i]);
  }
}
