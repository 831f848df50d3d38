/**
 * The retained messages a new subscription brings, handed to the session a
 * few at a time as its connection and in-flight window drain. A `#`
 * subscription over a large retained store would otherwise be written in one
 * go: QoS 0 copies dropped once the write buffer is full, QoS 1/2 copies
 * dropped once the session queue is, and the event loop held for the whole
 * store. A stream holds a cursor into the retained store (no copy of the
 * matching set), so it costs the same whatever it matches.
 */
import { getLogger } from "@logtape/logtape";
import type { Metrics } from "../ops/metrics.ts";
import type { Message } from "../protocol/message.ts";
import type { ReceiveCheck, Subscription } from "../router/types.ts";

const log = getLogger(["mcloudtt", "retained"]);

export class RetainedStream {
  /** Taken from the cursor, not yet handed to the session (it waited for room). */
  private held: Message | null = null;
  private sent = 0;
  private done = false;

  constructor(
    /** Replaced when the client subscribes to the same filter again (see `retargetRetained`). */
    public sub: Subscription,
    private readonly cursor: Iterator<Message>,
    /** limits.max_retained_per_subscription. */
    private readonly cap: number,
    /** The ACL's answer per message, for subscriptions that need it (`sub.needsCheck`). */
    private readonly check: ReceiveCheck,
    private readonly clientId: string,
    private readonly metrics: Metrics,
  ) {}

  /**
   * The next message to deliver (call `take()` once it is handed over), null
   * when the stream has ended, or undefined after skipping `budget` messages
   * (expired, or not readable under the ACL) without finding one: call again
   * later, so one stream never holds the event loop for long.
   */
  peek(now: number, budget: number): Message | null | undefined {
    if (this.held !== null) return this.held;
    if (this.done) return null;
    const sub = this.sub;
    for (let skipped = 0; skipped < budget; skipped++) {
      const r = this.cursor.next();
      if (r.done === true) {
        this.done = true;
        return null;
      }
      const msg = r.value;
      if (msg.expired(now)) continue;
      if (sub.needsCheck === true && !this.check(sub, msg.topic)) continue;
      if (this.sent >= this.cap) {
        this.cutOff();
        return null;
      }
      return this.held = msg;
    }
    return undefined;
  }

  /** The message `peek` returned was handed to the session. */
  take(): void {
    this.held = null;
    this.sent++;
  }

  /** Ends the stream early (the subscription was removed or replaced). */
  cancel(): void {
    this.held = null;
    this.done = true;
  }

  private cutOff(): void {
    this.done = true;
    this.metrics.retainedCutoffs++;
    log.warn(
      "retained messages for {client_id} on {filter} cut off after {cap} " +
        "(limits.max_retained_per_subscription)",
      { client_id: this.clientId, filter: this.sub.key, cap: this.cap },
    );
  }
}
