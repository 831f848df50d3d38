/**
 * PUBACK/PUBREC in the order the PUBLISH packets came [MQTT-4.6.0-2], even
 * when some must wait for a store or cluster write and others need not. Empty
 * and idle in the common case, where every acknowledgement goes out at once.
 */

interface Pending {
  qos: 1 | 2;
  pid: number;
  code: number;
  /** Replaces `code` when the write fails. */
  failCode: number;
  /** The write this waits for; null once it is settled (or when there was none). */
  written: Promise<void> | null;
  ready: boolean;
}

export class AckQueue {
  /** Waiting acknowledgements from `head` on; null while none wait (an idle connection). */
  private items: Pending[] | null = null;
  private head = 0;
  /**
   * The write the newest waiting acknowledgement waits for. The publishes of
   * one event-loop turn share one store batch: one reaction per batch settles
   * them all, instead of two closures and a promise per acknowledgement.
   */
  private lastWritten: Promise<void> | null = null;

  constructor(
    private readonly send: (qos: 1 | 2, pid: number, code: number) => void,
    /** Called after waiting acknowledgements went out (the connection may read again). */
    private readonly sent: () => void = () => {},
  ) {}

  /** True when acknowledgements are waiting: a new one must queue behind them. */
  get busy(): boolean {
    return this.items !== null && this.head < this.items.length;
  }

  /** Acknowledgements waiting (for a write, a node behind, or those before them). */
  get waiting(): number {
    return this.items === null ? 0 : this.items.length - this.head;
  }

  /**
   * Acknowledges now, or once `written` resolves (and everything before it
   * went out). `failCode` replaces `code` when the write fails.
   */
  ack(
    qos: 1 | 2,
    pid: number,
    code: number,
    written: Promise<void> | null,
    failCode: number,
  ): void {
    if (written === null && !this.busy) {
      this.send(qos, pid, code);
      return;
    }
    (this.items ??= []).push({ qos, pid, code, failCode, written, ready: written === null });
    if (written !== null && written !== this.lastWritten) {
      this.lastWritten = written;
      written.then(() => this.settle(written, false), () => this.settle(written, true));
    }
  }

  private settle(w: Promise<void>, failed: boolean): void {
    if (this.lastWritten === w) this.lastWritten = null;
    const items = this.items;
    if (items === null) return;
    for (let i = this.head; i < items.length; i++) {
      const x = items[i];
      if (x.written !== w) continue;
      x.written = null;
      x.ready = true;
      if (failed) x.code = x.failCode;
    }
    const from = this.head;
    let i = from;
    while (i < items.length && items[i].ready) {
      const x = items[i++];
      this.send(x.qos, x.pid, x.code);
      // Sending may close the connection, which clears the queue.
      if (this.items !== items) return;
    }
    if (i === items.length) {
      this.items = null;
      this.head = 0;
    } else if (i > 1024 && i * 2 > items.length) {
      // Under a steady stream something always waits: drop the sent part now and then.
      this.items = items.slice(i);
      this.head = 0;
    } else this.head = i;
    if (i !== from) this.sent();
  }

  /** The connection closed: nothing more is sent. */
  clear(): void {
    this.items = null;
    this.head = 0;
    this.lastWritten = null;
  }
}
