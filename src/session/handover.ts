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
 *
 * The session remembers only its last `[cluster] dedupe_window` completed
 * ids, but the overlap lasts as long as N's routes take to reach every node
 * (up to `[cluster] route_fence_ms`), and the old connection may complete more
 * than that meanwhile. So the order of the ids counts too: a node forwards
 * its messages in the order of their ids' counters, and O took every message
 * of that node matching the session's subscriptions, in that order, until it
 * let go. A held copy older than a message of the same node that the session
 * holds or completed had reached O before it: it is dropped as well.
 */
import { idOrigin, idSeq } from "../protocol/message_ids.ts";
import type { Message } from "../protocol/message.ts";
import type { Subscriber } from "../router/types.ts";
import { queuedSize } from "./queue.ts";
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
  /** What the held messages count against `maxBytes` (as a session queue counts them). */
  private bytes = 0;
  /** Messages over `max` or `maxBytes`, not kept. */
  dropped = 0;
  /** Copies not handed over because the session had them already. */
  duplicates = 0;
  /**
   * The session has a shared subscription: a message for its group went to
   * one node only, so a held copy older than what O took may never have
   * reached O, and only the ids themselves tell duplicates.
   */
  shared = false;

  constructor(
    readonly clientId: string,
    readonly username: string | undefined,
    /** The session queue's bounds: nothing more could be queued for it anyway. */
    private readonly max: number,
    /**
     * limits.max_queued_bytes. Without it a holder kept `max` messages of any size while the old
     * node did not let go (frozen): 800 of 256 KiB for a session bounded to 8 MiB (+150 MiB).
     */
    private readonly maxBytes: number,
  ) {}

  deliver(msg: Message, qos: 0 | 1 | 2, retain: boolean, subIds: readonly number[] | null): void {
    const size = queuedSize(msg);
    // As a queue: the first message is kept whatever its size.
    if (
      this.held.length >= this.max || (this.held.length > 0 && this.bytes + size > this.maxBytes)
    ) {
      this.dropped++;
      return;
    }
    this.bytes += size;
    // The message may be a view into a read buffer that is reused after this call.
    msg.own();
    this.held.push({ msg, qos, retain, subIds });
  }

  /**
   * Delivers what was held to `session`, oldest first, except copies of
   * messages the session holds or completed already, or that came before
   * such a message from the same node (see above), and forgets it.
   * Returns how many were delivered.
   */
  handTo(session: Session): number {
    const held = this.held;
    this.held = [];
    this.bytes = 0;
    if (held.length === 0) return 0;
    const known = session.knownIds();
    const newest = this.shared ? null : newestByOrigin(known);
    let n = 0;
    for (const h of held) {
      const id = h.msg.id;
      if (newest !== null && idSeq(id) < (newest.get(idOrigin(id)) ?? NaN)) known.add(id);
      if (session.deliverOnce(h.msg, h.qos, h.retain, h.subIds, known)) n++;
    }
    this.duplicates += held.length - n;
    return n;
  }
}

/** The highest counter among `ids` of each node that gave some of them. */
function newestByOrigin(ids: Iterable<string>): Map<string, number> {
  const newest = new Map<string, number>();
  for (const id of ids) {
    const origin = idOrigin(id);
    const seq = idSeq(id);
    if (origin === "" || Number.isNaN(seq)) continue;
    if (!(seq <= (newest.get(origin) ?? -1))) newest.set(origin, seq);
  }
  return newest;
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
