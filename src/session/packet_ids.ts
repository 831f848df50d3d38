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
 * table 4-24 kB, and at most 3.8 ms (issue 14). Here an entry lives in the slot given by the
 * low bits of its packet id: adding and removing one allocates nothing, and the arrays are
 * replaced only when the table grows.
 */

/** Smallest table: a client with a handful of messages in flight. */
const MIN_CAPACITY = 16;

export class PacketIdTable<T> {
  /** Entries by slot (`packetId & mask`); undefined when the slot is free. */
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

  has(packetId: number): boolean {
    return this.ids[packetId & this.mask] === packetId;
  }

  get(packetId: number): T | undefined {
    const i = packetId & this.mask;
    return this.ids[i] === packetId ? this.slots[i] : undefined;
  }

  /**
   * True when `packetId` can be added without moving anything: its slot is free. A sender
   * that picks its packet ids picks such ones (see `Session.allocatePacketId`).
   */
  fits(packetId: number): boolean {
    return this.ids[packetId & this.mask] === 0;
  }

  /** Adds or replaces the entry of `packetId` (replacing keeps its place in the order). */
  set(packetId: number, value: T): void {
    let i = packetId & this.mask;
    if (this.ids[i] === packetId) {
      this.slots[i] = value;
      return;
    }
    // Kept at most half full, so a sender looking for a free slot finds one in a step or two.
    if (this.ids[i] !== 0 || (this.size + 1) * 2 > this.ids.length) {
      this.grow(packetId);
      i = packetId & this.mask;
    }
    this.ids[i] = packetId;
    this.slots[i] = value;
    this.order[i] = ++this.added;
    this.size++;
  }

  delete(packetId: number): boolean {
    const i = packetId & this.mask;
    if (this.ids[i] !== packetId) return false;
    this.ids[i] = 0;
    this.slots[i] = undefined;
    this.size--;
    if (this.size === 0) this.added = 0;
    return true;
  }

  /** The packet ids and entries, oldest first: a copy, so the table may change meanwhile. */
  entries(): [number, T][] {
    const out: [number, T][] = [];
    const at: number[] = [];
    for (let i = 0; i < this.ids.length; i++) {
      if (this.ids[i] !== 0) {
        out.push([this.ids[i], this.slots[i]!]);
        at.push(this.order[i]);
      }
    }
    const byAge = out.map((_, k) => k).sort((a, b) => at[a] - at[b]);
    return byAge.map((k) => out[k]);
  }

  /** The entries, oldest first (a copy). */
  values(): T[] {
    return this.entries().map((e) => e[1]);
  }

  /** The packet ids, oldest first (a copy). */
  keys(): number[] {
    return this.entries().map((e) => e[0]);
  }

  /** Doubles the table until every entry, and `adding`, has a slot of its own. */
  private grow(adding: number): void {
    const live = this.entries();
    const order = live.map(([id]) => this.order[id & this.mask]);
    let capacity = this.ids.length * 2;
    // 65536 slots always suffice: packet ids are below that.
    while (capacity < 65536 && !distinct(live, adding, capacity - 1)) capacity *= 2;
    this.slots = new Array(capacity).fill(undefined);
    this.ids = new Uint16Array(capacity);
    this.order = new Float64Array(capacity);
    this.mask = capacity - 1;
    for (let k = 0; k < live.length; k++) {
      const [id, value] = live[k];
      const i = id & this.mask;
      this.ids[i] = id;
      this.slots[i] = value;
      this.order[i] = order[k];
    }
  }
}

function distinct(live: readonly [number, unknown][], adding: number, mask: number): boolean {
  const seen = new Set<number>([adding & mask]);
  for (const [id] of live) {
    const i = id & mask;
    if (seen.has(i)) return false;
    seen.add(i);
  }
  return true;
}
