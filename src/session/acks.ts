/**
 * PUBACK/PUBREC in the order the PUBLISH packets came [MQTT-4.6.0-2], even
 * when some must wait for a store or cluster write and others need not. Empty
 * and idle in the common case, where every acknowledgement goes out at once.
 */

interface Pending {
  qos: 1 | 2;
  pid: number;
  code: number;
  ready: boolean;
}

export class AckQueue {
  private items: Pending[] = [];

  constructor(private readonly send: (qos: 1 | 2, pid: number, code: number) => void) {}

  /** True when acknowledgements are waiting: a new one must queue behind them. */
  get busy(): boolean {
    return this.items.length > 0;
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
    if (written === null && this.items.length === 0) {
      this.send(qos, pid, code);
      return;
    }
    const p: Pending = { qos, pid, code, ready: written === null };
    this.items.push(p);
    if (written !== null) {
      written.then(
        () => this.settle(p),
        () => {
          p.code = failCode;
          this.settle(p);
        },
      );
    }
  }

  private settle(p: Pending): void {
    p.ready = true;
    const items = this.items;
    let i = 0;
    while (i < items.length && items[i].ready) {
      const x = items[i++];
      this.send(x.qos, x.pid, x.code);
    }
    if (i > 0) this.items = items.slice(i);
  }

  /** The connection closed: nothing more is sent. */
  clear(): void {
    this.items = [];
  }
}
