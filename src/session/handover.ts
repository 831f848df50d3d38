/**
 * Deliveries held for a session that is moving to this node from another one.
 *
 * A takeover hands a session from node O to node N: O writes it back to the
 * store and drops its routes, N loads it and routes it. Between O dropping
 * its routes and N's being in place, a publish would reach neither. So N
 * routes the session's subscriptions to a `HeldDeliveries` before it asks O to
 * let go, and hands what collected to the session once it is loaded: every
 * message reaches the session, at least once. A message that arrives at both
 * nodes in the short overlap (N's routes already in place, O's connection not
 * yet closed) can be delivered twice, like any QoS 1 redelivery.
 */
import type { Message } from "../protocol/message.ts";
import type { Subscriber } from "../router/types.ts";
import type { Session } from "./session.ts";

interface Held {
  readonly msg: Message;
  readonly qos: 0 | 1 | 2;
  readonly retain: boolean;
  readonly subIds: readonly number[] | null;
}

export class HeldDeliveries implements Subscriber {
  /** Not online: shared groups prefer a member with a connection. */
  readonly online = false;
  private held: Held[] = [];
  /** Messages over `max`, not kept. */
  dropped = 0;

  constructor(
    readonly clientId: string,
    readonly username: string | undefined,
    /** The session queue's bound: nothing more could be queued for it anyway. */
    private readonly max: number,
  ) {}

  deliver(msg: Message, qos: 0 | 1 | 2, retain: boolean, subIds: readonly number[] | null): void {
    if (this.held.length >= this.max) {
      this.dropped++;
      return;
    }
    // The message may be a view into a read buffer that is reused after this call.
    msg.own();
    this.held.push({ msg, qos, retain, subIds });
  }

  /** Delivers what was held to `session`, oldest first, and forgets it. */
  handTo(session: Session): number {
    const held = this.held;
    this.held = [];
    for (const h of held) session.deliver(h.msg, h.qos, h.retain, h.subIds);
    return held.length;
  }
}
