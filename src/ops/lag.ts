/**
 * Event-loop lag: a timer that should fire every PERIOD_MS; how late it fires is how long the
 * loop was busy. One unref'd timer per process, so it never keeps the process alive.
 */
const PERIOD_MS = 500;

export class EventLoopLag {
  private max = 0;
  private expected = performance.now() + PERIOD_MS;
  private readonly timer: ReturnType<typeof setInterval>;

  constructor() {
    this.timer = setInterval(() => {
      const now = performance.now();
      const late = now - this.expected;
      if (late > this.max) this.max = late;
      this.expected = now + PERIOD_MS;
    }, PERIOD_MS);
    Deno.unrefTimer(this.timer);
  }

  /** The longest delay (ms) since the previous call, then starts over. */
  takeMax(): number {
    const m = Math.max(this.max, performance.now() - this.expected, 0);
    this.max = 0;
    return m;
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
