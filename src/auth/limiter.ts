/**
 * Bounds the expensive part of authentication (PBKDF2, ~100 ms of a core each) so that a flood of
 * CONNECTs with bad passwords cannot occupy every core and starve the event loop and honest
 * clients.
 *
 * At most `concurrency` jobs run; up to `maxQueue` more wait. Waiting jobs are served newest
 * first: under a burst, the oldest waiters are the ones most likely to have given up (or to belong
 * to the burst), while a client that arrives after a burst is served within a job or two instead
 * of behind the whole burst. When the queue is full the oldest waiter is refused, and every waiter
 * is refused once its deadline (the connect timeout) passes.
 */
import { MqttError, ReasonCode } from "../protocol/reason_codes.ts";

/** The job was refused because too much authentication work is queued (CONNACK 0x89). */
export class AuthBusyError extends MqttError {
  override name = "AuthBusyError";

  constructor(reason: string) {
    super(ReasonCode.ServerBusy, reason);
  }
}

interface Waiter {
  start(): void;
  refuse(error: AuthBusyError): void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

export interface LimiterOptions {
  /** Jobs running at once (at least 1). */
  concurrency: number;
  /** Jobs waiting beyond those (0 = refuse whenever all slots are busy). */
  maxQueue: number;
}

export class AuthLimiter {
  #running = 0;
  // Newest at the end: pop() serves newest first, shift() drops the oldest.
  readonly #queue: Waiter[] = [];

  constructor(public options: LimiterOptions) {}

  /** Jobs running now. */
  get running(): number {
    return this.#running;
  }

  /** Jobs waiting for a slot. */
  get waiting(): number {
    return this.#queue.length;
  }

  /**
   * Runs `job` when a slot is free. Rejects with AuthBusyError when the queue is full (the oldest
   * waiter is refused to make room) or when `deadline` (ms since epoch) passes before it starts.
   */
  run<T>(job: () => Promise<T>, deadline: number): Promise<T> {
    if (this.#running < Math.max(1, this.options.concurrency)) return this.#start(job);
    const left = deadline - Date.now();
    if (left <= 0) return Promise.reject(new AuthBusyError("connect timeout passed"));
    if (this.options.maxQueue <= 0) {
      return Promise.reject(new AuthBusyError("too many password checks in progress"));
    }
    return new Promise<T>((resolve, reject) => {
      const waiter: Waiter = {
        timer: undefined,
        start: () => this.#start(job).then(resolve, reject),
        refuse: reject,
      };
      waiter.timer = setTimeout(() => {
        const i = this.#queue.indexOf(waiter);
        if (i >= 0) this.#queue.splice(i, 1);
        reject(new AuthBusyError("connect timeout passed while waiting for a password check"));
      }, left);
      this.#queue.push(waiter);
      while (this.#queue.length > this.options.maxQueue) {
        const oldest = this.#queue.shift()!;
        clearTimeout(oldest.timer);
        oldest.refuse(new AuthBusyError("too many password checks waiting"));
      }
    });
  }

  /** Refuses every waiting job (the broker is stopping); running ones finish. */
  clear(): void {
    for (const w of this.#queue.splice(0)) {
      clearTimeout(w.timer);
      w.refuse(new AuthBusyError("server shutting down"));
    }
  }

  async #start<T>(job: () => Promise<T>): Promise<T> {
    this.#running++;
    try {
      return await job();
    } finally {
      this.#running--;
      const next = this.#queue.pop();
      if (next !== undefined) {
        clearTimeout(next.timer);
        next.start();
      }
    }
  }
}
