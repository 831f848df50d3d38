/**
 * Stored sessions becoming live ones on this node: at start from an unshared store (SQLite), and
 * in a cluster when a session moves here or a dead node's sessions are adopted (cluster_sessions.ts).
 * A revived session waits detached for its client, with its deadlines as stored.
 */
import type { Subscriber, Subscription } from "../router/types.ts";
import type { SessionState } from "../store/types.ts";
import type { BrokerCore } from "./core.ts";
import type { Session } from "./session.ts";
import { RestoredMessages, storedSubscriptions } from "./stored.ts";

export class SessionRestorer {
  /** One Message per cluster id among the messages of the sessions restored here (stored.ts). */
  private readonly shared = new RestoredMessages();

  constructor(private readonly core: BrokerCore) {}

  /** The subscriptions of a stored session that still parse and that the ACL still allows. */
  subscriptions(state: SessionState, subscriber: Subscriber): Subscription[] {
    return storedSubscriptions(state, subscriber, this.core.limits, this.core.authorizer);
  }

  /** Rebuilds a stored session with its subscriptions; it waits detached for its client. */
  restore(state: SessionState): Promise<void>[] {
    const routed: Promise<void>[] = [];
    const s = this.revive(state);
    for (const sub of this.subscriptions(state, s)) {
      const r = this.core.subscribe(s, sub);
      if (r.ready !== null) routed.push(r.ready);
    }
    return routed;
  }

  /** Rebuilds a stored session without its subscriptions; it waits detached for its client. */
  revive(state: SessionState): Session {
    const core = this.core;
    const s = core.newSession(state.clientId);
    s.restore(this.shared.share(state));
    core.sessions.set(state.clientId, s);
    // A session stored while connected lost its connection in a crash: it is detached now.
    if (s.expiresAt === 0) {
      const now = core.clock.now();
      s.expiresAt = s.expiryFrom(now);
      if (s.will !== null && s.willAt === 0) s.willAt = now + s.will.delay * 1000;
    }
    core.detached.add(s);
    return s;
  }
}
