/**
 * Deliveries held for a session that is moving to this node from another one.
 *
 * A takeover hands a session from node O to node N: O writes it back to the
 * store and drops its routes, N loads it and routes it. Between O dropping
 * its routes and N's being in place, a publish would reach neither. So N
 * routes the session's subscriptions to a `HeldDeliveries` before it asks O to
 * let go, and hands what collected to the session once it is loaded: every
 * message reaches the session. A message published in the short overlap (N's
 * routes already in place, O's not yet gone) reaches both nodes: O queued it,
 * sent it or had it acknowledged, N's holder has it too. Such a message
 * crossed the bus, so it carries a cluster-wide id (`Message.id`), and the
 * copy here is dropped when the loaded session already holds or completed
 * that id: once, also at QoS 1.
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
  /** Copies not handed over because the session had them already. */
  duplicates = 0;

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

  /**
   * Delivers what was held to `session`, oldest first, except copies of
   * messages the session holds or completed already, and forgets it.
   * Returns how many were delivered.
   */
  handTo(session: Session): number {
    const held = this.held;
    this.held = [];
    if (held.length === 0) return 0;
    const known = session.knownIds();
    let n = 0;
    for (const h of held) if (session.deliverOnce(h.msg, h.qos, h.retain, h.subIds, known)) n++;
    this.duplicates += held.length - n;
    return n;
  }
}

/**
 * Delivers to a session only the messages it does not hold or completed
 * already: the subscriber through which a dead node's inbox reaches the
 * sessions adopted from it. The dead node may have taken an entry into a
 * session (written to the store) and died before acknowledging it in the
 * inbox, so the same message is in both.
 */
export class OnceTo implements Subscriber {
  private known: Set<string> | null = null;

  constructor(readonly session: Session) {}

  get clientId(): string {
    return this.session.clientId;
  }

  get username(): string | undefined {
    return this.session.username;
  }

  get online(): boolean {
    return this.session.online;
  }

  deliver(msg: Message, qos: 0 | 1 | 2, retain: boolean, subIds: readonly number[] | null): void {
    // Taken when the first message comes: nothing else reaches the session while it is drained.
    const known = this.known ??= this.session.knownIds();
    this.session.deliverOnce(msg, qos, retain, subIds, known);
  }
}
