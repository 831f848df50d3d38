/**
 * Time as the core sees it. The broker reads the clock and schedules its
 * periodic sweep through this interface, so tests of keep alive, will delay
 * and session expiry can move time forward instead of sleeping.
 */

/** A source of time and of one kind of timer. */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /** Calls `fn` every `ms` until the returned function is called. */
  every(ms: number, fn: () => void): () => void;
}

/** The real clock. */
export const systemClock: Clock = {
  now: Date.now,
  every(ms, fn) {
    const id = setInterval(fn, ms);
    return () => clearInterval(id);
  },
};

/**
 * A clock that moves only when told: `advance(ms)` runs every timer that
 * falls due on the way, in order. For tests and simulations.
 */
export class ManualClock implements Clock {
  private timers = new Set<{ ms: number; next: number; fn: () => void }>();

  constructor(private time = Date.now()) {}

  now(): number {
    return this.time;
  }

  every(ms: number, fn: () => void): () => void {
    const t = { ms, next: this.time + ms, fn };
    this.timers.add(t);
    return () => this.timers.delete(t);
  }

  /** Moves time forward by `ms`, firing due timers at their due times. */
  advance(ms: number): void {
    const end = this.time + ms;
    for (;;) {
      let due: { ms: number; next: number; fn: () => void } | null = null;
      for (const t of this.timers) {
        if (t.next <= end && (due === null || t.next < due.next)) due = t;
      }
      if (due === null) break;
      this.time = due.next;
      due.next += due.ms;
      due.fn();
    }
    this.time = end;
  }
}
