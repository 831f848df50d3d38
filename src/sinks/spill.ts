/**
 * The spill store: rows that do not fit in memory while the destination is
 * away, kept on disk in numbered JSON-lines segments and read back oldest
 * first. A segment is deleted only once every row in it has been sent, so a
 * crash replays it again (the rows keep their ids, so the destination drops
 * the duplicates) rather than losing it.
 */
import type { TopicRow } from "./row.ts";

/** One segment file. */
export interface Segment {
  readonly n: number;
  readonly path: string;
  rows: number;
  bytes: number;
  /** Handed to the reader; stays on disk until removed. */
  taken: boolean;
}

const SEGMENT_RE = /^(\d{12})\.jsonl$/;
/** First segment number in an empty directory; leaves room below for rows older than all on disk. */
const FIRST_SEGMENT = 500_000_000_000;

export class SpillStore {
  /** Segments on disk, oldest first. */
  private segments: Segment[] = [];
  /** The segment appends go to; null until the next append. */
  private writing: Segment | null = null;
  /** Lines waiting to be written, UTF-8 encoded: every size here is in bytes, as on disk. */
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  /** What to tell each pending line's owner once it is written or failed; one per line. */
  private pendingDone: (((written: boolean) => void) | null)[] = [];
  private writeChain: Promise<void> = Promise.resolve();
  private writeScheduled = false;
  private readonly encoder = new TextEncoder();
  /** Bytes on disk plus bytes waiting to be written. */
  bytes = 0;
  /** Rows written to disk and not yet removed (rows found at start are counted when read). */
  rows = 0;

  /**
   * `segmentRows` and `segmentBytes` bound each segment (a single larger row gets one of its
   * own): the replay reads a segment whole into memory.
   */
  constructor(
    readonly dir: string,
    readonly maxBytes: number,
    readonly segmentRows: number,
    readonly segmentBytes: number,
    private readonly onWriteError: (e: unknown, rows: number) => void,
  ) {}

  /** Creates the directory and finds the segments an earlier run left. */
  async open(): Promise<void> {
    await Deno.mkdir(this.dir, { recursive: true });
    const found: Segment[] = [];
    for await (const entry of Deno.readDir(this.dir)) {
      const m = entry.isFile ? SEGMENT_RE.exec(entry.name) : null;
      if (!m) continue;
      const path = `${this.dir}/${entry.name}`;
      const { size } = await Deno.stat(path);
      found.push({ n: Number(m[1]), path, rows: 0, bytes: size, taken: false });
    }
    found.sort((a, b) => a.n - b.n);
    this.segments = found;
    this.bytes = found.reduce((s, f) => s + f.bytes, 0);
  }

  /** True when nothing is on disk or waiting to be written. */
  get empty(): boolean {
    return this.segments.length === 0 && this.pending.length === 0;
  }

  /**
   * Queues one row for writing; `done` runs once it is on disk (true) or its write failed
   * (false; onWriteError counted it). False when the store is full (the caller counts the row
   * as dropped).
   */
  append(row: TopicRow, done?: (written: boolean) => void): boolean {
    const line = this.encoder.encode(JSON.stringify(row) + "\n");
    if (this.bytes + line.length > this.maxBytes) return false;
    this.pending.push(line);
    this.pendingBytes += line.length;
    this.bytes += line.length;
    this.pendingDone.push(done ?? null);
    if (!this.writeScheduled) {
      this.writeScheduled = true;
      this.writeChain = this.writeChain.then(() => this.writePending());
    }
    return true;
  }

  /** Resolves once everything appended so far is on disk (or failed). */
  flushed(): Promise<void> {
    return this.writeChain;
  }

  private async writePending(): Promise<void> {
    this.writeScheduled = false;
    while (this.pending.length > 0) {
      let seg = this.writing;
      if (seg === null || !this.fits(seg, 1, this.pending[0].length)) {
        seg = this.newSegment(this.nextNumber());
        this.writing = seg;
        this.segments.push(seg);
      }
      let take = 0;
      let size = 0;
      while (
        take < this.pending.length && this.fits(seg, take + 1, size + this.pending[take].length)
      ) {
        size += this.pending[take].length;
        take++;
      }
      const lines = this.pending.splice(0, take);
      const done = this.pendingDone.splice(0, take);
      const text = concat(lines);
      this.pendingBytes -= text.length;
      try {
        await Deno.writeFile(seg.path, text, { append: true });
        seg.rows += lines.length;
        seg.bytes += text.length;
        this.rows += lines.length;
        for (const d of done) d?.(true);
      } catch (e) {
        this.bytes -= text.length;
        this.onWriteError(e, lines.length);
        // Their owners hear of it: the adapter's messages stay unacknowledged until then, in
        // order, so one failed write (a full disk) stalled it for good.
        for (const d of done) d?.(false);
      }
    }
  }

  /** Whether `seg` takes `rows` more rows of `bytes` in all; an empty one takes any single row. */
  private fits(seg: Segment, rows: number, bytes: number): boolean {
    if (seg.rows + rows > this.segmentRows) return false;
    return (seg.rows === 0 && rows === 1) || seg.bytes + bytes <= this.segmentBytes;
  }

  private nextNumber(): number {
    const last = this.segments.at(-1);
    return last ? last.n + 1 : FIRST_SEGMENT;
  }

  private newSegment(n: number): Segment {
    return {
      n,
      path: `${this.dir}/${String(n).padStart(12, "0")}.jsonl`,
      rows: 0,
      bytes: 0,
      taken: false,
    };
  }

  /**
   * Writes rows that are older than everything on disk (the queue's contents
   * at shutdown) as new first segments, so the replay keeps the order. Only
   * the oldest rows that fit in maxBytes are written; returns how many.
   */
  async prepend(rows: readonly TopicRow[]): Promise<number> {
    if (rows.length === 0) return 0;
    await this.writeChain;
    const lines: Uint8Array[] = [];
    let size = 0;
    for (const r of rows) {
      const line = this.encoder.encode(JSON.stringify(r) + "\n");
      if (this.bytes + size + line.length > this.maxBytes) break;
      lines.push(line);
      size += line.length;
    }
    if (lines.length === 0) return 0;
    // Cut as appends are: up to max_queue_bytes and the rows in flight may be left at stop.
    const groups: Uint8Array[][] = [];
    let group: Uint8Array[] = [];
    let groupBytes = 0;
    for (const line of lines) {
      const full = group.length + 1 > this.segmentRows ||
        groupBytes + line.length > this.segmentBytes;
      if (group.length > 0 && full) {
        groups.push(group);
        group = [];
        groupBytes = 0;
      }
      group.push(line);
      groupBytes += line.length;
    }
    groups.push(group);
    const first = this.segments[0];
    const below = (first ? first.n : FIRST_SEGMENT + groups.length) - groups.length;
    const written: Segment[] = [];
    for (const [i, g] of groups.entries()) {
      const seg = this.newSegment(below + i);
      const text = concat(g);
      await Deno.writeFile(seg.path, text);
      seg.rows = g.length;
      seg.bytes = text.length;
      written.push(seg);
      this.bytes += text.length;
      this.rows += g.length;
    }
    this.segments.unshift(...written);
    return lines.length;
  }

  /** True when some segment has not been handed to the reader yet (or rows wait to be written). */
  get unread(): boolean {
    return this.pending.length > 0 || this.segments.some((s) => !s.taken);
  }

  /**
   * Reads the oldest segment not yet read. The segment being written is
   * closed first (later appends start a new one). Null when there is none.
   * Lines that do not parse (a write cut short by a crash) are skipped and counted.
   */
  async readNext(): Promise<{ segment: Segment; rows: TopicRow[]; bad: number } | null> {
    await this.writeChain;
    const seg = this.segments.find((s) => !s.taken);
    if (!seg) return null;
    seg.taken = true;
    if (seg === this.writing) this.writing = null;
    let text: string;
    try {
      text = await Deno.readTextFile(seg.path);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      text = "";
    }
    const rows: TopicRow[] = [];
    let bad = 0;
    for (const line of text.split("\n")) {
      if (line === "") continue;
      let parsed: unknown;
      try {
        parsed = JSON.parse(line);
      } catch {
        bad++;
        continue;
      }
      // Valid JSON that is not a row (`null`, a number, a row without id or topic) would throw
      // later, while sending; skipped and counted like a cut-off line.
      if (isRow(parsed)) rows.push(parsed);
      else bad++;
    }
    // Rows found at start were not counted when written; count them now, so `rows` stays >= 0.
    if (seg.rows < rows.length) {
      this.rows += rows.length - seg.rows;
      seg.rows = rows.length;
    }
    return { segment: seg, rows, bad };
  }

  /** Deletes a segment whose rows have all been sent. */
  async remove(seg: Segment): Promise<void> {
    const i = this.segments.indexOf(seg);
    if (i === -1) return;
    this.segments.splice(i, 1);
    if (this.writing === seg) this.writing = null;
    this.bytes -= seg.bytes;
    this.rows -= seg.rows;
    try {
      await Deno.remove(seg.path);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
}

function isRow(v: unknown): v is TopicRow {
  if (v === null || typeof v !== "object" || Array.isArray(v)) return false;
  const r = v as Record<string, unknown>;
  return typeof r.id === "string" && typeof r.topic === "string";
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}
