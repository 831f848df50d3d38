/**
 * Outgoing bytes of one connection. Packets are copied into one buffer and
 * written with a single write per connection per event-loop turn: a write
 * costs microseconds of system time, a copy nanoseconds. While a write is in
 * flight new packets collect in a second buffer. `pendingBytes` is what the
 * session checks for backpressure.
 *
 * A large payload (see SHARED_PAYLOAD_MIN in publish.ts) is the exception: it
 * is not copied. Its packet header goes into the buffer, the buffer is cut
 * there, and the payload follows as a segment of its own, the same buffer for
 * every receiver of the message; a flush then writes the segments in order.
 */

/** The write side of a transport, as the core sees it. */
export interface ByteWriter {
  /**
   * Writes `bytes`; resolves when the transport accepted them: with a number
   * of bytes when it took only that many (the outbox writes the rest with
   * another call), else with undefined meaning all of them; rejects with an
   * Error. A socket's own write returns that count, so a sink can hand it
   * over as it is instead of wrapping each write in an async function.
   */
  write(bytes: Uint8Array): Promise<number | void>;
  /**
   * Optional, preferred when present: writes `bytes` and calls `done` once when
   * the transport accepted them, with what `write`'s promise would settle with
   * (a number, or undefined or null for all of them), or with an Error. A
   * transport whose own write takes a callback (a node socket) offers it, so a
   * write costs no promise and no closures; `done` is the same function for
   * every write of a connection. It is never called before this returns. Returns true when
   * the transport took all of `bytes` in the call (then `done` is not called at all): a socket
   * written at once needs no completion to wait for.
   */
  writeThen?(bytes: Uint8Array, done: (r: unknown) => void): boolean | void;
  /**
   * Closes gracefully after the last write (idempotent): half-closes the write
   * side and keeps reading, discarding, for a bounded time, so the peer reads
   * the final packet instead of a reset caused by its own unread input.
   */
  end(): void;
  /** Closes the connection at once (idempotent). */
  close(): void;
}

/** Who an outbox reports to. */
export interface OutboxOwner {
  /** A write completed; the buffer has room again. */
  drained(): void;
  /** The transport failed; the connection is gone. */
  writeFailed(e: unknown): void;
}

/**
 * A connection keeps its own buffer for reuse only between these sizes (a busy
 * one); huge ones waste memory.
 */
const KEEP_MIN = 4 * 1024;
const KEEP_LIMIT = 64 * 1024;
const MIN_CAPACITY = 512;

/**
 * Write buffers below KEEP_MIN are shared between connections: a flush takes
 * one from this pool and the completed write returns it. A connection at a
 * modest rate writes a packet or two per flush; allocating a buffer for each
 * (an ArrayBuffer, its backing store and a view) was a good part of the bytes
 * allocated per message. Idle connections hold none, and the pool is bounded
 * (POOL_MAX x KEEP_MIN at most).
 */
interface PooledBuffer {
  readonly bytes: Uint8Array;
  /**
   * Prefix views handed to the transport, reused when a later write has their
   * length: writes at a modest rate are mostly one packet (a PUBLISH, a
   * PUBACK), so a few lengths recur.
   */
  readonly views: Uint8Array[];
  /** Which view the next new length replaces once VIEWS_KEPT are kept. */
  nextView: number;
}

const VIEWS_KEPT = 4;

const POOL_MAX = 256;
const pool: PooledBuffer[] = [];

function takePooled(n: number): PooledBuffer | null {
  const p = pool.length === 0 ? null : pool[pool.length - 1];
  if (p === null || p.bytes.length < n) return null;
  pool.pop();
  return p;
}

/** A view of `p.bytes[0, len)`, made once per length rather than once per write. */
function prefix(p: PooledBuffer, len: number): Uint8Array {
  const views = p.views;
  for (let i = 0; i < views.length; i++) if (views[i].length === len) return views[i];
  const v = p.bytes.subarray(0, len);
  if (views.length < VIEWS_KEPT) views.push(v);
  else {
    views[p.nextView] = v;
    p.nextView = (p.nextView + 1) % VIEWS_KEPT;
  }
  return v;
}

/** Buffers in the pool (for tests). */
export function pooledBuffers(): number {
  return pool.length;
}

/**
 * Outboxes with something to write, in two classes: `dirty` holds those with a delivery or any
 * other packet, `late` those with only acknowledgements (PUBACK, PUBREC, ...). A flush writes
 * the first class first. A burst of reads brings PUBLISHes from many publishers at once; each
 * write costs a syscall of ~10 µs, so writing every publisher's PUBACK between the deliveries
 * made the last subscriber of a burst wait for twice as many writes as it must (issue 14: the
 * paced latency runs, 16 publishers sending in the same millisecond).
 */
let dirty: Outbox[] = [];
let late: Outbox[] = [];
/** The lists of the next turn: two pairs take turns, so a turn allocates no array. */
let idleList: Outbox[] = [];
let idleLate: Outbox[] = [];
let armed = false;

/** The list `flushDeliveries` swaps in for `dirty` while it writes (no array per call). */
let spareDirty: Outbox[] = [];
/** Past this, flushDeliveries writes an outbox again in the same turn (see there). */
const BATCH_BYTES = 32 * 1024;
/** Counts flushAll's runs, the ends of the turns that had something to write. */
let turn = 0;
/** Set while flushDeliveries runs. */
let delivering = false;

const NOT_QUEUED = 0;
const QUEUED = 1;
const QUEUED_LATE = 2;

function flushAll(): void {
  armed = false;
  turn++;
  // Outboxes scheduled by a flush go to the other lists, flushed in the next turn.
  const list = dirty;
  const acks = late;
  dirty = idleList;
  late = idleLate;
  for (let i = 0; i < list.length; i++) list[i].flush();
  // An outbox that got a delivery after its acknowledgement was moved to `list` and is flushed.
  for (let i = 0; i < acks.length; i++) if (acks[i].queued === QUEUED_LATE) acks[i].flush();
  list.length = 0;
  acks.length = 0;
  idleList = list;
  idleLate = acks;
}

/**
 * Writes the deliveries queued so far now, rather than at the end of the turn. The session calls
 * it after each read. The runtime reads every ready socket of a turn before the turn's microtasks
 * run, so a burst of 16 publishers' PUBLISHes was read whole before the first subscriber's write,
 * where Mosquitto and the bare forwarder write each delivery right after its read (issue 14, the
 * paced latency runs). Once per outbox per turn, and again whenever BATCH_BYTES wait in it: the
 * rest of what a subscriber gets in a turn goes out in one write at its end (flushAll), as before.
 * Measured at full load: a write per publisher's read cost 8 % at fan-in from 8 publishers, and
 * holding more than 32 KiB to the end of the turn cost fan-in from 64 more than half its rate.
 * Acknowledgements stay in `late` for flushAll, as before.
 */
export function flushDeliveries(): void {
  const list = dirty;
  if (list.length === 0 || delivering) return;
  // A call from inside a write's callbacks leaves the rest to the outer call and to flushAll.
  delivering = true;
  // Outboxes scheduled meanwhile, and those already written this turn, wait for flushAll.
  const kept = spareDirty;
  dirty = kept;
  let i = 0;
  try {
    for (; i < list.length; i++) {
      const o = list[i];
      if (o.queued !== QUEUED) continue;
      if (o.flushedTurn === turn && o.pendingBytes < BATCH_BYTES) kept.push(o);
      else {
        o.flushedTurn = turn;
        o.flush();
      }
    }
  } finally {
    // Should an owner's callback throw, what the loop did not reach stays queued.
    for (let j = i + 1; j < list.length; j++) if (list[j].queued === QUEUED) kept.push(list[j]);
    list.length = 0;
    spareDirty = list;
    delivering = false;
  }
}

export class Outbox {
  private buf: Uint8Array | null = null;
  /** Where `buf` came from when it belongs to the shared pool, else null. */
  private pooled: PooledBuffer | null = null;
  private len = 0;
  private spare: Uint8Array | null = null;
  private writing = 0;
  /** The buffer being written (returned to the pool or kept as `spare` when the write completes). */
  private inWrite: Uint8Array | null = null;
  private inWritePooled: PooledBuffer | null = null;
  /** What the current write call was given (the rest, after a partial write). */
  private inWriteData: Uint8Array | null = null;
  /**
   * Settles every write, fulfilled or rejected (`writeSettled` bound): made on
   * the first write and dropped by `trim`, one function per busy connection
   * instead of closures per write. One bound function rather than a pair of
   * closures and their context: ~100 B less per connection until the trim.
   */
  private onWrite: ((r: unknown) => void) | null = null;
  /** Cut buffers and shared payloads, in order, waiting to be written before `buf`. */
  private segs: Uint8Array[] | null = null;
  private segBytes = 0;
  /** NOT_QUEUED, QUEUED (in `dirty`) or QUEUED_LATE (in `late` only). */
  queued = NOT_QUEUED;
  /** The turn in which flushDeliveries last wrote this outbox. */
  flushedTurn = -1;
  private ending = false;
  /** Set once the sink failed or was closed; further pushes are dropped. */
  closed = false;
  /** Bytes written since the last `takeWritten()`; read by the idle sweep and metrics. */
  written = 0;

  constructor(
    private readonly sink: ByteWriter,
    /** Told when writes complete or fail (an object, not two closures per connection). */
    private readonly owner: OutboxOwner,
  ) {}

  /** Bytes accepted but not yet handed to the transport. */
  get pendingBytes(): number {
    return this.len + this.segBytes + this.writing;
  }

  private reserve(n: number, ack = false): Uint8Array {
    let b = this.buf;
    if (b === null) {
      b = this.spare !== null && this.spare.length >= n ? this.spare : null;
      this.spare = null;
      if (b === null) {
        const p = n <= KEEP_MIN ? takePooled(n) : null;
        if (p !== null) {
          this.pooled = p;
          b = p.bytes;
        } else b = new Uint8Array(Math.max(MIN_CAPACITY, n));
      }
      this.buf = b;
    } else if (this.len + n > b.length) {
      let cap = b.length * 2;
      while (cap < this.len + n) cap *= 2;
      const next = new Uint8Array(cap);
      next.set(b.subarray(0, this.len));
      this.buf = b = next;
      // The pooled buffer was only copied from: it can go back at once.
      this.release(this.pooled);
      this.pooled = null;
    }
    this.schedule(ack);
    return b;
  }

  /** Returns a buffer no write holds any more to the pool. */
  private release(p: PooledBuffer | null): void {
    if (p !== null && pool.length < POOL_MAX) pool.push(p);
  }

  /** Queues a whole packet. */
  push(bytes: Uint8Array): void {
    if (this.closed) return;
    const b = this.reserve(bytes.length);
    b.set(bytes, this.len);
    this.len += bytes.length;
  }

  /**
   * Queues `bytes[0, length)`, an encoded PUBLISH, writing `packetId` (and
   * the Topic Alias `alias`, when the form has room for one) into the copy.
   */
  pushPublish(
    bytes: Uint8Array,
    length: number,
    pidOffset: number,
    packetId: number,
    aliasOffset = -1,
    alias = 0,
  ): void {
    if (this.closed) return;
    const b = this.reserve(length);
    if (length === bytes.length) b.set(bytes, this.len);
    else if (length <= 256) {
      // A prefix of a cached form: a loop copies it without making a view to copy from.
      for (let i = 0, o = this.len; i < length; i++) b[o + i] = bytes[i];
    } else b.set(bytes.subarray(0, length), this.len);
    if (pidOffset >= 0) {
      b[this.len + pidOffset] = packetId >> 8;
      b[this.len + pidOffset + 1] = packetId & 0xff;
    }
    if (aliasOffset >= 0) {
      b[this.len + aliasOffset] = alias >> 8;
      b[this.len + aliasOffset + 1] = alias & 0xff;
    }
    this.len += length;
  }

  /**
   * Queues an encoded PUBLISH header `header[0, length)` (packet id patched
   * like pushPublish) followed by `payload`, which is written from where it
   * is, not copied: it must never change (a message's owned payload).
   */
  pushShared(
    header: Uint8Array,
    length: number,
    pidOffset: number,
    packetId: number,
    payload: Uint8Array,
    aliasOffset = -1,
    alias = 0,
  ): void {
    if (this.closed) return;
    this.pushPublish(header, length, pidOffset, packetId, aliasOffset, alias);
    const segs = this.segs ??= [];
    segs.push(this.buf!.subarray(0, this.len), payload);
    this.segBytes += this.len + payload.length;
    this.buf = null;
    // The cut buffer is written as a segment: it leaves the pool for good.
    this.pooled = null;
    this.len = 0;
  }

  /** Queues PUBACK/PUBREC/PUBREL/PUBCOMP without allocating. */
  pushAck(type: number, packetId: number, reasonCode: number, v5: boolean): void {
    if (this.closed) return;
    const long = v5 && reasonCode !== 0;
    const b = this.reserve(long ? 5 : 4, true);
    let p = this.len;
    b[p++] = (type << 4) | (type === 6 ? 0x02 : 0);
    b[p++] = long ? 3 : 2;
    b[p++] = packetId >> 8;
    b[p++] = packetId & 0xff;
    if (long) b[p++] = reasonCode;
    this.len = p;
  }

  private schedule(ack = false): void {
    const q = this.queued;
    if (q === QUEUED || this.writing !== 0) return;
    if (ack) {
      if (q === QUEUED_LATE) return;
      this.queued = QUEUED_LATE;
      late.push(this);
    } else {
      // From the late list (if there) to the first one: it stays in `late`, where
      // flushAll skips it.
      this.queued = QUEUED;
      dirty.push(this);
    }
    if (!armed) {
      armed = true;
      // After the current batch of reads: everything produced by the reads that
      // completed in this turn goes out in one write per connection.
      queueMicrotask(flushAll);
    }
  }

  /** Starts a write of everything buffered (called by the scheduler). */
  flush(): void {
    this.queued = NOT_QUEUED;
    const unwritten = this.len + this.segBytes;
    if (this.writing !== 0 || unwritten === 0 || this.closed) {
      if (unwritten === 0 && this.ending && this.writing === 0) this.finish();
      return;
    }
    if (this.segs !== null) return this.flushSegments();
    const buf = this.buf!;
    const pooled = this.pooled;
    const data = pooled !== null ? prefix(pooled, this.len) : buf.subarray(0, this.len);
    this.writing = this.len;
    this.inWrite = buf;
    this.inWritePooled = pooled;
    this.buf = null;
    this.pooled = null;
    this.len = 0;
    this.write(data);
  }

  private write(data: Uint8Array): void {
    this.inWriteData = data;
    const settled = this.onWrite ??= this.writeSettled.bind(this);
    const sink = this.sink;
    let atOnce = false;
    try {
      if (sink.writeThen !== undefined) atOnce = sink.writeThen(data, settled) === true;
      else sink.write(data).then(settled, settled);
    } catch (e) {
      // A transport that throws instead of reporting fails this connection, not the read (of
      // another connection, after flushDeliveries) or the flush that wrote it.
      return this.failed(e);
    }
    if (atOnce) this.written_(undefined);
  }

  /**
   * A write settled: a sink fulfils with a number, undefined or null (a node
   * socket's callback), and fails with an Error.
   */
  private writeSettled(r: unknown): void {
    if (r === undefined || r === null || typeof r === "number") this.written_(r ?? undefined);
    else this.failed(r);
  }

  /** A write call completed (`n`: bytes taken, see ByteWriter); when all is written, the buffer is free. */
  private written_(n: number | undefined): void {
    const data = this.inWriteData!;
    if (typeof n === "number" && n < data.length && !this.closed) {
      return this.write(data.subarray(n));
    }
    this.inWriteData = null;
    const buf = this.inWrite;
    const pooled = this.inWritePooled;
    this.inWrite = null;
    this.inWritePooled = null;
    if (pooled !== null) this.release(pooled);
    else if (buf !== null) {
      const size = buf.length;
      if (size >= KEEP_MIN && size <= KEEP_LIMIT && this.spare === null) this.spare = buf;
      else if (size < KEEP_MIN && size >= MIN_CAPACITY && pool.length < POOL_MAX) {
        // A small buffer this connection made joins the pool for every connection.
        pool.push({ bytes: buf, views: [], nextView: 0 });
      }
    }
    this.wrote();
  }

  /** Writes the segments and the buffer after them, one after the other. */
  private flushSegments(): void {
    const parts = this.segs!;
    if (this.len > 0) parts.push(this.buf!.subarray(0, this.len));
    this.writing = this.segBytes + this.len;
    this.segs = null;
    this.segBytes = 0;
    this.buf = null;
    // Written as a segment, possibly as a view kept by the transport: not returned to the pool.
    this.pooled = null;
    this.len = 0;
    const sink = this.sink;
    (async () => {
      for (let i = 0; i < parts.length; i++) {
        const part = parts[i];
        for (let off = 0; off < part.length;) {
          const n = await sink.write(off === 0 ? part : part.subarray(off));
          off = typeof n === "number" ? off + n : part.length;
        }
        // Let go of each shared payload as soon as it is written.
        (parts as (Uint8Array | null)[])[i] = null;
      }
    })().then(() => this.wrote(), (e) => this.failed(e));
  }

  private wrote(): void {
    this.written += this.writing;
    this.writing = 0;
    if (this.len + this.segBytes > 0) this.schedule();
    else if (this.ending) this.finish();
    if (!this.closed) this.owner.drained();
  }

  private failed(e: unknown): void {
    // The transport may still hold the buffer: it is not reused.
    this.inWrite = null;
    this.inWriteData = null;
    this.inWritePooled = null;
    this.writing = 0;
    this.closed = true;
    this.owner.writeFailed(e);
  }

  /** Writes what is buffered, then closes the sink. */
  end(): void {
    if (this.closed) return;
    this.ending = true;
    if (this.writing === 0) {
      if (this.len + this.segBytes > 0) this.schedule();
      else this.finish();
    }
  }

  private finish(): void {
    if (this.closed) return;
    this.closed = true;
    this.release(this.pooled);
    this.pooled = null;
    this.buf = this.spare = null;
    this.segs = null;
    this.sink.end();
  }

  /** Closes at once, dropping anything buffered. */
  destroy(): void {
    if (this.closed) return;
    this.closed = true;
    this.release(this.pooled);
    this.pooled = null;
    this.buf = this.spare = null;
    this.len = 0;
    this.segs = null;
    this.segBytes = 0;
    this.sink.close();
  }

  /** Releases the reusable buffer of an idle connection. */
  trim(): void {
    if (this.len === 0 && this.segs === null && this.writing === 0) {
      this.release(this.pooled);
      this.pooled = null;
      this.spare = null;
      this.buf = null;
      this.onWrite = null;
    }
  }
}
